"""Alerts: after a run, post a Slack-compatible message to a webhook when something is wrong.

In a pipeline file::

    alerts:
      webhook: ${SLACK_WEBHOOK_URL}   # a secret: Slack webhook URLs let anyone post
      on_failure: true                # a node failed (default: true)
      rejected_share: 0.05            # a node rejected more than 5% of its rows
      input_drop: 0.5                 # an input node has 50% fewer rows than last run

The body is ``{"text": "..."}``, which Slack, Mattermost, Rocket.Chat and Teams-style
incoming webhooks accept. Deciding *whether* to alert is a pure function of the run and
the previous successful run, so it is tested without a network; sending is a small POST
with a timeout and one retry. A webhook that fails is logged, never fails the run, and its
URL is never printed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from segloop.masking import mask_text
from segloop.secrets import SecretRef, resolve_secret

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import httpx

    from segloop.pipeline import Pipeline
    from segloop.store import NodeRunRecord, RunRecord

log = logging.getLogger("segloop")


class AlertsConfig(BaseModel):
    """`alerts:` in a pipeline file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    webhook: SecretRef = Field(description="Webhook URL as ${ENV_VAR}; it is a secret.")
    on_failure: bool = True
    rejected_share: float | None = Field(
        default=None, gt=0, le=1, description="Alert when rejected / rows of a node is above this."
    )
    input_drop: float | None = Field(
        default=None, gt=0, le=1,
        description="Alert when an input node's rows fell by more than this share vs the previous run.",
    )
    timeout: float = Field(default=10.0, gt=0, description="Seconds to wait for the webhook.")


@dataclass
class Alert:
    """One reason to alert, with the sentence that says it."""

    kind: str  # failure | rejected_share | input_drop
    message: str


def _rejected_share(node: NodeRunRecord) -> tuple[int, int] | None:
    """(rejected, rows considered) for nodes that report rejections, else None."""
    metrics = node.metrics or {}
    rejected = metrics.get("rejected")
    if not isinstance(rejected, int | float) or isinstance(rejected, bool):
        return None
    # Share of the rows the node tried to send (a diff sync skips unchanged rows).
    rows = metrics.get("to_send") if metrics.get("to_send") else metrics.get("rows")
    if not isinstance(rows, int | float) or not rows:
        parts = [metrics.get(k) for k in ("sent", "rejected", "failed")]
        rows = sum(p for p in parts if isinstance(p, int | float))
    if not rows:
        return None
    return int(rejected), int(rows)


def evaluate(
    config: AlertsConfig,
    run: RunRecord,
    previous: RunRecord | None,
    input_nodes: list[str],
) -> list[Alert]:
    """Every alert this run deserves; ``input_nodes`` are the pipeline's nodes without inputs."""
    alerts: list[Alert] = []
    where = f"pipeline `{run.pipeline}` run {run.id}"
    if config.on_failure and run.status == "failed":
        failed = [n for n in run.nodes if n.status == "failed"]
        detail = failed[0].error if failed and failed[0].error else run.error or "see the report"
        more = f" (and {len(failed) - 1} more node(s))" if len(failed) > 1 else ""
        alerts.append(Alert("failure", f"{where} failed: {detail}{more}"))
    if config.rejected_share is not None:
        for node in run.nodes:
            share = _rejected_share(node)
            if share is None:
                continue
            rejected, rows = share
            if rejected / rows > config.rejected_share:
                alerts.append(Alert(
                    "rejected_share",
                    f"{where}: node `{node.node}` rejected {rejected:,} of {rows:,} rows "
                    f"({rejected / rows:.1%}, threshold {config.rejected_share:.1%})",
                ))
    if config.input_drop is not None and previous is not None:
        before = {n.node: n.rows for n in previous.nodes if n.status == "success"}
        for node in run.nodes:
            if node.node not in input_nodes or node.status != "success" or node.rows is None:
                continue
            old = before.get(node.node)
            if not old:
                continue
            drop = (old - node.rows) / old
            if drop > config.input_drop:
                alerts.append(Alert(
                    "input_drop",
                    f"{where}: input node `{node.node}` has {node.rows:,} rows, "
                    f"{drop:.1%} fewer than the {old:,} of run {previous.id} "
                    f"(threshold {config.input_drop:.1%})",
                ))
    return alerts


def payload(alerts: list[Alert], report: str | None = None) -> dict[str, Any]:
    """The Slack-compatible body: one ``text`` with a line per alert."""
    lines = [f":rotating_light: segloop: {mask_text(alert.message)}" for alert in alerts]
    if report:
        lines.append(f"Report: {report}")
    return {"text": "\n".join(lines)}


def send(
    config: AlertsConfig,
    alerts: list[Alert],
    report: str | None = None,
    transport: httpx.BaseTransport | None = None,
    where: str = "alerts",
) -> bool:
    """POST the alerts to the webhook; True when it answered 2xx. Never raises for HTTP trouble."""
    import httpx

    if not alerts:
        return True
    url = resolve_secret(config.webhook, where).get_secret_value()
    body = payload(alerts, report)
    last_problem = ""
    with httpx.Client(timeout=config.timeout, transport=transport) as client:
        for attempt in range(2):
            try:
                response = client.post(url, json=body)
            except httpx.HTTPError as exc:
                last_problem = type(exc).__name__
            else:
                if response.is_success:
                    return True
                last_problem = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break
            if attempt == 0:
                time.sleep(0.5)
    # The URL is a secret: name the variable, never the value.
    log.warning("%s: the alert webhook %s did not accept the alert (%s)", where, config.webhook, last_problem)
    return False


def check_run(pipeline: Pipeline, run_id: str, report: Path | None = None) -> list[Alert]:
    """Evaluate the pipeline's `alerts:` for a finished run and send what applies."""
    config = pipeline.config.alerts
    if config is None:
        return []
    store = pipeline.store()
    try:
        run = store.get_run(run_id)
        previous = next(
            (r for r in store.list_runs(pipeline.name, limit=50)
             if r.id != run.id and r.status == "success" and not r.dry_run and r.started_at <= run.started_at),
            None,
        )
    finally:
        store.close()
    inputs = [name for name in pipeline.config.nodes if not pipeline.config.upstream_of(name)]
    alerts = evaluate(config, run, previous, inputs)
    if alerts:
        send(config, alerts, str(report) if report else None, where=f"pipeline `{pipeline.name}` alerts")
    return alerts

"""Quality gates: a model node refuses to hand on predictions that miss a bound.

Every model node (``propensity``, ``clv``, ``clusters``, ``recommend``) and the ``lift``
node accept
``require:``, a mapping from one of its metrics to a bound::

    require: {auc: 0.7, lift_top_decile: 2}

For most metrics the bound is a minimum; for those where lower is better (``log_loss``,
``brier``, ``ece``, ``holdout_decile_error``, lift's ``p_value``) it is a maximum. Unknown metric names are a configuration error, so
``segloop validate`` reports a typo before any run. When the node's run misses a bound, or
the metric could not be computed, the node fails with a message naming the metric, its
value and the bound: the engine keeps its output table and metrics for inspection, skips
every downstream node (so no Segment node sends the predictions) and alerts as for any
failed node.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from pydantic import Field, field_validator

from segloop.operators.base import NodeConfig, NodeOutput

LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece", "log_loss_uncalibrated", "ece_uncalibrated",
                             "holdout_decile_error", "p_value"})


class ModelNodeConfig(NodeConfig):
    """Keys of every model node: ``require`` (quality gate) on top of the common ones."""

    GATE_METRICS: ClassVar[frozenset[str]] = frozenset()

    require: dict[str, float] | None = Field(
        default=None,
        description="Quality gate: metric -> minimum (maximum for log_loss, brier, ece); "
        "a miss fails the node and nothing downstream runs.",
    )

    @field_validator("require")
    @classmethod
    def _known_metrics(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if not value:
            return value
        unknown = sorted(set(value) - cls.GATE_METRICS)
        if unknown:
            raise ValueError(
                f"{', '.join(f'`{m}`' for m in unknown)} {'is not a metric' if len(unknown) == 1 else 'are not metrics'} "
                f"of this node type; a gate can use: {', '.join(sorted(cls.GATE_METRICS))}"
            )
        bad = sorted(m for m, bound in value.items() if not math.isfinite(bound))
        if bad:
            raise ValueError(f"the bound of {', '.join(f'`{m}`' for m in bad)} must be a finite number")
        return value


def misses(metrics: dict[str, Any], require: dict[str, float]) -> list[str]:
    """One sentence per required metric that is missing or beyond its bound."""
    out = []
    for metric, bound in require.items():
        value = metrics.get(metric)
        number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        if number is None or not math.isfinite(number):
            out.append(f"`{metric}` was not computed in this run (value {value!r}), required "
                       f"{'at most' if metric in LOWER_IS_BETTER else 'at least'} {bound:g}")
        elif metric in LOWER_IS_BETTER and number > bound:
            out.append(f"`{metric}` is {number:.4g}, above the maximum {bound:g}")
        elif metric not in LOWER_IS_BETTER and number < bound:
            out.append(f"`{metric}` is {number:.4g}, below the minimum {bound:g}")
    return out


def check_requirements(output: NodeOutput, config: NodeConfig) -> NodeOutput:
    """Mark ``output`` failed (the engine then skips downstream nodes) if a gate is missed."""
    require = getattr(config, "require", None)
    if not require:
        return output
    missed = misses(output.metrics, require)
    output.metrics["gate"] = "failed" if missed else "passed"
    if missed:
        output.error = (
            "quality gate failed: " + "; ".join(missed) + ". Nothing downstream ran, so these "
            "predictions were not sent; the output table and metrics are kept for inspection. "
            "Improve the model (more history, other features) or change `require`"
        )
    return output

"""One masking rule for everything segloop shows or keeps: secrets become ``[secure]``.

Two kinds of secret reach text that people see (the console, logs, run history, reports,
the UI, alert messages):

- credentials written *inside a URL or DSN*: the user info of
  ``http://user:pass@host/`` and query parameters that name a credential
  (``?token=...``, ``&sig=...``, ``;token=...`` in a Spark Connect URL, libpq's
  ``password=...``). `mask_text` replaces them wherever a URL appears in a message, so
  an error of a library that quotes its URL is masked like our own messages;
- the *values* of the ``${ENV}`` references of a pipeline and its workspace, which may
  be quoted anywhere (a payload, an echoed request): `Redactor` replaces those, and
  masks values under keys that name credentials, and applies `mask_text` as well.

Every sink calls these two, never its own variant: the Segment client's log lines and
repr, node and run errors as the pipeline records them (so the console, history, alerts
and reports get them masked), the run history itself, the report and UI templates (a
Jinja finalizer), alert messages, the CLI's error lines, and log records of ``segloop*``
loggers once `mask_log_records` is installed (the CLI does).
"""

from __future__ import annotations

import json
import logging
import os
import re
from base64 import b64encode
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from segloop.secrets import ENV_REF

if TYPE_CHECKING:  # pragma: no cover
    from segloop.pipeline import Pipeline

REDACTED = "[secure]"
SENSITIVE_KEY = re.compile(r"write_?key|password|passwd|secret|token|authorization|api_?key|webhook", re.I)
"""Keys whose values are credentials, in payloads and metrics."""

SENSITIVE_PARAM = re.compile(r"pass|pwd|secret|token|key|auth|sig|credential|session", re.I)
"""Query-string (and DSN) parameter names whose values are credentials: ``?access_token=``,
``X-Amz-Signature``, ``api_key``, ``sig`` (Azure SAS), ``password``."""

# scheme://userinfo@ : the user info runs to the last "@" before the host (a password may
# hold an unescaped "@"); it never holds "/", "?", "#" or whitespace.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#@'\"<>]*(?:@[^\s/?#@'\"<>]*)*@")
# ?name=value, &name=value, ;name=value, and a DSN's leading or space-separated name=value
# (libpq's "host=db password=..."); the value stops at the next separator or quote, and
# punctuation that ends a sentence ("...;token=abc: refused") stays outside it.
_PARAM = re.compile(r"(?i)(^|[?&;\s])([a-z0-9_.\-]+)=([^&;#\s'\"<>]*?)(?=[:,.)\]]*(?:$|[&;#\s'\"<>]))")


def mask_text(text: str) -> str:
    """``text`` with the credentials of every URL or DSN in it replaced by ``[secure]``.

    ``http://user:pass@host/x?token=abc&page=2`` -> ``http://[secure]@host/x?token=[secure]&page=2``.
    """
    if "=" not in text and "@" not in text:
        return text  # the common case, cheaply
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)

    def param(match: re.Match[str]) -> str:
        lead, name, value = match.groups()
        if not value or value == REDACTED or not SENSITIVE_PARAM.search(name):
            return match.group(0)
        prose = lead.isspace() or not lead  # name=value in prose or SQL: only a DSN's password
        if prose and name.lower() not in ("password", "passwd", "pwd"):
            return match.group(0)
        return f"{lead}{name}={REDACTED}"

    return _PARAM.sub(param, text)


def mask_url(url: str) -> str:
    """A URL as it may be shown: `mask_text` of it."""
    return mask_text(url)


def _env_refs(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        match = ENV_REF.match(value.strip())
        if match:
            yield match.group(1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _env_refs(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _env_refs(item)


class Redactor:
    """Replaces secret values (and credential-named keys) with ``[secure]``, then applies `mask_text`."""

    MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words

    def __init__(self, secrets: Iterable[str] = ()):
        values: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= self.MIN_SECRET_LENGTH:
                values.add(secret)
                values.add(b64encode(f"{secret}:".encode()).decode())  # HTTP Basic form
                values.add(json.dumps(secret)[1:-1])  # as escaped inside JSON
        self.secrets = sorted(values, key=len, reverse=True)

    @classmethod
    def for_pipeline(cls, pipeline: Pipeline | None) -> Redactor:
        """Every secret the pipeline and its workspace reference, resolved from the environment."""
        if pipeline is None:
            return cls()
        names: set[str] = set()
        for node in pipeline.config.nodes.values():
            names.update(_env_refs(node.model_dump()))
        for option in ("alerts", "schedule"):
            section = getattr(pipeline.config, option, None)
            if section is not None:
                names.update(_env_refs(section.model_dump()))
        for warehouse in pipeline.workspace.config.warehouses.values():
            names.update(_env_refs(warehouse.model_dump()))
        collector = pipeline.workspace.config.collector
        if collector is not None:
            names.update(_env_refs(list(collector.keys)))
        return cls(os.environ[name] for name in names if os.environ.get(name))

    def text(self, value: str) -> str:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return mask_text(value)

    def value(self, value: Any, key: str = "") -> Any:
        if key and SENSITIVE_KEY.search(key) and isinstance(value, str | bytes) and value:
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


# -- logs -----------------------------------------------------------------------------------

_installed: list[Any] = []


def mask_log_records() -> None:
    """Mask the message of every log record of a ``segloop*`` logger as it is created.

    For the process that owns logging (the CLI): a record factory sees the records of every
    ``segloop.*`` module, those imported later included, whatever handler prints them.
    Installing twice is a no-op.
    """
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name == "segloop" or record.name.startswith("segloop."):
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: leave the record for logging to report
                return record
            masked = mask_text(message)
            if masked != message:
                record.msg, record.args = masked, None
        return record

    logging.setLogRecordFactory(factory)
    _installed.append(factory)

"""Every error segloop raises on purpose.

The tree::

    SegloopError                  base; the CLI prints its message in one red line
    ├── ConfigError               a workspace or pipeline file is wrong (file, line)
    │   └── SecretError           a ${ENV_VAR} named in a file is not set
    ├── WarehouseError            connecting to or querying a warehouse failed
    │   ├── WarehouseLockedError  another process holds the DuckDB file past lock_timeout
    │   └── MissingDriverError    the warehouse's optional extra is not installed
    ├── NodeError                 a node failed while running (names the node)
    ├── DataError                 input rows are unusable (names the column / row)
    └── DeliveryError             sending to Segment failed
        ├── TransientDeliveryError   worth retrying: network, timeout, 5xx, 429
        └── TerminalDeliveryError    not worth retrying: other 4xx, too large

Messages are sentences that say what failed and what to do next.
"""

from __future__ import annotations

from pathlib import Path


class SegloopError(Exception):
    """Base class of every error segloop raises on purpose."""


class ConfigError(SegloopError):
    """A workspace or pipeline file is invalid; carries the file and line when known."""

    def __init__(self, message: str, file: str | Path | None = None, line: int | None = None):
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        super().__init__(self.location_prefix() + message)

    def location_prefix(self) -> str:
        if self.file and self.line:
            return f"{self.file}:{self.line}: "
        if self.file:
            return f"{self.file}: "
        return ""


class ConfigErrors(ConfigError):
    """Several problems found in one file; `segloop validate` prints each on its own line."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = errors
        first = errors[0]
        super().__init__(
            "\n".join(str(e) for e in errors) if len(errors) > 1 else first.message,
            None if len(errors) > 1 else first.file,
            None if len(errors) > 1 else first.line,
        )


class SecretError(ConfigError):
    """A secret is referenced as ${ENV_VAR} but the variable is not set."""


class WarehouseError(SegloopError):
    """Connecting to, reading from or writing to a warehouse failed."""


class WarehouseLockedError(WarehouseError):
    """Another process holds the warehouse file (DuckDB) and did not release it in time."""


class MissingDriverError(WarehouseError):
    """The optional dependency of a warehouse type is not installed."""

    def __init__(self, warehouse_type: str, extra: str):
        super().__init__(
            f"the `{warehouse_type}` warehouse needs an optional driver that is not installed; "
            f"run: pip install 'segloop[{extra}]'"
        )


class NodeError(SegloopError):
    """A node failed; the message names the node."""

    def __init__(self, node: str, message: str):
        self.node = node
        super().__init__(f"node `{node}`: {message}")


class DataError(SegloopError):
    """Input data cannot be used as configured (missing column, wrong type, ...)."""


class DeliveryError(SegloopError):
    """Sending a batch to Segment failed."""

    def __init__(self, message: str, status: int | None = None, body: str | None = None):
        self.status = status
        self.body = body
        super().__init__(message)


class TransientDeliveryError(DeliveryError):
    """Worth retrying: network errors, timeouts, HTTP 5xx and 429."""

    def __init__(
        self,
        message: str,
        status: int | None = None,
        body: str | None = None,
        retry_after: float | None = None,
    ):
        self.retry_after = retry_after
        super().__init__(message, status, body)


class TerminalDeliveryError(DeliveryError):
    """Not worth retrying as is: HTTP 4xx other than 429 (bad payload, bad key)."""


HINT_PREFIXES = ("did you mean", "candidate bindings", "hint:", "detail:")


def database_message(exc: BaseException, pointer: bool = False) -> str:
    """A warehouse's error message, with the hints it gives after its first line.

    DuckDB and PostgreSQL say what is wrong on the first line and how to fix it on later
    ones ("Did you mean "order_completed"?", "Candidate bindings: ..."); those are kept.
    ``pointer=True`` also keeps the query line and the ``^`` under the error (for output
    printed line by line); otherwise lines are joined into one.
    """
    lines = [line.rstrip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    kept = [lines[0]]
    for i, line in enumerate(lines[1:], start=1):
        text = line.strip().lower()
        if text.startswith(HINT_PREFIXES):
            kept.append(line.strip())
        elif pointer and text.startswith("line ") and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"^"}:
            # the pointer: one ^ (duckdb 1.x, PostgreSQL) or a run of them under the name (duckdb 2)
            kept += [line, lines[i + 1]]
    return "\n".join(kept) if pointer else " ".join(kept)

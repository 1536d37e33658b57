"""The `segloop` command: a thin Typer layer over the Pipeline facade; no business logic here."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console

from segloop.errors import SegloopError

app = typer.Typer(
    name="segloop",
    help="Pull Segment data, run models on it, send the results back to Segment.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
_state: dict[str, Any] = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Print one red line and exit 1 for a SegloopError; `--debug` shows the traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SegloopError as exc:
            if _state["debug"]:
                raise
            for line in str(exc).splitlines() or [type(exc).__name__]:
                err_console.print(f"[red]error:[/red] {line}", highlight=False, markup=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    _state["debug"] = debug


def main() -> None:
    app(prog_name="segloop")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

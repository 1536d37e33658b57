"""segloop: pull Segment data, run models on it, send the results back to Segment."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segloop.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from segloop.pipeline import Pipeline

__all__ = ["Pipeline", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so `import segloop` (and `segloop --help`) stays fast.
    if name == "Pipeline":
        from segloop.pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)

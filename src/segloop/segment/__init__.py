"""The Segment side of segloop: messages, the sending client, and (elsewhere) sync state,
the collector, archive loading and the warehouse schema.

``segloop.segment.Client`` is the public sender; imports are lazy so ``import segloop``
stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from segloop.segment.send.client import Client
    from segloop.segment.send.results import DeliveryReport, Enqueued, Outcome, QueuedMessage
    from segloop.segment.send.sending import SendSummary, send_messages

__all__ = [
    "Client",
    "DeliveryReport",
    "Enqueued",
    "Outcome",
    "QueuedMessage",
    "SendSummary",
    "send_messages",
]

_LAZY = {
    "Client": "segloop.segment.send.client",
    "DeliveryReport": "segloop.segment.send.results",
    "Enqueued": "segloop.segment.send.results",
    "Outcome": "segloop.segment.send.results",
    "QueuedMessage": "segloop.segment.send.results",
    "SendSummary": "segloop.segment.send.sending",
    "send_messages": "segloop.segment.send.sending",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'segloop.segment' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

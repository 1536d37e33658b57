"""Sending to Segment: the client, its queue and batches, the HTTP senders and their answers.

Import-free on purpose (``import segloop`` stays cheap); the public names are re-exported
lazily by ``segloop.segment``.
"""

"""Pure-math models used by the prediction nodes (numpy/scipy only, no warehouse access).

Kept apart from ``segloop.operators`` so the likelihoods can be tested against published
results without a pipeline, and reused from notebooks.
"""

from __future__ import annotations

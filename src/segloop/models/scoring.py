"""Small helpers shared by the prediction nodes: percentiles, ranking metrics, durations.

Written with numpy only (no sklearn) so they are cheap to import and easy to check by
hand; the propensity node also uses them for its recency-only baseline.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - numpy is imported where it is used (~50 ms per process)
    import numpy as np
    from numpy.typing import ArrayLike, NDArray

DAYS_PER_UNIT = {"days": 1.0, "weeks": 7.0}
_DURATION = re.compile(
    r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>d|day|days|w|wk|week|weeks|m|month|months|y|year|years)?\s*$",
    re.IGNORECASE,
)
_UNIT_DAYS = {"d": 1.0, "w": 7.0, "m": 365.25 / 12.0, "y": 365.25}


def parse_duration_days(value: str | float | int, default_unit: str = "days") -> float:
    """Days in a duration written as ``120``, ``"120 days"``, ``"17w"``, ``"6 months"``, ``"1y"``.

    A bare number is read in ``default_unit`` (``days`` or ``weeks``). Months are 1/12 of
    a year of 365.25 days. Raises ``ValueError`` with the accepted forms otherwise.
    """
    if isinstance(value, bool):
        raise ValueError("a duration must be a number or text like `120 days`")
    if isinstance(value, int | float):
        days = float(value) * DAYS_PER_UNIT[default_unit]
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(
                f"cannot read duration {value!r}; write e.g. `120 days`, `17 weeks`, `6 months`, `1 year`"
            )
        unit = (match.group("unit") or default_unit[0]).lower()[0]
        days = float(match.group("n")) * _UNIT_DAYS[unit]
    if not math.isfinite(days) or days <= 0:
        raise ValueError(f"duration {value!r} must be positive")
    return days


def percentile_rank(values: ArrayLike) -> NDArray[np.float64]:
    """Share of the other customers with a strictly lower value, in [0, 1].

    Segment's convention for predictive traits: 0.85 means the customer scores higher than
    85% of the others (top 15%); the best customer gets 1.0 and the lowest 0.0. Ties share
    one percentile, so equal scores are never split by an arbitrary order.
    """
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    if n == 0:
        return np.zeros(0)
    if n == 1:
        return np.ones(1)
    sorted_v = np.sort(v)
    lower = np.searchsorted(sorted_v, v, side="left")
    return lower / (n - 1.0)


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with tie correction); NaN if one class only."""
    import numpy as np

    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: ArrayLike, probabilities: ArrayLike, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood of binary labels under the predicted probabilities."""
    import numpy as np

    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def top_lift(labels: ArrayLike, scores: ArrayLike, share: float = 0.1) -> float:
    """Positive rate among the top ``share`` of scores divided by the overall positive rate."""
    import numpy as np

    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if len(y) == 0 or y.mean() == 0:
        return float("nan")
    k = max(1, int(round(share * len(y))))
    top = np.argsort(-s, kind="stable")[:k]
    return float(y[top].mean() / y.mean())


def spearman(a: ArrayLike, b: ArrayLike) -> float:
    """Spearman rank correlation (Pearson on average ranks) over pairs without NaN.

    NaN if fewer than two pairs remain or either side is constant.
    """
    import numpy as np

    av, bv = np.asarray(a, float), np.asarray(b, float)
    keep = ~(np.isnan(av) | np.isnan(bv))
    ra, rb = _average_ranks(av[keep]), _average_ranks(bv[keep])
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _average_ranks(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks, ties given the mean of the ranks they span."""
    import numpy as np

    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    n = len(values)
    boundaries = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1], True])
    starts, stops = boundaries[:-1], boundaries[1:]
    ranks_sorted = np.repeat((starts + stops + 1) / 2.0, stops - starts)
    ranks = np.empty(n)
    ranks[order] = ranks_sorted
    return ranks


def deciles(scores: ArrayLike, outcome: ArrayLike, groups: int = 10) -> dict[str, list[float]]:
    """Customers cut into ``groups`` equal bands by score (1 = highest), with outcome sums.

    The table behind a lift chart: how many customers each band holds, the mean score and
    the mean and total outcome (a 0/1 label, or spend). Equal scores keep their input
    order (stable sort), so the table is the same on every run.
    """
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(outcome, dtype=np.float64)
    order = np.argsort(-s, kind="stable")
    bands = np.array_split(order, groups)
    table: dict[str, list[float]] = {
        "band": [],
        "customers": [],
        "mean_score": [],
        "mean_outcome": [],
        "total_outcome": [],
    }
    for i, idx in enumerate(bands, start=1):
        if len(idx) == 0:
            continue
        table["band"].append(i)
        table["customers"].append(len(idx))
        table["mean_score"].append(float(s[idx].mean()))
        table["mean_outcome"].append(float(y[idx].mean()))
        table["total_outcome"].append(float(y[idx].sum()))
    return table

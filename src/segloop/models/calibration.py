"""Calibration of predicted probabilities, and the numbers that show whether they mean what they say.

A classifier's ranking can be good (high AUC) while its probabilities are off: on CDNOW,
trained in 1997, "buys in the next 90 days" averaged 0.216 against an actual 0.162. The
propensity node therefore fits a monotone map from the model's score to the rate actually
observed on the most recent labelled window (a window the model never saw) and applies it
when scoring, so a base rate that drifts between windows is absorbed.

- ``isotonic``: pool-adjacent-violators (scikit-learn's IsotonicRegression), a step-wise
  non-decreasing map clipped to the observed range; no assumption about the curve's shape.
  Outputs stay within [0.5/n, 1 - 0.5/n] for n calibration rows (never a flat 0 or 1).
- ``platt``: a logistic regression on the logit of the score (two parameters); smooth,
  keeps every distinct score distinct, needs fewer positives.

Both are deterministic (no random state), so the same inputs give the same floats on every
engine. ``cross_fitted`` gives honest calibrated probabilities for the calibration window
itself (two folds, each calibrated by the other) so the metrics do not grade the
calibrator on the rows it was fitted to.

The metrics here (Brier score, expected calibration error, reliability table) use numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from numpy.typing import ArrayLike, NDArray

Method = Literal["isotonic", "platt"]
ECE_BINS = 10
_EPS = 1e-6


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    import numpy as np

    q = np.clip(p, _EPS, 1.0 - _EPS)
    return np.asarray(np.log(q / (1.0 - q)), dtype=np.float64)


@dataclass
class Calibrator:
    """A fitted map from a model's score to a calibrated probability."""

    method: Method
    model: Any

    @classmethod
    def fit(cls, scores: ArrayLike, labels: ArrayLike, method: Method) -> Calibrator:
        import numpy as np

        s = np.asarray(scores, dtype=np.float64)
        y = np.asarray(labels, dtype=np.float64)
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            # A step with only negatives (or positives) would say 0 (or 1): never more certain
            # than half a customer in the whole calibration window can show.
            eps = 0.5 / max(len(y), 1)
            model: Any = IsotonicRegression(y_min=eps, y_max=1.0 - eps, out_of_bounds="clip")
            model.fit(s, y)
        else:
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
            model.fit(_logit(s)[:, None], y.astype(np.int64))
        return cls(method, model)

    def apply(self, scores: ArrayLike) -> NDArray[np.float64]:
        import numpy as np

        s = np.asarray(scores, dtype=np.float64)
        if len(s) == 0:
            return s
        if self.method == "isotonic":
            out = self.model.predict(s)
        else:
            out = self.model.predict_proba(_logit(s)[:, None])[:, 1]
        return np.asarray(out, dtype=np.float64)


def cross_fitted(scores: ArrayLike, labels: ArrayLike, method: Method) -> NDArray[np.float64]:
    """Calibrated probabilities for the calibration rows themselves, each from the other fold.

    Rows alternate between two folds in their given order (the node orders them by customer
    id), so the split is the same on every run and every engine.
    """
    import numpy as np

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    out = np.empty_like(s)
    fold = np.arange(len(s)) % 2 == 0
    for part in (fold, ~fold):
        rest = ~part
        if len(np.unique(y[rest])) < 2:  # one class only: nothing to learn; keep the scores
            out[part] = s[part]
            continue
        out[part] = Calibrator.fit(s[rest], y[rest], method).apply(s[part])
    return out


def brier(labels: ArrayLike, probabilities: ArrayLike) -> float:
    """Mean squared difference between the 0/1 outcome and the probability (lower is better)."""
    import numpy as np

    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def reliability(labels: ArrayLike, probabilities: ArrayLike, bins: int = ECE_BINS) -> dict[str, list[float]]:
    """Customers in equal-width probability bins (0-0.1, ..., 0.9-1): predicted vs actual rate.

    The table behind a reliability diagram (``band`` 1 = 0-0.1); empty bins are left out.
    """
    import numpy as np

    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    index = np.clip((p * bins).astype(np.int64), 0, bins - 1)
    table: dict[str, list[float]] = {"band": [], "bin_from": [], "bin_to": [], "customers": [],
                                     "mean_probability": [], "actual_rate": []}
    for b in range(bins):
        hit = index == b
        if not hit.any():
            continue
        table["band"].append(b + 1)  # 1 = the lowest probabilities
        table["bin_from"].append(b / bins)
        table["bin_to"].append((b + 1) / bins)
        table["customers"].append(int(hit.sum()))
        table["mean_probability"].append(float(p[hit].mean()))
        table["actual_rate"].append(float(y[hit].mean()))
    return table


def expected_calibration_error(labels: ArrayLike, probabilities: ArrayLike, bins: int = ECE_BINS) -> float:
    """Gap between predicted and actual rate per equal-width bin, weighted by the bin's customers."""
    table = reliability(labels, probabilities, bins)
    total = sum(table["customers"])
    if not total:
        return float("nan")
    return float(sum(n * abs(p - a) for n, p, a in zip(
        table["customers"], table["mean_probability"], table["actual_rate"], strict=True)) / total)

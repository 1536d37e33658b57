"""The clv node's per-customer summary, computed in the warehouse, and what reaches Python.

``summary_expr`` is one Ibis query: one row per customer with ``frequency`` (x),
``recency`` (t_x), ``tenure`` (T), ``monetary_value`` and ``total_spend`` (plus, for the
holdout check, what the customer did after ``as_of``). The models are fitted on rows
*collapsed* in the warehouse as well (``FitRows``): one row per distinct ``(x, t_x, T)``
with its count, and one per distinct ``(x, m)`` of repeat buyers, so the fit needs memory
for the distinct histories, not for the customers. Scoring then reads the summary in
bounded chunks (``segloop.operators.clv``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from segloop.errors import DataError
from segloop.models.scoring import DAYS_PER_UNIT
from segloop.operators.columns import MONEY_TYPE, money

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import numpy as np
    import pyarrow as pa

    from segloop.operators.base import RunContext
    from segloop.operators.clv import ClvConfig
    from segloop.warehouses import Warehouse

SECONDS_PER_DAY = 86400


@dataclass
class FitRows:
    """What the fits need: distinct ``(x, t_x, T)`` with counts, distinct ``(x, m)`` of
    repeat buyers with counts, and a few totals. ``sampled`` is the share of customers
    kept when the distinct rows did not fit in memory (1.0: all of them)."""

    x: np.ndarray
    t_x: np.ndarray
    T: np.ndarray
    w: np.ndarray
    gx: np.ndarray
    gm: np.ndarray
    gw: np.ndarray
    customers: int
    total_spend: float
    purchase_days: float
    sampled: float = 1.0

    @classmethod
    def from_summary(cls, summary: pa.Table) -> FitRows:
        """From a summary already in Python (it fits in memory): collapsed here."""
        import numpy as np

        from segloop.models.btyd import unique_rows

        x = summary["frequency"].to_numpy(zero_copy_only=False).astype(np.float64)
        t_x = summary["recency"].to_numpy(zero_copy_only=False).astype(np.float64)
        T = summary["tenure"].to_numpy(zero_copy_only=False).astype(np.float64)
        m = summary["monetary_value"].to_numpy(zero_copy_only=False).astype(np.float64)
        total = summary["total_spend"].to_numpy(zero_copy_only=False)
        (xu, tu, Tu), wu, _ = unique_rows(x, t_x, T)
        keep = (x > 0) & (m > 0) & np.isfinite(m)
        (gx, gm), gw, _ = unique_rows(x[keep], m[keep])
        return cls(xu, tu, Tu, wu, gx, gm, gw, customers=len(x), total_spend=float(total.sum()),
                   purchase_days=float((x + 1).sum()))

    @classmethod
    def from_warehouse(cls, wh: Warehouse, summary: ir.Table, max_rows: int, seed: int) -> FitRows:
        """Collapsed in the warehouse; thinned to about ``max_rows`` customers if there are
        more distinct rows than that (each customer kept with the same probability)."""
        import numpy as np

        totals = wh.rows(summary.aggregate(
            customers=summary.count(), total_spend=summary.total_spend.sum(),
            purchase_days=(summary.frequency + 1).sum(),
        ))[0]
        customers = int(totals["customers"])
        share = 1.0
        bg = summary.group_by(["frequency", "recency", "tenure"]).aggregate(_n=summary.count())
        repeat = summary.filter((summary.frequency > 0) & (summary.monetary_value > 0))
        gg = repeat.group_by(["frequency", "monetary_value"]).aggregate(_n=repeat.count())
        distinct = wh.count(bg) + wh.count(gg)
        if distinct > max_rows:
            share = max_rows / distinct
        rng = np.random.default_rng(seed)
        x, t_x, T, w = _collect(wh, bg, ["frequency", "recency", "tenure"], share, rng, max_rows)
        gx, gm, gw = _collect(wh, gg, ["frequency", "monetary_value"], share, rng, max_rows)
        return cls(x, t_x, T, w, gx, gm, gw, customers=customers,
                   total_spend=float(totals["total_spend"] or 0.0),
                   purchase_days=float(totals["purchase_days"] or 0.0), sampled=share)


def _collect(wh: Warehouse, expr: ir.Table, columns: list[str], share: float,
             rng: np.random.Generator, batch_rows: int) -> list[np.ndarray]:
    """Distinct rows and counts, streamed; with ``share`` < 1 each row's count is thinned
    binomially (the same as keeping each customer with probability ``share``)."""
    import numpy as np

    from segloop.models.btyd import unique_rows

    parts: list[list[np.ndarray]] = [[] for _ in range(len(columns) + 1)]
    for batch in wh.to_batches(expr.select(*columns, "_n"), batch_rows=batch_rows):
        values = [batch.column(i).to_numpy(zero_copy_only=False).astype(np.float64)
                  for i in range(len(columns) + 1)]
        if share < 1.0:
            values[-1] = rng.binomial(values[-1].astype(np.int64), share).astype(np.float64)
            keep = values[-1] > 0
            values = [v[keep] for v in values]
        for part, v in zip(parts, values, strict=True):
            part.append(v)
    arrays = [np.concatenate(p) if p else np.zeros(0) for p in parts]
    # One order whatever the warehouse's: the fits add rows up in this order (same bits).
    cols, weights, _ = unique_rows(*arrays[:-1], weights=arrays[-1])
    return [*cols, weights]


def as_of_day(source: ir.Table, config: ClvConfig, ctx: RunContext) -> date:
    """The calibration end as a calendar day: configured, or the day of the latest timestamp."""
    if config.as_of is not None:
        return config.as_of.date() if isinstance(config.as_of, datetime) else config.as_of
    latest = ctx.warehouse.scalar(source[config.timestamp].cast("timestamp").max())
    if latest is None:
        raise DataError(
            f"node `{ctx.node}`: column `{config.timestamp}` has no timestamps; "
            "the input is empty or the column is all null"
        )
    return latest.date() if isinstance(latest, datetime) else date.fromisoformat(str(latest)[:10])


def by_customer(summary: pa.Table, config: ClvConfig) -> pa.Table:
    """The summary sorted by customer id, in Python: one order (byte order, not the
    warehouse's collation) gives the same output on every warehouse."""
    return summary.sort_by(config.customer_id)


def summary_expr(
    source: ir.Table, config: ClvConfig, as_of: date, actual_until: date | None = None
) -> ir.Table:
    """One row per customer: x, t_x, T, mean repeat value (and what followed ``as_of``).

    Runs in the warehouse. Columns: ``<customer_id>, frequency, recency, tenure,
    monetary_value, total_spend`` and, with ``actual_until``, ``actual_spend`` (sum of
    amounts on days in ``(as_of, actual_until]``) and ``actual_purchases`` (distinct days
    with a purchase in that window) for customers known by ``as_of``.
    """
    import ibis

    cid = config.customer_id
    unit_seconds = SECONDS_PER_DAY * DAYS_PER_UNIT[config.time_unit]
    rows = source.select(
        _cid=source[cid],
        _day=source[config.timestamp].cast("timestamp").truncate("D"),
        _amount=money(source[config.amount]),
    )
    rows = rows.filter(rows._cid.notnull() & rows._day.notnull())
    end = ibis.literal(datetime.combine(as_of, datetime.min.time())).cast("timestamp")

    days = (
        rows.filter(rows._day <= end)
        .group_by(["_cid", "_day"])
        .aggregate(_value=rows._amount.sum())
    )
    days = days.mutate(_first=days._day.min().over(group_by=days._cid))
    per_customer = days.group_by("_cid").aggregate(
        _first_day=days._day.min(),
        _last_day=days._day.max(),
        _n_days=days.count(),
        _repeat_value=ibis.ifelse(days._day == days._first, ibis.literal(0, type=MONEY_TYPE), days._value).sum(),
        total_spend=days._value.sum().cast("float64"),
    )
    first_s = per_customer._first_day.epoch_seconds()
    x = per_customer._n_days - 1
    summary = per_customer.mutate(
        frequency=x.cast("int64"),
        recency=((per_customer._last_day.epoch_seconds() - first_s) / unit_seconds).cast("float64"),
        tenure=((end.epoch_seconds() - first_s) / unit_seconds).cast("float64"),
        monetary_value=ibis.ifelse(
            x > 0, per_customer._repeat_value.cast("float64") / x, 0.0
        ).cast("float64"),
    )
    columns = ["_cid", "frequency", "recency", "tenure", "monetary_value", "total_spend"]
    summary = summary.select(*columns)
    if actual_until is not None:
        stop = ibis.literal(datetime.combine(actual_until, datetime.min.time())).cast("timestamp")
        after = rows.filter((rows._day > end) & (rows._day <= stop))
        actual = after.group_by(after._cid.name("_acid")).aggregate(
            actual_spend=after._amount.sum().cast("float64"),
            actual_purchases=after._day.nunique().cast("int64"),
        )
        joined = summary.left_join(actual, summary._cid == actual._acid)
        summary = joined.select(
            *columns,
            actual_spend=joined.actual_spend.fill_null(0.0),
            actual_purchases=joined.actual_purchases.fill_null(0),
        )
    return summary.rename({cid: "_cid"})


def floats(column: Any) -> np.ndarray:
    """A float column as numpy, nulls as NaN."""
    import numpy as np

    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)

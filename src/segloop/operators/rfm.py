"""Node `rfm`: recency, frequency and monetary value per customer, scored 1-5, with segments.

Everything runs inside the warehouse as SQL window functions built with Ibis.

Definitions (one row per customer):

- ``recency_days``: whole calendar days from the customer's last purchase day to the
  as-of day (``as_of``, default: the day of the latest timestamp in the input).
- ``frequency``: number of purchases (input rows); ``monetary``: sum of ``amount``
  (missing amounts count as 0), added exactly as DECIMAL(38, 6) so every warehouse gives
  the same figure.
- Scores 1-5 by quintile of rank, ties shared: ``score = 1 + floor(5 * worse / n)``
  where ``worse`` is the number of customers strictly worse on that measure (more
  recency days, fewer purchases, less money) and ``n`` the number of customers. Equal
  values therefore always get equal scores (no arbitrary tie-breaking by id), and a value
  held by many customers may leave a score unused.
- ``segment``: the standard 10-segment map on the R and F scores (see ``SEGMENT_MAP``).

Rows with no customer id or no timestamp are not scored; they go to
``<pipeline>__<node>__rejects`` with a reason, and the run goes on.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext
from segloop.operators.columns import money, require_columns
from segloop.sql_cache import cached_expressions

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

# (R scores, F scores) -> segment. Covers all 25 cells of the R x F grid exactly once.
SEGMENT_MAP: tuple[tuple[tuple[int, ...], tuple[int, ...], str], ...] = (
    ((5,), (4, 5), "champions"),
    ((3, 4), (4, 5), "loyal_customers"),
    ((4, 5), (2, 3), "potential_loyalists"),
    ((5,), (1,), "new_customers"),
    ((4,), (1,), "promising"),
    ((3,), (3,), "need_attention"),
    ((3,), (1, 2), "about_to_sleep"),
    ((1, 2), (3, 4), "at_risk"),
    ((1, 2), (5,), "cant_lose"),
    ((1, 2), (1, 2), "hibernating"),
)
SEGMENTS: tuple[str, ...] = tuple(name for _, _, name in SEGMENT_MAP)

def segment_of(r_score: int, f_score: int) -> str:
    """The segment of one (R, F) cell; the Python twin of the SQL used by the node."""
    for rs, fs, name in SEGMENT_MAP:
        if r_score in rs and f_score in fs:
            return name
    raise ValueError(f"scores out of range: r={r_score}, f={f_score}")


class RfmConfig(NodeConfig):
    type: Literal["rfm"] = "rfm"
    customer_id: str = Field(default="user_id", description="Column identifying the customer.")
    timestamp: str = Field(default="timestamp", description="Column with the purchase time.")
    amount: str = Field(default="revenue", description="Column with the purchase amount.")
    as_of: date | datetime | None = Field(
        default=None, description="Date recency is measured from; default: latest timestamp."
    )


class RfmOperator(Operator[RfmConfig]):
    """Scores customers by recency, frequency and monetary value inside the warehouse."""

    type_name: ClassVar[str] = "rfm"
    config_model: ClassVar[type[NodeConfig]] = RfmConfig
    READS_INPUTS_AS_SQL: ClassVar[bool] = True
    BUCKETS: ClassVar[int] = 5

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        config = self.config
        source_name, source = next(iter(inputs.items()))
        require_columns(
            source,
            {"customer_id": config.customer_id, "timestamp": config.timestamp, "amount": config.amount},
            node=ctx.node,
            source=source_name,
        )
        scored, rejects = cached_expressions(ctx.warehouse, "rfm", config.model_dump_json(), [source],
                                             lambda: rfm_expr(source, config))
        output = NodeOutput(table=scored)
        rejected = ctx.warehouse.count(rejects)
        output.metrics["rejected_rows"] = rejected
        if rejected:
            output.extra["rejects"] = rejects
            ctx.warn(
                f"{rejected} input rows have no `{config.customer_id}` or `{config.timestamp}`; "
                f"they were written to {ctx.table_name('rejects')}"
            )
        return output


def rfm_expr(source: ir.Table, config: RfmConfig) -> tuple[ir.Table, ir.Table]:
    """(scored customers, rejected rows) as Ibis expressions over ``source``."""
    import ibis

    cid, ts, amount = config.customer_id, config.timestamp, config.amount
    t = source.mutate(_ts=source[ts].cast("timestamp"))
    bad = t[cid].isnull() | t["_ts"].isnull()
    rejects = t.filter(bad).drop("_ts").mutate(
        _reject_reason=ibis.ifelse(
            t[cid].isnull(), f"missing customer id `{cid}`", f"missing timestamp `{ts}`"
        )
    )
    good = t.filter(~bad)

    per_customer = good.group_by(good[cid]).aggregate(
        last_purchase_at=good["_ts"].max(),
        frequency=good.count(),
        monetary=money(good[amount]).sum().cast("float64"),
    )
    day = 86400
    last_day = per_customer.last_purchase_at.truncate("D").epoch_seconds()
    if config.as_of is not None:
        as_of_ts = ibis.literal(datetime.combine(config.as_of, datetime.min.time()) if type(config.as_of) is date else config.as_of)
        as_of_day = as_of_ts.cast("timestamp").truncate("D").epoch_seconds()
    else:
        as_of_day = per_customer.last_purchase_at.max().over().truncate("D").epoch_seconds()
    with_recency = per_customer.mutate(recency_days=((as_of_day - last_day) / day).round().cast("int64"))

    n = with_recency.count().over()
    buckets = RfmOperator.BUCKETS

    def score(order: ir.Value) -> ir.Value:
        worse = ibis.rank().over(order_by=order)  # 0-based min rank: ties share it
        return (1 + (worse * buckets / n).floor()).cast("int64")

    scored = with_recency.mutate(
        r_score=score(ibis.desc(with_recency.recency_days)),
        f_score=score(with_recency.frequency),
        m_score=score(with_recency.monetary),
    )
    scored = scored.mutate(
        rfm_score=scored.r_score.cast("string") + scored.f_score.cast("string") + scored.m_score.cast("string"),
        segment=_segment_case(scored.r_score, scored.f_score),
    )
    columns = [cid, "recency_days", "frequency", "monetary", "last_purchase_at",
               "r_score", "f_score", "m_score", "rfm_score", "segment"]
    return scored.select(*columns).order_by(cid), rejects


def _segment_case(r: ir.IntegerValue, f: ir.IntegerValue) -> ir.StringValue:
    import ibis

    branches = [(r.isin(list(rs)) & f.isin(list(fs)), name) for rs, fs, name in SEGMENT_MAP]
    return ibis.cases(*branches, else_="unscored")

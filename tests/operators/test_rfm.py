"""RFM on a hand-made table of 20 customers: scores and segments worked out by hand."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from segloop.operators.rfm import SEGMENT_MAP, segment_of
from segloop.pipeline import Pipeline
from segloop.warehouses import DuckDBConfig, Warehouse

AS_OF = datetime(2024, 3, 31, 18, 0)
# customer: (recency days, frequency, amount per order)
CUSTOMERS = {
    "c01": (300, 1, 50), "c02": (250, 1, 20), "c03": (200, 1, 30), "c04": (200, 2, 25),
    "c05": (150, 1, 100), "c06": (120, 3, 10), "c07": (100, 2, 40), "c08": (90, 1, 200),
    "c09": (80, 5, 12), "c10": (80, 4, 30), "c11": (60, 2, 15), "c12": (50, 6, 50),
    "c13": (40, 3, 70), "c14": (30, 8, 25), "c15": (30, 1, 5), "c16": (30, 7, 100),
    "c17": (10, 2, 45), "c18": (5, 10, 40), "c19": (2, 1, 500), "c20": (0, 12, 100),
}
# With n = 20, score = 1 + floor(5 * worse / 20) = 1 + floor(worse / 4), where `worse` counts
# customers strictly worse. R: c03/c04 tie at 200 days (worse = 2 -> 1); c09/c10 tie at 80
# (worse = 8 -> 3); c14/c15/c16 tie at 30 (worse = 13 -> 4). F: seven customers bought once
# (worse = 0 -> 1), four twice (worse = 7 -> 2), two three times (worse = 11 -> 3), then 4, 5, 6
# purchases have worse = 13, 14, 15 -> 4 and 7+ purchases -> 5. M: totals 5, 20, 30 x3, 50 x2,
# 60, 80, 90, 100, 120, 200 x2, 210, 300, 400, 500, 700, 1200.
EXPECTED = {  # customer: (r, f, m, segment)
    "c01": (1, 1, 2, "hibernating"), "c02": (1, 1, 1, "hibernating"),
    "c03": (1, 1, 1, "hibernating"), "c04": (1, 2, 2, "hibernating"),
    "c05": (2, 1, 3, "hibernating"), "c06": (2, 3, 1, "at_risk"),
    "c07": (2, 2, 3, "hibernating"), "c08": (2, 1, 4, "hibernating"),
    "c09": (3, 4, 2, "loyal_customers"), "c10": (3, 4, 3, "loyal_customers"),
    "c11": (3, 2, 1, "about_to_sleep"), "c12": (3, 4, 4, "loyal_customers"),
    "c13": (4, 3, 4, "potential_loyalists"), "c14": (4, 5, 4, "loyal_customers"),
    "c15": (4, 1, 1, "promising"), "c16": (4, 5, 5, "loyal_customers"),
    "c17": (5, 2, 3, "potential_loyalists"), "c18": (5, 5, 5, "champions"),
    "c19": (5, 1, 5, "new_customers"), "c20": (5, 5, 5, "champions"),
}

PIPELINE = """\
name: shop
nodes:
  orders:
    type: sql
    sql: select user_id, ts, revenue from shop_src.orders
  rfm:
    type: rfm
    input: orders
    customer_id: user_id
    timestamp: ts
    amount: revenue
{as_of}
"""


def orders_table() -> pa.Table:
    users, stamps, amounts = [], [], []
    for user, (recency, frequency, amount) in CUSTOMERS.items():
        last = AS_OF.replace(hour=14) - timedelta(days=recency)
        for k in range(frequency):
            users.append(user)
            stamps.append(last - timedelta(days=k))
            amounts.append(float(amount))
    # rows that cannot be scored: they go to the rejects table, the run goes on
    users += [None, None, "c01"]
    stamps += [AS_OF, AS_OF, None]
    amounts += [1.0, 2.0, 3.0]
    return pa.table({"user_id": users, "ts": pa.array(stamps, pa.timestamp("us")), "revenue": amounts})


def run_rfm(make_workspace, as_of: str = "") -> tuple[dict[str, dict], Warehouse, object]:
    root: Path = make_workspace({"shop": PIPELINE.format(as_of=as_of)})
    wh = Warehouse.connect(DuckDBConfig(), root)
    wh.create_table("orders", orders_table(), schema="shop_src")
    wh.close()
    result = Pipeline.load(root / "pipelines" / "shop.yml").run()
    wh = Warehouse.connect(DuckDBConfig(), root)
    rows = {r["user_id"]: r for r in wh.table("shop__rfm").to_pyarrow().to_pylist()}
    return rows, wh, result


def test_scores_and_segments_match_hand_computation(make_workspace) -> None:
    rows, wh, result = run_rfm(make_workspace)
    assert result.ok and result.node("rfm").rows == 20
    for user, (r, f, m, segment) in EXPECTED.items():
        row = rows[user]
        assert (row["r_score"], row["f_score"], row["m_score"], row["segment"]) == (r, f, m, segment), user
        assert row["rfm_score"] == f"{r}{f}{m}"
        recency, frequency, amount = CUSTOMERS[user]
        assert row["recency_days"] == recency and row["frequency"] == frequency
        assert row["monetary"] == pytest.approx(frequency * amount)
    wh.close()


def test_unscorable_rows_go_to_rejects_with_reason(make_workspace) -> None:
    rows, wh, result = run_rfm(make_workspace)
    rejects = wh.table("shop__rfm__rejects").to_pyarrow().to_pylist()
    reasons = sorted(r["_reject_reason"] for r in rejects)
    assert reasons == ["missing customer id `user_id`"] * 2 + ["missing timestamp `ts`"]
    assert result.node("rfm").metrics["rejected_rows"] == 3
    assert "shop__rfm__rejects" in result.node("rfm").warnings[0]
    wh.close()


def test_explicit_as_of_shifts_recency_not_scores(make_workspace) -> None:
    rows, wh, _ = run_rfm(make_workspace, as_of="    as_of: 2024-04-10")
    for user, (r, f, m, _segment) in EXPECTED.items():
        assert rows[user]["recency_days"] == CUSTOMERS[user][0] + 10
        assert (rows[user]["r_score"], rows[user]["f_score"], rows[user]["m_score"]) == (r, f, m)
    wh.close()


# A second hand-worked table, 15 customers, that reaches all ten segments (the first never
# reaches need_attention or cant_lose). n = 15: score = 1 + floor(5 * worse / 15) =
# 1 + floor(worse / 3). Recency 300, 280, ..., 20 days: customer i (1-based) has i - 1
# customers strictly worse, so c01-c03 score R 1, c04-c06 R 2, ... c13-c15 R 5. Frequencies
# are 1..15, all distinct, so 1-3 purchases score F 1, 4-6 F 2, ..., 13-15 F 5.
ALL_SEGMENTS = {  # customer: (purchases, r, f, segment)
    "c01": (13, 1, 5, "cant_lose"), "c02": (1, 1, 1, "hibernating"),
    "c03": (7, 1, 3, "at_risk"), "c04": (4, 2, 2, "hibernating"),
    "c05": (10, 2, 4, "at_risk"), "c06": (11, 2, 4, "at_risk"),
    "c07": (8, 3, 3, "need_attention"), "c08": (5, 3, 2, "about_to_sleep"),
    "c09": (12, 3, 4, "loyal_customers"), "c10": (2, 4, 1, "promising"),
    "c11": (14, 4, 5, "loyal_customers"), "c12": (9, 4, 3, "potential_loyalists"),
    "c13": (15, 5, 5, "champions"), "c14": (3, 5, 1, "new_customers"),
    "c15": (6, 5, 2, "potential_loyalists"),
}


def test_a_hand_worked_table_reaches_all_ten_segments(make_workspace) -> None:
    users, stamps, amounts = [], [], []
    for i, (user, (purchases, _r, _f, _segment)) in enumerate(sorted(ALL_SEGMENTS.items())):
        last = AS_OF.replace(hour=14) - timedelta(days=300 - 20 * i)
        for k in range(purchases):
            users.append(user)
            stamps.append(last - timedelta(days=k))
            amounts.append(10.0 + i)
    root: Path = make_workspace({"shop": PIPELINE.format(as_of="    as_of: 2024-03-31")})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("orders", pa.table({"user_id": users, "ts": pa.array(stamps, pa.timestamp("us")),
                                            "revenue": amounts}), schema="shop_src")
    result = Pipeline.load(root / "pipelines" / "shop.yml").run()
    assert result.ok, result.node("rfm").error
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        rows = {r["user_id"]: r for r in wh.table("shop__rfm").to_pyarrow().to_pylist()}
    got = {u: (r["frequency"], r["r_score"], r["f_score"], r["segment"]) for u, r in rows.items()}
    assert got == ALL_SEGMENTS
    assert {segment for *_, segment in ALL_SEGMENTS.values()} == {name for _, _, name in SEGMENT_MAP}


def test_segment_map_covers_every_cell_once() -> None:
    for r in range(1, 6):
        for f in range(1, 6):
            owners = [name for rs, fs, name in SEGMENT_MAP if r in rs and f in fs]
            assert len(owners) == 1, (r, f, owners)
            assert segment_of(r, f) == owners[0]
    assert len({name for _, _, name in SEGMENT_MAP}) == 10


def test_missing_column_names_node_and_column(make_workspace) -> None:
    root = make_workspace({"shop": PIPELINE.format(as_of="").replace("amount: revenue", "amount: total")})
    wh = Warehouse.connect(DuckDBConfig(), root)
    wh.create_table("orders", orders_table(), schema="shop_src")
    wh.close()
    result = Pipeline.load(root / "pipelines" / "shop.yml").run()
    error = result.node("rfm").error
    assert result.node("rfm").status == "failed"
    assert "node `rfm`" in error and "`amount: total` not found in input `orders`" in error

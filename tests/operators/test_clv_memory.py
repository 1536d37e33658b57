"""Node `clv` within `memory_limit:`: fit on collapsed rows, score in chunks streamed back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from segloop.operators.base import NodeOutput, RunContext
from segloop.operators.clv import ClvConfig, ClvOperator
from segloop.warehouses import Warehouse
from tests.operators.test_clv import CDNOW_KEYS, cdnow_transactions


class Pulls:
    """Records the size of every result the node pulls into Python from the warehouse."""

    def __init__(self, wh: Warehouse):
        self.sizes: list[int] = []
        to_batches, to_arrow = wh.to_batches, wh.to_arrow

        def batches(expr: Any, batch_rows: int | None = None) -> Any:
            for batch in to_batches(expr, batch_rows):
                self.sizes.append(batch.num_rows)
                yield batch

        def arrow(expr: Any, limit: int | None = None) -> pa.Table:
            table = to_arrow(expr, limit)
            self.sizes.append(table.num_rows)
            return table

        wh.to_batches = batches  # type: ignore[method-assign]
        wh.to_arrow = arrow  # type: ignore[method-assign]


@pytest.fixture()
def wh() -> Warehouse:
    wh = Warehouse.duckdb()
    wh.create_table("cdnow", cdnow_transactions())
    return wh


def run(wh: Warehouse, limit: int | None = None, **keys: object) -> tuple[NodeOutput, RunContext]:
    config = ClvConfig.model_validate({"type": "clv", "input": "tx", **CDNOW_KEYS, **keys})
    ctx = RunContext(warehouse=wh, pipeline="p", node="ltv", run_id="r1")
    if limit is not None:
        ctx.memory_limit = limit
    return ClvOperator(config).run({"tx": wh.table("cdnow")}, ctx), ctx


def as_table(output: Any) -> pa.Table:
    table = output.read_all() if isinstance(output, pa.RecordBatchReader) else output
    return table.sort_by("customer")


def test_over_the_budget_the_node_streams_chunks_with_the_same_predictions(wh: Warehouse) -> None:
    whole, _ = run(wh, validate=True, as_of="1998-06-30")
    assert isinstance(whole.table, pa.Table)  # 2,357 customers fit in the default 2GB
    chunk = 1000
    limit = chunk * ClvOperator.BYTES_PER_ROW * 2
    assert ClvOperator.chunk_rows(limit) == chunk
    pulls = Pulls(wh)
    streamed, _ = run(wh, limit=limit, validate=True, as_of="1998-06-30")
    assert isinstance(streamed.table, pa.RecordBatchReader)
    pulls.sizes.clear()
    # Written as the engine writes it: batch by batch, while the summary is still being read.
    assert wh.replace_table("p__ltv", streamed.table) == 2357
    # Scoring pulled the summary in chunks of at most `chunk` customers, never all at once.
    assert len(pulls.sizes) >= 3 and max(pulls.sizes) <= chunk and sum(pulls.sizes) == 2357
    pulls.sizes.clear()
    table = as_table(wh.to_arrow(wh.table("p__ltv")))
    expected = as_table(whole.table)
    assert table.column_names == expected.column_names and table.num_rows == 2357
    assert table["customer"].equals(expected["customer"])
    for name in table.column_names[1:]:
        np.testing.assert_allclose(
            table[name].to_numpy(zero_copy_only=False).astype(float),
            expected[name].to_numpy(zero_copy_only=False).astype(float), rtol=1e-6, atol=1e-9,
            err_msg=name,
        )
    # Same fit (on rows collapsed in the warehouse), same card.
    for key in ("bgnbd", "gamma_gamma", "bgnbd_log_likelihood", "predicted_clv_total",
                "holdout_spearman", "holdout_gini", "holdout_decile_error", "purchases_total_p99"):
        assert streamed.metrics[key] == pytest.approx(whole.metrics[key], rel=1e-9), key
    assert streamed.metrics["scored_in_chunks"] is True and "fit_sample_share" not in streamed.metrics


def test_the_fit_reads_distinct_histories_not_customers(wh: Warehouse) -> None:
    pulls = Pulls(wh)
    limit = 200 * ClvOperator.BYTES_PER_ROW * 2
    out, _ = run(wh, limit=limit, intervals=False)
    fit_pulls = list(pulls.sizes)  # before the output stream is read: the fit and pass 1
    assert out.metrics["bgnbd_unique_rows"] < 2357 / 2
    # Nothing pulled before scoring was larger than a chunk or the fit's share of the budget.
    assert max(fit_pulls) <= max(ClvOperator.chunk_rows(limit), ClvOperator.fit_rows(limit)) == 500
    assert sum(as_table(out.table)["frequency"].to_numpy() >= 0) == 2357


def test_distinct_rows_beyond_the_budget_fit_on_a_sample_and_say_so(wh: Warehouse) -> None:
    whole, _ = run(wh, intervals=False)
    fit_rows = 600
    limit = int(fit_rows * ClvOperator.BYTES_PER_FIT_ROW / 0.25)
    assert ClvOperator.fit_rows(limit) == fit_rows
    sampled, ctx = run(wh, limit=limit, intervals=False)
    share = sampled.metrics["fit_sample_share"]
    assert 0 < share < 1
    assert sampled.metrics["fit_customers"] < 2357 and any("sample" in w for w in ctx.warnings)
    # Within noise of the full fit: expected purchases per customer agree on average.
    a = as_table(sampled.table)["expected_purchases"].to_numpy()
    b = as_table(whole.table)["expected_purchases"].to_numpy()
    assert abs(a.sum() / b.sum() - 1) < 0.15
    assert np.corrcoef(a, b)[0, 1] > 0.99

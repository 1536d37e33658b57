"""Node `propensity` within `memory_limit:`: a training sample, scoring in chunks, features built once per run.

Bounds that do not depend on the machine: how many rows the model was fitted on, how many
rows any one fetch brought into Python, and which node built the feature table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from segloop.operators.base import NodeOutput, RunContext, RunScope
from segloop.operators.propensity import PropensityConfig, PropensityOperator
from segloop.operators.propensity_rows import Budget
from segloop.pipeline import Pipeline
from segloop.store import RunStore
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.operators.test_propensity import scored, synthetic_events

TINY = 1_000_000  # bytes: 718 training rows of 25 features, of 2,826 customers


@pytest.fixture(scope="module")
def shop() -> Warehouse:
    wh = Warehouse.duckdb()
    wh.create_table("events", synthetic_events(3000))
    return wh


def run(wh: Warehouse, memory_limit: int | None = None, shared: RunScope | None = None,
        **keys: object) -> NodeOutput:
    config = PropensityConfig.model_validate({"type": "propensity", "input": "ev", **keys})
    ctx = RunContext(warehouse=wh, pipeline="p", node="buyers", run_id="r1",
                     shared=shared or RunScope(), **({"memory_limit": memory_limit} if memory_limit else {}))
    return PropensityOperator(config).run({"ev": wh.table("events")}, ctx)


def spy_fetches(wh: Warehouse, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every result the node pulls into Python (the real fetch, recorded)."""
    sizes: list[int] = []
    fetch = wh.to_arrow

    def recorded(expr: Any, limit: int | None = None) -> pa.Table:
        table = fetch(expr, limit)
        sizes.append(table.num_rows)
        return table

    monkeypatch.setattr(wh, "to_arrow", recorded)
    return sizes


def test_a_tiny_memory_limit_trains_on_a_stratified_sample_and_scores_everyone_in_chunks(
    shop: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = run(shop)
    sizes = spy_fetches(shop, monkeypatch)
    out = run(shop, memory_limit=TINY)
    monkeypatch.undo()
    m = out.metrics
    budget = Budget.of(TINY, m["features"])
    assert budget.train_rows < 1000 and budget.chunk_rows < 500  # what the bound means here
    # Trained on a sample of at most the budget's rows, out of every customer of the snapshot.
    assert m["training_sampled"] is True and m["validation_sampled"] is True
    assert m["training_sample"] <= budget.train_rows < m["training_customers"] == full.metrics["training_customers"]
    assert m["validation_sample"] <= budget.valid_rows < m["validation_customers"]
    # The sample keeps each label's share: the card's base rate is the snapshot's.
    assert m["base_rate"] == pytest.approx(full.metrics["base_rate"], abs=1.5 / m["validation_sample"])
    assert m["auc"] > 0.7  # still a useful model (full data: ~0.8)
    # Every customer scored, no fetch larger than the budget allows, in several chunks.
    table = scored(out, shop)
    everyone = shop.count(shop.table("events").filter(shop.table("events").user_id.notnull()).select("user_id").distinct())
    assert table.num_rows == m["scored_customers"] == everyone == full.metrics["scored_customers"]
    assert len(set(table["user_id"].to_pylist())) == everyone
    assert max(sizes) <= max(budget.train_rows, budget.valid_rows, budget.chunk_rows)
    assert m["scoring_chunks"] >= everyone / budget.chunk_rows
    # Besides: the distinct purchase summaries BG/NBD sets the level from, within the budget.
    assert m["clv_summary_rows"] <= 2 * budget.train_rows
    assert sum(sizes) <= (m["training_sample"] + m["validation_sample"] + everyone + m["features"]
                          + m["clv_summary_rows"])
    pct = table["percentile"].to_numpy()
    assert pct.min() == 0.0 and pct.max() == 1.0


def test_scoring_in_chunks_gives_the_same_output_as_in_one_go(
    shop: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = scored(run(shop), shop)
    monkeypatch.setattr(Budget, "SCORE_SHARE", 0.0001)  # chunks of ~300 customers; same training
    out = run(shop)
    assert out.metrics["scoring_chunks"] >= 8 and out.metrics["training_sampled"] is False
    chunked = scored(out, shop)
    assert chunked.column_names == ["user_id", "probability", "percentile"]
    assert chunked.equals(whole)


PIPELINE = """\
name: shop
nodes:
  ev:
    type: sql
    sql: select * from events
  buyers:
    type: propensity
    input: ev
    memory_limit: 1MB
  churners:
    type: propensity
    input: ev
    mode: churn
"""


def test_two_propensity_nodes_of_a_run_build_the_features_once_and_drop_them_at_the_end(
    make_workspace: Any,
) -> None:
    root: Path = make_workspace({"shop": PIPELINE})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("events", synthetic_events(3000))
    result = Pipeline.load(root / "pipelines" / "shop.yml").run(options={"report": False})
    assert result.ok, [n.error for n in result.nodes]
    metrics = {n.node: n.metrics for n in RunStore(root / ".segloop" / "state.db").get_run(result.run_id).nodes}
    # The churners node reused the table the buyers node built (same events, same snapshots),
    # though their memory limits differ; only the buyers node trained on a sample.
    assert metrics["buyers"]["features_prepared_by"] == "buyers"
    assert metrics["churners"]["features_prepared_by"] == "buyers"
    assert metrics["buyers"]["training_sampled"] is True and metrics["churners"]["training_sampled"] is False
    assert metrics["churners"]["validation_positives"] == metrics["buyers"]["validation_negatives"]
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        left = [t for t in wh.list_tables() if t.startswith("_segloop_")]
        assert left == []  # the feature table and the scoring tables were dropped
        buyers, churners = wh.to_arrow(wh.table("shop__buyers")), wh.to_arrow(wh.table("shop__churners"))
    assert buyers.num_rows == churners.num_rows == metrics["buyers"]["scored_customers"]
    # Opposite questions on the same customers: the rankings are (mostly) reversed.
    rho = np.corrcoef(buyers["percentile"].to_numpy(), churners["percentile"].to_numpy())[0, 1]
    assert rho < -0.8

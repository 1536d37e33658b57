"""clv and clusters over their memory budget on PostgreSQL: every row streamed back."""

from __future__ import annotations

import pyarrow as pa
import pytest

from segloop.operators.base import RunContext
from segloop.operators.clusters import ClustersConfig, ClustersOperator
from segloop.operators.clv import ClvConfig, ClvOperator
from tests.operators.test_clusters import blobs
from tests.operators.test_clusters_memory import limit_for
from tests.operators.test_clv import CDNOW_KEYS, cdnow_transactions
from tests.operators.test_recommend_postgres import pg_or_skip


@pytest.mark.postgres
def test_streamed_outputs_are_written_whole_on_postgres(request: pytest.FixtureRequest) -> None:
    pg = pg_or_skip(request)
    table, _ = blobs(1000)
    pg.create_table("sm_customers", table)
    ctx = RunContext(warehouse=pg, pipeline="p", node="cl", run_id="r", memory_limit=limit_for(800))
    out = ClustersOperator(ClustersConfig(k=3)).run({"c": pg.table("sm_customers")}, ctx)
    assert isinstance(out.table, pa.RecordBatchReader)
    assert pg.replace_table("p__cl", out.table) == 3000
    pg.replace_table("p__cl__profiles", out.extra["profiles"], count=False)
    assert sorted(pg.to_arrow(pg.table("p__cl__profiles"))["size"].to_pylist()) == [1000] * 3

    pg.create_table("sm_cdnow", cdnow_transactions())
    config = ClvConfig.model_validate({"type": "clv", "input": "tx", **CDNOW_KEYS})
    ctx = RunContext(warehouse=pg, pipeline="p", node="ltv", run_id="r",
                     memory_limit=700 * ClvOperator.BYTES_PER_ROW * 2)
    out = ClvOperator(config).run({"tx": pg.table("sm_cdnow")}, ctx)
    assert isinstance(out.table, pa.RecordBatchReader)
    assert pg.replace_table("p__ltv", out.table) == 2357

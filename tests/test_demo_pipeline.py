"""The repository's demo pipeline (examples/demo, what `make demo` runs) end to end on DuckDB.

What a user of the demo sees arrive in Segment: RFM and prediction traits, a cluster name
per customer, and a "Product Recommendations" track per customer with per-product scores.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from sklearn.metrics import adjusted_rand_score

from segloop.demo import write_demo_data
from segloop.pipeline import Pipeline
from segloop.warehouses import DuckDBConfig, Warehouse
from tests.segment.send.fake_segment import FakeSegment

DEMO_PIPELINE = Path(__file__).resolve().parents[1] / "examples" / "demo" / "pipelines" / "demo.yml"
CUSTOMERS = 1500


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], Any]:
    mp = pytest.MonkeyPatch()
    mp.setenv("SEGMENT_WRITE_KEY", "wk-demo")
    mp.setenv("SEGLOOP_ENDPOINT", "http://127.0.0.1:9")  # unused: the fake transport answers
    root = tmp_path_factory.mktemp("demo")
    (root / "pipelines").mkdir()
    (root / "segloop.yml").write_text(
        "warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    (root / "pipelines" / "demo.yml").write_text(DEMO_PIPELINE.read_text())
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        write_demo_data(wh, customers=CUSTOMERS, split_ids=True)  # as `segloop demo-data`
    fake = FakeSegment()
    try:
        result = Pipeline.load(root / "pipelines" / "demo.yml").run(options={"segment_transport": fake})
    finally:
        mp.undo()
    return root, fake.delivered(), result


@pytest.mark.slow
def test_cluster_names_arrive_as_traits_and_match_the_personas(demo_run) -> None:
    root, messages, result = demo_run
    assert result.ok, [n.error for n in result.nodes]
    clusters = {m["userId"]: m["traits"]["customer_cluster"] for m in messages
                if m["type"] == "identify" and "customer_cluster" in m["traits"]}
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        buyers = set(wh.table("demo__rfm").user_id.to_pyarrow().to_pylist())
        truth = {r["user_id"]: r["persona"]
                 for r in wh.table("customers", schema="demo_shop_truth").to_pyarrow().to_pylist()}
    assert set(clusters) == buyers  # every customer with an order gets a cluster name
    names = Counter(clusters.values())
    assert len(names) == 4 and all(count >= 50 for count in names.values()), names
    users = sorted(clusters)
    assert adjusted_rand_score([truth[u] for u in users], [clusters[u] for u in users]) >= 0.5
    # The names say what sets each group apart: the vips' cluster is the "very frequent" one.
    by_persona: dict[str, Counter[str]] = defaultdict(Counter)
    for user, name in clusters.items():
        by_persona[truth[user]][name] += 1
    vip_name = by_persona["vip"].most_common(1)[0][0]
    lapsed_name = by_persona["lapsed"].most_common(1)[0][0]
    assert "very frequent" in vip_name and "high spend" in vip_name, vip_name
    assert "not recent" in lapsed_name or "long inactive" in lapsed_name, lapsed_name


@pytest.mark.slow
def test_every_customer_gets_a_product_recommendations_track_with_scores(demo_run) -> None:
    root, messages, result = demo_run
    tracks = [m for m in messages if m["type"] == "track"]
    assert tracks and all(m["event"] == "Product Recommendations" for m in tracks)
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        # One person, one id: a customer whose older account was merged by `alias` is one
        # customer (the demo pipeline stitches identities), never sent under the old id.
        customers = wh.table("demo__shop__tracks").canonical_user_id.nunique().to_pyarrow().as_py()
        merged = wh.table("aliases", schema="demo_shop").count().to_pyarrow().as_py()
    assert merged > 0
    assert len({m["userId"] for m in tracks}) == len(tracks) == customers
    assert not any(m["userId"].startswith("legacy-") for m in tracks)
    for m in tracks:
        props = m["properties"]
        assert len(props["recommended_products"]) == 5
        assert props["top_product"] == props["recommended_products"][0]
        assert isinstance(props["top_product_score"], float)
        for item in ("phones_01", "wearables_01"):  # per-product scores, null when not scored
            assert props[item] is None or isinstance(props[item], float)
    scored = [m["properties"]["phones_01"] for m in tracks if m["properties"]["phones_01"] is not None]
    assert len(scored) > len(tracks) / 2
    recommend = result.node("recommend").metrics
    assert recommend["ndcg_at_10"] >= 1.5 * recommend["popular_ndcg_at_10"], recommend


@pytest.mark.slow
def test_a_second_run_on_the_same_data_sends_nothing(demo_run, monkeypatch: pytest.MonkeyPatch) -> None:
    """The models retrain on every run; on unchanged data they must give the same outputs
    to the digit sent, or every diff sync would resend (and Segment re-fan-out) them all."""
    root, messages, first = demo_run
    monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk-demo")
    monkeypatch.setenv("SEGLOOP_ENDPOINT", "http://127.0.0.1:9")
    fake = FakeSegment()
    again = Pipeline.load(root / "pipelines" / "demo.yml").run(options={"segment_transport": fake})
    assert again.ok, [n.error for n in again.nodes]
    assert fake.delivered() == []
    sends = [n for n in again.nodes if n.metrics and "unchanged" in n.metrics]
    assert len(sends) == 4  # rfm, predictions, clusters, recommendations
    for node in sends:
        before = first.node(node.name).metrics
        assert (node.metrics["sent"], node.metrics["unchanged"]) == (0, before["sent"]), node.name
    assert sum(first.node(n.name).metrics["sent"] for n in sends) == len(messages)

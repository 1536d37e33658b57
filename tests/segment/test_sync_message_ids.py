"""A value that changes back is delivered: a new send gets a new messageId, a retry keeps its id.

Real parts: pipelines run through ``Pipeline`` against a DuckDB file and send to segloop's
own collector on a loopback port, which (like Segment) drops a messageId it has seen.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from segloop.pipeline import Pipeline
from segloop.segment.archive.files import read_all_messages
from segloop.segment.collector.app import serve_in_thread
from segloop.warehouses import DuckDBConfig, Warehouse

KEY = "wk-flip-test"
USERS = 50
PIPELINE = """\
name: crm
nodes:
  tiers:
    type: sql
    sql: select * from src.tiers
  to_segment:
    type: segment
    input: tiers
    write_key: ${{SEGLOOP_FLIP_KEY}}
    endpoint: {url}
    call: identify
    customer_id: user_id
    traits: [tier]
{extra}"""


@pytest.fixture(autouse=True)
def write_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGLOOP_FLIP_KEY", KEY)


def write_tiers(root: Path, tiers: dict[str, int]) -> None:
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.create_table("tiers", pa.table({"user_id": list(tiers), "tier": list(tiers.values())}), schema="src")


def run(root: Path) -> dict[str, Any]:
    result = Pipeline.load(root / "pipelines" / "crm.yml").run()
    assert result.ok, [n.error for n in result.nodes]
    return result.node("to_segment").metrics


def accepted(archive: Path) -> dict[str, list[dict[str, Any]]]:
    """The messages the collector accepted, per user, in the order they arrived."""
    per_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for message in sorted(read_all_messages(archive), key=lambda m: m["receivedAt"]):
        per_user[message["userId"]].append(message)
    return per_user


def test_a_value_that_changes_back_is_delivered_and_an_unchanged_run_sends_nothing(
        make_workspace, tmp_path: Path) -> None:
    users = [f"u{i}" for i in range(USERS)]
    with serve_in_thread({KEY: "crm"}, tmp_path / "collector") as collector:
        root = make_workspace({"crm": PIPELINE.format(url=collector.url, extra="")})
        sent = []
        previewed: set[str] = set()
        for tier in (1, 2, 1, 1):
            write_tiers(root, dict.fromkeys(users, tier))
            dry = Pipeline.load(root / "pipelines" / "crm.yml").run(dry_run=True).node("to_segment").metrics
            previewed |= {m["messageId"] for m in dry["sample_payloads"]}
            metrics = run(root)
            sent.append((metrics["sent"], metrics["changed"], metrics["unchanged"]))
        stats = collector.stats
    assert sent == [(50, 0, 0), (50, 50, 0), (50, 50, 0), (0, 0, 50)]
    assert stats["accepted"] == 150 and stats["deduped"] == 0
    per_user = accepted(tmp_path / "collector")
    assert set(per_user) == set(users)
    assert {u: [m["traits"]["tier"] for m in msgs] for u, msgs in per_user.items()} == dict.fromkeys(users, [1, 2, 1])
    ids = [m["messageId"] for msgs in per_user.values() for m in msgs]
    assert len(set(ids)) == 150
    assert len(previewed) == 9 and previewed <= set(ids)  # a dry run shows the ids the run sends


def test_a_customer_who_leaves_comes_back_and_leaves_again_gets_every_message(
        make_workspace, tmp_path: Path) -> None:
    with serve_in_thread({KEY: "crm"}, tmp_path / "collector") as collector:
        root = make_workspace({"crm": PIPELINE.format(url=collector.url, extra="    on_removed: Left Audience\n")})
        for tiers in ({"u0": 1, "u1": 1}, {"u1": 1}, {"u0": 1, "u1": 1}, {"u1": 1}, {"u1": 1}):
            write_tiers(root, tiers)
            run(root)
        stats = collector.stats
    assert stats["deduped"] == 0
    per_user = accepted(tmp_path / "collector")
    calls = [(m["type"], m.get("event") or m["traits"]["tier"]) for m in per_user["u0"]]
    assert calls == [("identify", 1), ("track", "Left Audience"), ("identify", 1), ("track", "Left Audience")]
    assert [m["type"] for m in per_user["u1"]] == ["identify"]


def test_reset_sends_every_row_again_as_new_messages(make_workspace, tmp_path: Path) -> None:
    users = {f"u{i}": i % 3 for i in range(USERS)}
    with serve_in_thread({KEY: "crm"}, tmp_path / "collector") as collector:
        root = make_workspace({"crm": PIPELINE.format(url=collector.url, extra="")})
        write_tiers(root, users)
        assert run(root)["sent"] == USERS
        Pipeline.load(root / "pipelines" / "crm.yml").reset("to_segment")
        again = run(root)
        assert (again["new"], again["sent"]) == (USERS, USERS)
        assert run(root)["sent"] == 0
        stats = collector.stats
    assert stats["accepted"] == 2 * USERS and stats["deduped"] == 0


@pytest.mark.postgres
def test_ids_of_values_that_change_back_are_the_same_on_postgres_and_duckdb(
        tmp_path: Path, pg_cluster: Any, pg_database: str) -> None:
    """Ids depend on the data and the state only: the warehouse is not part of them."""
    from tests.segment.send.fake_segment import FakeSegment

    users = [f"u{i}" for i in range(USERS)]
    ids: dict[str, list[list[str]]] = {}
    for label, yml in (("postgres", pg_cluster.workspace_yml(pg_database, "default")),
                       ("duckdb", "warehouses:\n  default:\n    type: duckdb\n")):
        root = tmp_path / label
        (root / "pipelines").mkdir(parents=True)
        (root / "segloop.yml").write_text(yml)
        (root / "pipelines" / "crm.yml").write_text(PIPELINE.format(url="http://127.0.0.1:9", extra=""))
        pipeline = Pipeline.load(root / "pipelines" / "crm.yml")
        fake = FakeSegment()
        ids[label] = []
        for tier in (1, 2, 1, 1):
            with pipeline.connect() as wh:
                wh.create_table("tiers", pa.table({"user_id": users, "tier": [tier] * USERS}), schema="src")
            before = len(fake.delivered())
            assert pipeline.run(options={"segment_transport": fake}).ok
            ids[label].append(sorted(m["messageId"] for m in fake.delivered()[before:]))
    assert [len(run) for run in ids["duckdb"]] == [50, 50, 50, 0]
    assert len({i for run in ids["duckdb"] for i in run}) == 150
    assert ids["postgres"] == ids["duckdb"]

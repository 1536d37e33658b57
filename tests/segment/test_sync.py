"""Sync state: the diff runs in the warehouse; checkpoints survive; failures are retried."""

from __future__ import annotations

import pyarrow as pa
import pytest

from segloop.segment.sync import FAILED, REJECTED, SENT, Ack, SyncState
from segloop.warehouses import Warehouse

FINGERPRINT = "track|Score"


def source(n: int, bump: set[int] = frozenset(), start: int = 0) -> pa.Table:  # type: ignore[assignment]
    ids = list(range(start, n))
    return pa.table({
        "user_id": [f"u{i}" for i in ids],
        "score": [i / 10 + (1 if i in bump else 0) for i in ids],
        "segment": ["a" if i % 2 else "b" for i in ids],
    })


def send_all(state: SyncState, status_of=lambda row: SENT) -> list[dict]:
    sent = []
    for chunk in state.pending_chunks(rows=700):
        rows = chunk.to_pylist()
        sent.extend(rows)
        state.record([Ack(r["_key"], r["_hash"], status_of(r), f"m-{r['_key']}") for r in rows if r["_key"]])
        state.checkpoint()
    return sent


def plan(state: SyncState, wh: Warehouse, table: pa.Table, mode: str = "diff", fingerprint: str = FINGERPRINT):
    wh.create_table("src", table)
    return state.plan(wh.table("src"), ["user_id"], ["score", "segment"], fingerprint, mode)


@pytest.mark.parametrize("n", [1, 99, 100, 101, 2501])
def test_second_run_on_unchanged_data_sends_nothing(warehouse: Warehouse, n: int) -> None:
    state = SyncState(warehouse, "p", "n", "r1")
    first = plan(state, warehouse, source(n))
    assert first.counts == {"new": n} and first.to_send == n
    assert len(send_all(state)) == n
    second = plan(state, warehouse, source(n))
    assert second.to_send == 0 and second.counts == {"unchanged": n}


def test_one_percent_changed_sends_exactly_those(warehouse: Warehouse) -> None:
    state = SyncState(warehouse, "p", "n", "r1")
    plan(state, warehouse, source(1000))
    send_all(state)
    changed = set(range(0, 1000, 100))
    again = plan(state, warehouse, source(1000, bump=changed))
    assert again.counts == {"changed": 10, "unchanged": 990}
    assert {r["user_id"] for r in send_all(state)} == {f"u{i}" for i in changed}


def test_failed_rows_are_retried_whatever_their_hash(warehouse: Warehouse) -> None:
    state = SyncState(warehouse, "p", "n", "r1")
    plan(state, warehouse, source(50))
    send_all(state, status_of=lambda r: FAILED if r["user_id"] in {"u3", "u4"} else SENT)
    again = plan(state, warehouse, source(50))
    assert again.counts == {"retry": 2, "unchanged": 48}
    assert sorted(r["user_id"] for r in send_all(state)) == ["u3", "u4"]
    assert plan(state, warehouse, source(50)).to_send == 0


def test_rejected_rows_wait_for_a_change(warehouse: Warehouse) -> None:
    state = SyncState(warehouse, "p", "n", "r1")
    plan(state, warehouse, source(10))
    send_all(state, status_of=lambda r: REJECTED if r["user_id"] == "u1" else SENT)
    assert plan(state, warehouse, source(10)).to_send == 0
    assert plan(state, warehouse, source(10, bump={1})).counts["changed"] == 1


def test_unacknowledged_rows_are_sent_again(warehouse: Warehouse) -> None:
    """A run killed after the first checkpoint: the next run sends only what was not acknowledged."""
    state = SyncState(warehouse, "p", "n", "r1")
    plan(state, warehouse, source(30))
    chunk = next(state.pending_chunks(rows=10)).to_pylist()
    state.record([Ack(r["_key"], r["_hash"], SENT, "m") for r in chunk])
    state.checkpoint()  # ... and then the process dies
    resumed = SyncState(warehouse, "p", "n", "r2")
    again = plan(resumed, warehouse, source(30))
    assert 0 < len(chunk) < 30
    assert again.counts == {"new": 30 - len(chunk), "unchanged": len(chunk)}
    assert {r["user_id"] for r in send_all(resumed)}.isdisjoint({r["user_id"] for r in chunk})


def test_mapping_change_counts_as_change_for_every_row(warehouse: Warehouse) -> None:
    state = SyncState(warehouse, "p", "n", "r1")
    plan(state, warehouse, source(20))
    send_all(state)
    assert plan(state, warehouse, source(20), fingerprint="track|Other").counts == {"changed": 20}


def test_full_mode_sends_everything(warehouse: Warehouse) -> None:
    state = SyncState(warehouse, "p", "n", "r1")
    plan(state, warehouse, source(20))
    send_all(state)
    full = plan(state, warehouse, source(20), mode="full")
    assert full.to_send == 20 and full.counts == {"unchanged": 20}


def test_removed_keys_counted_and_duplicates_and_missing_keys_flagged(warehouse: Warehouse) -> None:
    state = SyncState(warehouse, "p", "n", "r1")
    plan(state, warehouse, source(10))
    send_all(state)
    table = source(10, start=3)
    table = pa.concat_tables([table, table.slice(0, 1), pa.table({"user_id": pa.array([None], pa.string()),
                                                                  "score": [1.0], "segment": ["a"]})])
    again = plan(state, warehouse, table)
    assert again.removed_keys == 3
    assert again.counts == {"unchanged": 7, "duplicate": 1, "no_key": 1}


def test_attempts_add_up_and_reset_forgets(warehouse: Warehouse) -> None:
    state = SyncState(warehouse, "p", "n", "r1")
    for _ in range(3):
        plan(state, warehouse, source(5))
        send_all(state, status_of=lambda r: FAILED)
    assert state.statuses() == {FAILED: 5}  # folds the last run's checkpoint log in
    attempts = warehouse.table(state.state_table).to_pyarrow()["attempts"].to_pylist()
    assert attempts == [3] * 5
    state.reset()
    assert plan(state, warehouse, source(5)).counts == {"new": 5}


def test_a_memory_cap_too_small_for_the_input_costs_memory_not_the_sync(
        warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync's DuckDB memory cap is a preference: a statement that cannot fit runs again
    with the warehouse's own limit, and that limit is back in force after the run."""
    import segloop.segment.sync as sync

    def limit() -> tuple[float, str]:
        value, unit = warehouse.con.con.execute("SELECT current_setting('memory_limit')").fetchone()[0].split()
        return float(value), unit

    before = limit()
    too_small = []
    spy = sync._out_of_memory
    monkeypatch.setattr(sync, "_out_of_memory", lambda exc: too_small.append(spy(exc)) or spy(exc))
    # duckdb 2 fits these statements in 8MB; 4MB is still too small for some (asserted below).
    monkeypatch.setattr(SyncState, "DUCKDB_SETTINGS", {"memory_limit": "4MB"})
    state = SyncState(warehouse, "p", "n", "r1")
    first = plan(state, warehouse, source(30_000))
    assert first.counts == {"new": 30_000} and len(send_all(state)) == 30_000
    again = plan(state, warehouse, source(30_000, bump={5, 7}))
    assert again.counts == {"changed": 2, "unchanged": 29_998}
    assert any(too_small)  # the cap really was too small for some statement
    after = limit()
    assert after[1] == before[1] and after[0] == pytest.approx(before[0], rel=0.02)  # printed rounded
    warehouse.raw_sql("CREATE TABLE big AS SELECT range::VARCHAR || repeat('x', 60) AS s FROM range(300000)")
    assert warehouse.con.con.execute("SELECT count(DISTINCT s) FROM big").fetchone()[0] == 300_000


def test_the_memory_cap_is_left_off_while_another_run_shares_the_process(
        warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB's memory_limit covers the whole database: with a second pipeline running in
    the same process (`segloop serve`), the sync must not cap that run's queries."""
    import segloop.locks

    def setting(name: str) -> str:
        return str(warehouse.con.con.execute(f"SELECT current_setting('{name}')").fetchone()[0])

    before = (setting("memory_limit"), setting("preserve_insertion_order"))
    state = SyncState(warehouse, "p", "n", "r1")
    with state.session():
        alone = (setting("memory_limit"), setting("preserve_insertion_order"))
    before = (setting("memory_limit"), setting("preserve_insertion_order"))  # restored, as printed
    monkeypatch.setattr(segloop.locks, "_RUNNING", [2])
    with state.session():
        shared = (setting("memory_limit"), setting("preserve_insertion_order"))
        assert plan(state, warehouse, source(50)).counts == {"new": 50}
        assert len(send_all(state)) == 50
    assert alone[0] != before[0] and alone[1] == "False"  # the cap is real when the run is alone
    assert shared == before

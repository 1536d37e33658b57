"""Segment's own Python library, pointed at the collector, lands in Segment's warehouse schema."""

from __future__ import annotations

from pathlib import Path

from segloop.segment.archive.loader import load_archive
from segloop.segment.collector.app import serve_in_thread
from segloop.warehouses import Warehouse

KEY = "wk_library"
USERS = 250
EVENTS = 10_000


def send_with_segment_library(url: str) -> tuple[dict[str, int], dict[str, dict]]:
    from segment.analytics.client import Client

    errors: list[Exception] = []
    client = Client(
        KEY,
        host=url,
        on_error=lambda error, batch: errors.append(error),
        upload_interval=0.05,
        max_queue_size=EVENTS + 10,
    )
    sent = {"track": 0, "identify": 0, "page": 0}
    last_traits: dict[str, dict] = {}
    for i in range(EVENTS):
        user = f"user-{i % USERS}"
        kind = ("track", "track", "identify", "page")[i % 4]
        if kind == "track":
            ok, _ = client.track(
                user_id=user,
                event="Order Completed" if i % 8 == 0 else "Product Viewed",
                properties={"revenue": i / 10, "productId": f"p{i % 17}", "items": [1, 2]},
            )
        elif kind == "identify":
            traits = {"email": f"{user}@example.com", "plan": "pro" if i % 3 else "free", "logins": i}
            last_traits[user] = traits
            ok, _ = client.identify(user_id=user, traits=traits)
        else:
            ok, _ = client.page(user_id=user, category="Docs", name="Home", properties={"url": f"https://x/{i}"})
        assert ok, "the library dropped a message (queue full)"
        sent[kind] += 1
    client.flush()
    client.join()
    assert errors == []
    return sent, last_traits


def test_segment_library_10k_events_load_with_segment_column_names(tmp_path: Path):
    data_dir = tmp_path / "collector"
    with serve_in_thread({KEY: "shop"}, data_dir) as running:
        sent, last_traits = send_with_segment_library(running.url)
        assert running.stats["accepted"] == EVENTS
    with Warehouse.duckdb(tmp_path / "wh.duckdb") as wh:
        result = load_archive(wh, data_dir)
        assert result.schemas == ["shop"]
        assert result.messages == EVENTS

        def count(table: str, where: str = "TRUE") -> int:
            return int(wh.sql(f'SELECT COUNT(*) AS n FROM shop."{table}" WHERE {where}').to_pyarrow()["n"][0].as_py())

        assert count("tracks") == sent["track"]
        assert count("identifies") == sent["identify"]
        assert count("pages") == sent["page"]
        assert count("order_completed") + count("product_viewed") == sent["track"]
        assert count("tracks", "event = 'order_completed' AND event_text = 'Order Completed'") == count("order_completed")
        assert count("tracks", "context_library_name = 'analytics-python'") == sent["track"]
        columns = set(wh.table("order_completed", "shop").columns)
        assert {
            "id", "user_id", "anonymous_id", "received_at", "sent_at", "timestamp",
            "original_timestamp", "uuid_ts", "context_library_name", "context_library_version",
            "event", "event_text", "revenue", "product_id", "items",
        } <= columns
        assert {"name", "category", "url"} <= set(wh.table("pages", "shop").columns)
        users = wh.to_arrow(wh.table("users", "shop")).to_pylist()
        assert len(last_traits) == USERS // 2  # identify is every 4th call: even users only
        assert len(users) == len({u["id"] for u in users}) == len(last_traits)
        by_id = {u["id"]: u for u in users}
        for user, traits in last_traits.items():
            assert by_id[user]["email"] == traits["email"]
            assert by_id[user]["logins"] == traits["logins"]  # the latest identify wins

        again = load_archive(wh, data_dir)
        assert again.files_loaded == 0 and not again.rows_inserted
        assert count("tracks") == sent["track"]


def test_segment_library_with_gzip_and_a_batch_level_context(tmp_path):
    from segment.analytics.client import Client

    from segloop.segment.archive.files import read_all_messages

    errors: list[Exception] = []
    with serve_in_thread({KEY: "shop"}, tmp_path / "collector") as running:
        client = Client(KEY, host=running.url, gzip=True, on_error=lambda e, b: errors.append(e),
                        upload_interval=0.05)
        for i in range(500):
            client.track(user_id=f"u{i % 7}", event="Signed Up", properties={"n": i},
                         context={"ip": "10.0.0.1"})
        client.flush()
        client.join()
        assert running.stats["accepted"] == 500
    assert errors == []
    messages = read_all_messages(tmp_path / "collector")
    assert len(messages) == 500
    assert {m["context"]["ip"] for m in messages} == {"10.0.0.1"}
    assert {m["context"]["library"]["name"] for m in messages} == {"analytics-python"}

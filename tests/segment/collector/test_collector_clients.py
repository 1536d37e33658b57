"""Other real Segment clients through the collector into the warehouse, every message once.

Segment's own Python library is in test_collector_library.py and analytics.js (in a
browser) in test_collector_browser.py. Here: ``@segment/analytics-node`` (installed from
the npm registry by the test setup, run by Node) and ``rudder-sdk-python`` (RudderStack's
fork of Segment's library; gzip on by default, traits in ``context.traits``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from segloop.segment.archive.files import read_all_messages
from segloop.segment.archive.loader import load_archive
from segloop.segment.collector.app import serve_in_thread
from segloop.warehouses import Warehouse
from tests.requirements import missing
from tests.segment.collector.npm_packages import npm_package

KEY = "wk_clients"
EVENTS = 1_013  # not a multiple of any flush size
USERS = 40


def count(wh: Warehouse, schema: str, table: str) -> int:
    return int(wh.sql(f'SELECT COUNT(*) AS n FROM {schema}."{table}"').to_pyarrow()["n"][0].as_py())


NODE_SENDER = """
const { Analytics } = require(process.argv[1]);
const analytics = new Analytics({ writeKey: process.argv[2], host: process.argv[3],
                                  flushAt: 50, flushInterval: 100, maxRetries: 3 });
const failures = [];
analytics.on('error', (err) => failures.push(String(err && (err.reason || err.message || err))));
const total = Number(process.argv[4]), users = Number(process.argv[5]);
const sent = { track: 0, identify: 0, page: 0, group: 0 };
for (let i = 0; i < total; i++) {
  const userId = `user-${i % users}`;
  switch (i % 4) {
    case 0: analytics.identify({ userId, traits: { email: `${userId}@example.com`, logins: i } }); sent.identify++; break;
    case 1: analytics.page({ userId, category: 'Docs', name: 'Home', properties: { path: `/p/${i}` } }); sent.page++; break;
    case 2: analytics.group({ userId, groupId: `g${i % 7}`, traits: { name: 'Acme' } }); sent.group++; break;
    default: analytics.track({ userId, event: 'Order Completed', properties: { revenue: i / 10 } }); sent.track++;
  }
}
analytics.closeAndFlush({ timeout: 60000 }).then(() => {
  console.log(JSON.stringify({ sent, failures }));
});
"""


@pytest.mark.slow
def test_segment_analytics_node_lands_every_message_once(tmp_path: Path):
    node = shutil.which("node")
    if node is None:
        missing("Node.js (`node`) is not on PATH; the client tests run Segment's JS libraries with it")
    package = npm_package("@segment/analytics-node")
    with serve_in_thread({KEY: "backend"}, tmp_path / "collector") as running:
        done = subprocess.run([node, "-e", NODE_SENDER, str(package), KEY, running.url, str(EVENTS), str(USERS)],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["failures"] == []
        assert running.stats["accepted"] == EVENTS and running.stats["dropped"] == {}
    messages = read_all_messages(tmp_path / "collector" / "segment-logs")
    assert len({m["messageId"] for m in messages}) == len(messages) == EVENTS
    assert {m["context"]["library"]["name"] for m in messages} == {"@segment/analytics-node"}
    sent = report["sent"]
    with Warehouse.duckdb(tmp_path / "wh.duckdb") as wh:
        assert load_archive(wh, tmp_path / "collector").messages == EVENTS
        assert count(wh, "backend", "identifies") == sent["identify"]
        assert count(wh, "backend", "pages") == sent["page"]
        assert count(wh, "backend", "groups") == sent["group"]
        assert count(wh, "backend", "tracks") == count(wh, "backend", "order_completed") == sent["track"]
        users = wh.to_arrow(wh.table("users", "backend")).to_pylist()
        latest = {f"user-{i % USERS}": i for i in range(0, EVENTS, 4)}  # identify is every 4th call
        assert {u["id"]: (u["email"], u["logins"]) for u in users} == {
            user: (f"{user}@example.com", i) for user, i in latest.items()}
        assert {"context_library_name", "context_library_version", "received_at", "sent_at",
                "original_timestamp", "timestamp", "revenue", "event_text"} <= set(
            wh.table("order_completed", "backend").columns)


def test_rudder_sdk_python_with_gzip_lands_every_message_once(tmp_path: Path):
    rudder = pytest.importorskip("rudderstack.analytics.client")
    errors: list[Exception] = []
    sent = {"track": 0, "identify": 0, "page": 0, "screen": 0, "group": 0, "alias": 0}
    with serve_in_thread({KEY: "app"}, tmp_path / "collector") as running:
        client = rudder.Client(KEY, host=running.url, gzip=True, upload_interval=0.05,
                               max_queue_size=EVENTS + 10, on_error=lambda e, batch: errors.append(e))
        kinds = ("track", "identify", "page", "screen", "group", "alias")
        for i in range(EVENTS):
            user = f"user-{i % USERS}"
            kind = kinds[i % len(kinds)]
            if kind == "track":
                ok, _ = client.track(user, "Order Completed", {"revenue": i / 10})
            elif kind == "identify":
                ok, _ = client.identify(user, {"email": f"{user}@example.com", "plan": "pro"})
            elif kind == "page":
                ok, _ = client.page(user, "Docs", "Home", {"path": f"/p/{i}"})
            elif kind == "screen":
                ok, _ = client.screen(user, "App", "Settings")
            elif kind == "group":
                ok, _ = client.group(user, f"g{i % 5}", {"name": "Acme"})
            else:
                ok, _ = client.alias(f"prev-{i}", user)
            assert ok
            sent[kind] += 1
        client.flush()
        client.join()
        assert errors == []
        assert running.stats["accepted"] == EVENTS and running.stats["dropped"] == {}
    messages = read_all_messages(tmp_path / "collector" / "segment-logs")
    assert len({m["messageId"] for m in messages}) == len(messages) == EVENTS
    with Warehouse.duckdb(tmp_path / "wh.duckdb") as wh:
        assert load_archive(wh, tmp_path / "collector").messages == EVENTS
        for kind, table in (("identify", "identifies"), ("page", "pages"), ("screen", "screens"),
                            ("group", "groups"), ("alias", "aliases"), ("track", "tracks")):
            assert count(wh, "app", table) == sent[kind], table
        # RudderStack puts identify traits in context.traits: Segment's schema keeps them
        # as identifies.context_traits_*, and `users` gets no trait columns from them.
        identifies = wh.to_arrow(wh.table("identifies", "app")).to_pylist()
        assert all(r["context_traits_email"] == f"{r['user_id']}@example.com" for r in identifies)
        assert "email" not in wh.table("identifies", "app").columns
        users = wh.to_arrow(wh.table("users", "app")).to_pylist()
        assert {u["id"] for u in users} == {r["user_id"] for r in identifies}
        assert not {"email", "plan", "context_traits_email"} & set(wh.table("users", "app").columns)

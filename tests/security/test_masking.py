"""One masking rule for URLs and DSNs, applied at every place text is shown or kept.

The end-to-end probe (a password in `endpoint:`, through a real run's console, history,
report and UI) is in test_probes.py; these pin the rule itself and each sink.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from segloop.alerts import Alert, payload
from segloop.masking import Redactor, mask_log_records, mask_text
from segloop.segment.send.client import Client
from segloop.store import NodeRunRecord, RunStore
from segloop.warehouses.config import redact
from segloop.warehouses.pyspark import PySparkConfig
from segloop.web.templating import environment


@pytest.mark.parametrize("text, shown", [
    ("http://user:pass@host/v1", "http://[secure]@host/v1"),
    ("retrying https://u:p@ss@h.example:8443/x?y=1", "retrying https://[secure]@h.example:8443/x?y=1"),
    ("postgresql://analytics@db:5432/shop", "postgresql://[secure]@db:5432/shop"),
    ("https://h/hook?token=abc&page=2#top", "https://h/hook?token=[secure]&page=2#top"),
    ("s3://b/k?X-Amz-Credential=AK%2F1&X-Amz-Signature=ff00", "s3://b/k?X-Amz-Credential=[secure]&X-Amz-Signature=[secure]"),
    ("https://acct.blob.core.windows.net/c?sv=2024&sig=Zm9v%3D", "https://acct.blob.core.windows.net/c?sv=2024&sig=[secure]"),
    ("sc://spark:15002/;token=abc;user_id=me", "sc://spark:15002/;token=[secure];user_id=me"),
    ("host=db port=5432 password=hunter2 user=me", "host=db port=5432 password=[secure] user=me"),
    ('<a href="https://h/?a=1&amp;api_key=zz">', '<a href="https://h/?a=1&amp;api_key=[secure]">'),
    ('{"url": "http://me:pw@h/"}', '{"url": "http://[secure]@h/"}'),
])
def test_credentials_in_urls_and_dsns_are_masked(text: str, shown: str) -> None:
    assert mask_text(text) == shown


@pytest.mark.parametrize("text", [
    "select * from t where key=2 and monkey=1",  # SQL and prose: only a DSN's password= is a secret
    "mail alice@example.com about run 20261205T1301",
    "https://api.segment.io/v1/batch?page=2",
    "token=abc in a sentence",
    "node `rfm`: 12 rows rejected",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert mask_text(text) == text


def test_the_segment_clients_repr_masks_its_endpoint() -> None:
    client = Client("wk_abcdef", host="http://user:s3cret@127.0.0.1:9/")
    try:
        assert "s3cret" not in repr(client) and "http://[secure]@127.0.0.1:9/v1/batch" in repr(client)
    finally:
        client.shutdown()


def test_run_history_keeps_no_credentials(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "state.db")
    run_id = store.start_run("p", "p.yml", "default", False, "cli")
    store.record_node(run_id, NodeRunRecord(node="n", type="segment", status="failed", rows=1, seconds=0.1,
                                            error="cannot reach http://u:s3cret@h/",
                                            metrics={"url": "https://h/?token=s3cret"}))
    store.finish_run(run_id, "failed", "node `n`: cannot reach http://u:s3cret@h/")
    store.close()
    db = sqlite3.connect(tmp_path / "state.db")
    rows = [str(row) for table in ("runs", "node_runs") for row in db.execute(f"select * from {table}")]
    db.close()
    assert "s3cret" not in "".join(rows) and "[secure]" in "".join(rows)


def test_templates_of_the_report_and_the_ui_mask_every_value() -> None:
    html = environment().from_string("<p>{{ error }}</p><p>{{ chart }}</p>").render(
        error="cannot reach http://u:s3cret@h/", chart=__import__("markupsafe").Markup("<b>https://h/?sig=s3cret</b>"))
    assert html == "<p>cannot reach http://[secure]@h/</p><p><b>https://h/?sig=[secure]</b></p>"


def test_alert_messages_mask_urls() -> None:
    text = payload([Alert("failure", "pipeline `p`: node `n`: cannot reach http://u:s3cret@h/")])["text"]
    assert "s3cret" not in text and "http://[secure]@h/" in text


def test_warehouse_messages_mask_urls() -> None:
    assert redact("cannot start sc://h:15002/;token=s3cret: refused", None) == "cannot start sc://h:15002/;token=[secure]: refused"
    config = PySparkConfig(type="pyspark", connect_url="sc://admin:s3cret@spark:15002")
    assert config.describe() == "Spark Connect at sc://[secure]@spark:15002"


def test_redactor_masks_secret_values_and_urls() -> None:
    redactor = Redactor(["wk_live_123456"])
    assert redactor.text("key wk_live_123456 at http://u:p@h/") == "key [secure] at http://[secure]@h/"


def test_log_records_of_segloop_modules_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    mask_log_records()
    mask_log_records()  # twice is once
    with caplog.at_level(logging.WARNING):
        logging.getLogger("segloop.segment").warning("Segment endpoint %s: HTTP 503", "http://u:s3cret@h/")
        logging.getLogger("segloop.a_module_written_later").warning("at https://h/?token=%s", "s3cret")
        logging.getLogger("someone.else").warning("http://u:theirs@h/")
    assert [r.getMessage() for r in caplog.records] == [
        "Segment endpoint http://[secure]@h/: HTTP 503", "at https://h/?token=[secure]", "http://u:theirs@h/"]

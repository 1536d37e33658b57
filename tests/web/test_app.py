"""`segloop ui` pages through Starlette's test client: the app calls Pipeline and RunStore."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from segloop.config import Workspace
from segloop.errors import SegloopError
from segloop.schedule import BackgroundRuns
from segloop.segment.collector import RunningCollector
from segloop.store import RunStore
from segloop.web.app import create_app, ui_token
from tests.web.helpers import (
    DEMO_PIPELINE,
    RFM_PIPELINE,
    WRITE_KEY,
    copy_workspace,
    demo_template,  # noqa: F401 - fixture
    fakes,  # noqa: F401 - fixture
)

LOCAL = "http://127.0.0.1:8765"


@pytest.fixture
def workspace(demo_template: Path, tmp_path: Path, fakes: None) -> Workspace:  # noqa: F811
    root = copy_workspace(demo_template, tmp_path / "ws", {"demo": DEMO_PIPELINE, "shop": RFM_PIPELINE})
    (root / "pipelines" / "broken.yml").write_text("name: broken\nnodes:\n  a:\n    type: nope\n")
    return Workspace.load(root)


@pytest.fixture
def runs(workspace: Workspace) -> Iterator[BackgroundRuns]:
    runs = BackgroundRuns(workspace)
    yield runs
    runs.join(timeout=60)  # no run thread may outlive its test


@pytest.fixture
def client(workspace: Workspace, runs: BackgroundRuns) -> TestClient:
    return TestClient(create_app(workspace, runs=runs), base_url=LOCAL)


def wait_for_run(workspace: Workspace, pipeline: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        store = RunStore(workspace.state_dir / "state.db")
        runs = store.list_runs(pipeline, 1)
        store.close()
        if runs and runs[0].status != "running":
            return runs[0].id
        time.sleep(0.1)
    raise AssertionError(f"no finished run of {pipeline} after {timeout}s")


def test_index_lists_pipelines_and_bad_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert 'href="/pipelines/demo"' in page.text and 'href="/pipelines/shop"' in page.text
    assert "unknown node type `nope`" in page.text  # the broken file is shown, not hidden


def test_run_now_runs_in_background_and_the_report_is_served(client: TestClient, workspace: Workspace) -> None:
    before = client.get("/pipelines/shop")
    assert 'data-chart="dag"' in before.text and "No runs yet" in before.text
    started = client.post("/pipelines/shop/run", follow_redirects=False)
    assert started.status_code == 303 and started.headers["location"] == "/pipelines/shop?started=1"
    run_id = wait_for_run(workspace, "shop")
    page = client.get("/pipelines/shop").text
    row = re.search(rf'<tr data-run-id="{run_id}" data-status="(\w+)">\s*<td>.*?</td>\s*<td>(\w+)</td>', page, re.S)
    assert row is not None and row.groups() == ("success", "ui")
    report = client.get(f"/runs/{run_id}/report")
    assert report.status_code == 200 and 'data-chart="rfm-grid"' in report.text
    run_page = client.get(f"/runs/{run_id}")
    assert 'id="open-report"' in run_page.text


def test_node_table_shows_the_first_100_rows(client: TestClient, workspace: Workspace) -> None:
    client.post("/pipelines/shop/run")
    run_id = wait_for_run(workspace, "shop")
    store = RunStore(workspace.state_dir / "state.db")
    rows = {n.node: n.rows for n in store.get_run(run_id).nodes}["rfm"]
    store.close()
    assert rows is not None and rows > 100  # the demo data gives more rows than one page
    page = client.get("/pipelines/shop/nodes/rfm/table")
    assert page.status_code == 200
    body = page.text.split('<tbody>', 1)[1]
    assert body.count("<tr>") == 100
    assert f"first 100 of {rows} rows" in page.text
    extra = client.get("/pipelines/shop/nodes/rfm/table?suffix=profiles")
    assert extra.status_code == 404 and "main.shop__rfm__profiles does not exist yet" in extra.text
    assert "not a table suffix" in client.get("/pipelines/shop/nodes/rfm/table?suffix=a;drop").text
    unknown = client.get("/pipelines/shop/nodes/nope/table")
    assert unknown.status_code == 404 and "has no node `nope`" in unknown.text
    missing = client.get("/pipelines/nope")
    assert missing.status_code == 404 and "no pipeline file `nope`" in missing.text


def test_segment_preview_sends_nothing_and_shows_redacted_payloads(
    client: TestClient, workspace: Workspace, fakes: RunningCollector,  # noqa: F811
) -> None:
    client.post("/pipelines/demo/run")
    first = wait_for_run(workspace, "demo")
    received = fakes.stats["received"]
    store = RunStore(workspace.state_dir / "state.db")
    metrics = store.get_run(first).nodes[-1].metrics
    sent, rows = metrics["sent"], metrics["rows"]
    store.close()
    assert received == sent > 0
    # A new event name changes every row's payload: the next run would send them all again.
    pipeline_file = workspace.root / "pipelines" / "demo.yml"
    pipeline_file.write_text(pipeline_file.read_text().replace("event: RFM Segment", "event: RFM Segment v2"))
    page = client.post("/pipelines/demo/nodes/to_segment/preview")
    assert page.status_code == 200
    assert page.text.count('<pre class="payload">') >= 2
    assert "RFM Segment v2" in page.text
    assert WRITE_KEY not in page.text
    counts = {k: int(v.replace(",", "")) for k, v in
              re.findall(r'<th>(new|changed)</th><td class="num">([\d,]+)</td>', page.text)}
    assert counts == {"new": 0, "changed": rows}  # the real node's counts of the next run
    assert fakes.stats["received"] == received  # the preview sent nothing
    store = RunStore(workspace.state_dir / "state.db")
    runs = store.list_runs("demo", 5)
    store.close()
    assert [r.id for r in runs] == [first]  # a preview is not a run
    not_segment = client.post("/pipelines/demo/nodes/rfm/preview")
    assert "`rfm` is not a Segment node of pipeline `demo` (Segment nodes: to_segment)" in not_segment.text


def test_loopback_ui_refuses_foreign_hosts_and_cross_origin_posts(client: TestClient) -> None:
    assert client.get("/", headers={"host": "evil.example"}).status_code == 403
    refused = client.post("/pipelines/shop/run", headers={"origin": "http://evil.example"}, follow_redirects=False)
    assert refused.status_code == 403


def test_token_required_off_loopback(workspace: Workspace) -> None:
    with pytest.raises(SegloopError, match="needs a token"):
        create_app(workspace, host="0.0.0.0")
    token = ui_token("0.0.0.0", {"SEGLOOP_UI_TOKEN": "t0ken-from-env"})
    assert token == "t0ken-from-env"
    assert ui_token("127.0.0.1", {"SEGLOOP_UI_TOKEN": "x"}) is None
    assert len(ui_token("10.1.2.3", {}) or "") >= 24
    app = create_app(workspace, host="0.0.0.0", token=token)
    anonymous = TestClient(app, base_url="http://10.1.2.3:8765")
    assert anonymous.get("/").status_code == 401
    assert anonymous.get("/?token=wrong").status_code == 401
    assert anonymous.get("/", headers={"authorization": f"Bearer {token}"}).status_code == 200
    browser = TestClient(app, base_url="http://10.1.2.3:8765")
    login = browser.get(f"/pipelines/shop?token={token}", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/pipelines/shop"
    assert browser.get("/pipelines/shop").status_code == 200  # the cookie now carries the token


def test_a_run_that_cannot_start_is_explained_on_the_page(client: TestClient, workspace: Workspace,
                                                          runs: BackgroundRuns) -> None:
    text = RFM_PIPELINE.replace("name: shop\nwarehouse: default", "name: nowh\nwarehouse: nope")
    (workspace.root / "pipelines" / "nowh.yml").write_text(text)
    # Not following the redirect: a GET of the page racing the failing run would show (and
    # so consume) the message before the test looks.
    client.post("/pipelines/nowh/run", follow_redirects=False)
    runs.join(timeout=60)
    page = client.get("/pipelines/nowh").text
    assert 'class="flash bad"' in page and "warehouse `nope` is not defined in segloop.yml" in page
    assert 'data-status="failed"' in page  # and the attempt is in the history

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
from segloop.scheduler import BackgroundRuns
from segloop.segment.collector.app import RunningCollector
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


# -- the CSRF guard: every state-changing request proves it comes from the UI's own pages ----

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"


def csrf_token_of(page: str) -> str:
    found = re.findall(r'<input type="hidden" name="csrf_token" value="([^"]+)">', page)
    assert found, "the page has no POST form with a CSRF token"
    return found[0]


def state_changing_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path) of every route that takes more than GET/HEAD, path parameters filled in."""
    starlette_app = client.app
    while not hasattr(starlette_app, "routes"):  # the middlewares (headers, Guard) in front of it
        starlette_app = starlette_app.app  # type: ignore[attr-defined]
    out = []
    for route in starlette_app.routes:
        for method in sorted(set(getattr(route, "methods", None) or ()) - {"GET", "HEAD"}):  # a Mount has none
            path = route.path.replace("{name}", "shop").replace("{node}", "rfm").replace("{run_id}", "x")
            out.append((method, re.sub(r"\{[^}]+\}", "x", path)))
    return out


@pytest.mark.parametrize("headers, why", [
    ({"origin": "null"}, "another origin (null)"),
    ({"origin": "http://evil.example"}, "another origin (http://evil.example)"),
    ({"origin": "http://127.0.0.1:9999"}, "another origin"),  # another local port is another origin
    ({"origin": "file://"}, "another origin"),
    ({"sec-fetch-site": "cross-site"}, "Sec-Fetch-Site: cross-site"),
    ({"sec-fetch-site": "same-site"}, "Sec-Fetch-Site: same-site"),
    ({"origin": LOCAL, "sec-fetch-site": "cross-site"}, "Sec-Fetch-Site: cross-site"),
])
def test_every_state_changing_route_refuses_requests_from_other_pages(
        client: TestClient, workspace: Workspace, runs: BackgroundRuns, headers: dict[str, str], why: str) -> None:
    routes = state_changing_routes(client)
    assert ("POST", "/pipelines/shop/run") in routes and ("POST", "/pipelines/shop/nodes/rfm/preview") in routes
    token = csrf_token_of(client.get("/pipelines/shop").text)  # even with the right token
    for method, path in routes:
        answer = client.request(method, path, headers=headers, data={"csrf_token": token}, follow_redirects=False)
        assert answer.status_code == 403, (method, path)
        assert why in answer.text and "use the buttons of the UI's own pages" in answer.text
    runs.join(60)
    store = RunStore(workspace.state_dir / "state.db")
    assert store.list_runs("shop", 5) == []
    store.close()


def test_a_browser_post_needs_the_pages_csrf_token(client: TestClient, workspace: Workspace) -> None:
    """Browsers that send no Origin nor Sec-Fetch-Site (old ones) are covered by the token."""
    browser = {"user-agent": BROWSER}
    for data in ({}, {"csrf_token": "guessed"}):
        refused = client.post("/pipelines/shop/run", headers=browser, data=data, follow_redirects=False)
        assert refused.status_code == 403 and "reload the page and try again" in refused.text
    page = client.get("/pipelines/shop", headers=browser).text
    token = csrf_token_of(page)
    assert f'<meta name="csrf-token" content="{token}">' in page  # for scripts: the X-CSRF-Token header
    same_origin = {**browser, "origin": LOCAL, "sec-fetch-site": "same-origin"}
    started = client.post("/pipelines/shop/run", headers=same_origin, data={"csrf_token": token},
                          follow_redirects=False)
    assert started.status_code == 303 and started.headers["location"] == "/pipelines/shop?started=1"
    wait_for_run(workspace, "shop")
    by_header = client.post("/pipelines/shop/nodes/rfm/preview", headers={**same_origin, "x-csrf-token": token})
    assert by_header.status_code == 200 and "is not a Segment node" in by_header.text  # the route ran


def test_every_post_form_of_the_ui_carries_the_token_and_the_report_does_not(
        client: TestClient, workspace: Workspace) -> None:
    client.post("/pipelines/demo/run")
    run_id = wait_for_run(workspace, "demo")
    pages = [client.get(path).text for path in ("/", "/pipelines/demo", "/pipelines/demo/nodes/to_segment/preview",
                                                f"/runs/{run_id}")]
    token = csrf_token_of(pages[1])
    for page in pages:
        for form in re.findall(r"<form\b[^>]*>.*?</form>", page, re.S):
            if 'method="post"' in form:
                assert f'name="csrf_token" value="{token}"' in form
    assert token not in client.get(f"/runs/{run_id}/report").text  # a file people share


def test_scripts_without_a_browser_post_as_before(client: TestClient, workspace: Workspace) -> None:
    """curl and scripts (no Origin, no Sec-Fetch-*, no browser user agent) cannot be steered by a page."""
    answer = client.post("/pipelines/shop/run", headers={"user-agent": "curl/8.5.0"}, follow_redirects=False)
    assert answer.status_code == 303
    wait_for_run(workspace, "shop")


def test_the_guard_reads_at_most_a_bounded_form(client: TestClient) -> None:
    big = {"user-agent": BROWSER, "content-type": "application/x-www-form-urlencoded"}
    answer = client.post("/pipelines/shop/run", headers=big, content=b"x=" + b"a" * 4_000_001)
    assert answer.status_code == 413


def test_off_loopback_the_bearer_token_also_proves_the_request(workspace: Workspace, runs: BackgroundRuns) -> None:
    app = create_app(workspace, host="0.0.0.0", token="t0ken-for-scripts", runs=runs)
    remote = TestClient(app, base_url="http://10.1.2.3:8765")
    bearer = {"authorization": "Bearer t0ken-for-scripts", "user-agent": BROWSER}
    assert remote.post("/pipelines/shop/run", headers=bearer, follow_redirects=False).status_code == 303
    assert remote.post("/pipelines/shop/run", headers={**bearer, "origin": "null"}).status_code == 403
    assert remote.post("/pipelines/shop/run", headers={"user-agent": BROWSER}).status_code == 401
    wait_for_run(workspace, "shop")


def test_pipelines_are_served_by_name_only(client: TestClient, workspace: Workspace) -> None:
    for name in ("segloop.yml", ".env", "broken", "nope"):
        assert client.get(f"/pipelines/{name}").status_code == 404
    assert "unknown node type `nope`" in client.get("/pipelines/broken").text  # its problem, at least
    (workspace.root / "pipelines" / "renamed.yml").write_text(RFM_PIPELINE.replace("name: shop", "name: other"))
    assert client.get("/pipelines/other").status_code == 200
    moved = client.get("/pipelines/renamed")  # a file name is not a pipeline name
    assert moved.status_code == 404 and "renamed.yml holds pipeline `other`" in moved.text


def test_a_pipeline_name_used_by_two_files_is_shown_and_not_served(client: TestClient, workspace: Workspace) -> None:
    (workspace.root / "pipelines" / "shop2.yml").write_text(RFM_PIPELINE)
    index = client.get("/").text
    assert index.count("pipeline name `shop` is used by") == 2  # on both files' rows
    page = client.get("/pipelines/shop")
    assert page.status_code == 404 and "shop.yml and " in page.text and "shop2.yml" in page.text
    assert client.post("/pipelines/shop/run").status_code == 404


def test_values_from_the_warehouse_are_escaped_in_the_ui(client: TestClient, workspace: Workspace) -> None:
    (workspace.root / "pipelines" / "xss.yml").write_text(
        "name: xss\nnodes:\n  rows:\n    type: sql\n    materialize: table\n"
        "    sql: select '<script>alert(1)</script>' as user_id, '<img src=x onerror=alert(2)>' as trait\n")
    client.post("/pipelines/xss/run")
    wait_for_run(workspace, "xss")
    page = client.get("/pipelines/xss/nodes/rows/table").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    assert "<img src=x" not in page

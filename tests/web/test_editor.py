"""The pipeline editor: validate's errors as you type, the DAG, dry-run previews, and safe saving."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from segloop.cli import app as cli
from segloop.config import Workspace
from segloop.pipeline import Pipeline
from segloop.scheduler import BackgroundRuns
from segloop.web import editor
from segloop.web.app import create_app
from tests.web.real import SHOP, copy_history, history  # noqa: F401 - fixture

pytestmark = pytest.mark.slow
LOCAL = "http://127.0.0.1:8765"
ORIGIN = {"Origin": LOCAL}


@pytest.fixture
def workspace(history: Path, tmp_path: Path) -> Workspace:  # noqa: F811
    return copy_history(history, tmp_path / "ws")


@pytest.fixture
def client(workspace: Workspace) -> TestClient:
    """A client that posts as the editor page's script does: with the page's CSRF token."""
    client = TestClient(create_app(workspace, runs=BackgroundRuns(workspace)), base_url=LOCAL)
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/pipelines/shop/edit").text)
    assert token is not None
    client.headers["X-CSRF-Token"] = token.group(1)
    return client


def shop_file(workspace: Workspace) -> Path:
    return workspace.pipelines_dir / "shop.yml"


def base_of(page: str) -> str:
    found = re.search(r'name="base" value="([0-9a-f]{64})"', page)
    assert found is not None
    return found.group(1)


BROKEN = (SHOP.replace("    input: orders\n    horizon: 120 days\n", "    input: order\n    horizon: 120 days\n")
          .replace("    k: 3\n", "    k: 3\n    colour: blue\n")
          .replace("  events:\n    type: sql\n", "  events:\n    type: sqll\n"))


def test_the_page_holds_the_file_text_exactly(client: TestClient, workspace: Workspace) -> None:
    page = client.get("/pipelines/shop/edit")
    assert page.status_code == 200
    textarea = re.search(r'<textarea name="text"[^>]*>\n(.*?)</textarea>', page.text, re.S)
    assert textarea is not None and html.unescape(textarea.group(1)) == shop_file(workspace).read_text()
    assert 'data-chart="dag"' in page.text and "pipeline `shop`, 9 nodes" in page.text


def test_checks_give_the_same_file_line_errors_as_segloop_validate(
    client: TestClient, workspace: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    found = client.post("/pipelines/shop/edit/check", data={"text": BROKEN}, headers=ORIGIN).json()
    assert found["parses"] is True and found["dag"] is None
    # The same text saved as the file, checked by the CLI from the workspace folder.
    shop_file(workspace).write_text(BROKEN)
    monkeypatch.chdir(workspace.root)
    monkeypatch.setenv("COLUMNS", "400")
    result = CliRunner().invoke(cli, ["validate", "pipelines/shop.yml"])
    assert result.exit_code == 1
    cli_errors = [line.removeprefix("error: ") for line in result.output.splitlines() if line.startswith("error: ")]
    assert [e["text"] for e in found["errors"]] == cli_errors
    assert len(cli_errors) == 3 and all(e.startswith("pipelines/shop.yml:") for e in cli_errors)
    assert {e["line"] for e in found["errors"]} == {BROKEN.splitlines().index(text) + 1 for text in (
        "    input: order", "    colour: blue", "    type: sqll")}


def test_the_dag_is_redrawn_from_the_text(client: TestClient) -> None:
    text = SHOP + "\n  top_customers:   # a new node\n    type: sql\n    input: rfm\n    sql: select * from rfm where r_score = 5\n"
    found = client.post("/pipelines/shop/edit/check", data={"text": text}, headers=ORIGIN).json()
    assert found["errors"] == []
    assert 'data-node="top_customers" data-status="not run"' in found["dag"]
    assert 'data-node="rfm" data-status="success"' in found["dag"]  # statuses of the last run
    assert {"name": "top_customers", "type": "sql"} in found["nodes"]


def test_bad_yaml_is_reported_at_its_line_and_never_saved(client: TestClient, workspace: Workspace) -> None:
    before = shop_file(workspace).read_text()
    text = SHOP.replace("    k: 3\n", "    k: [3\n")
    found = client.post("/pipelines/shop/edit/check", data={"text": text}, headers=ORIGIN).json()
    assert found["parses"] is False
    opened = text.splitlines().index("    k: [3") + 1
    first = found["errors"][0]
    assert first["text"] == f"pipelines/shop.yml:{first['line']}: {first['message']}"
    assert first["message"].startswith("invalid YAML") and opened <= first["line"] <= opened + 2
    base = base_of(client.get("/pipelines/shop/edit").text)
    for allow in ("0", "1"):  # not even with "save with errors"
        saved = client.post("/pipelines/shop/edit", data={"text": text, "base": base, "allow_errors": allow},
                            headers=ORIGIN, follow_redirects=False)
        assert saved.status_code == 422 and "Not saved: the text is not a pipeline file" in saved.text
        assert "k: [3" in html.unescape(saved.text)  # the draft is kept on the page
    assert shop_file(workspace).read_text() == before


def test_saving_keeps_the_text_as_typed_comments_included(client: TestClient, workspace: Workspace) -> None:
    base = base_of(client.get("/pipelines/shop/edit").text)
    text = SHOP.replace("    k: 3\n", "    k: 4                  # four groups read better in the CRM\n")
    sent = text.replace("\n", "\r\n")  # what a browser posts from a textarea
    saved = client.post("/pipelines/shop/edit", data={"text": sent, "base": base}, headers=ORIGIN, follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == "/pipelines/shop/edit?saved=1&errors=0"
    assert shop_file(workspace).read_text() == text  # byte for byte: comments, blank lines, order
    assert Pipeline.load("shop", workspace).config.nodes["clusters"].k == 4  # type: ignore[attr-defined]
    page = client.get(saved.headers["location"]).text
    assert "Saved pipelines/shop.yml." in page
    assert not list(workspace.pipelines_dir.glob(".*.tmp"))  # no temporary file left behind


def test_errors_are_saved_only_when_asked_and_the_page_says_so(client: TestClient, workspace: Workspace) -> None:
    before = shop_file(workspace).read_text()
    base = base_of(client.get("/pipelines/shop/edit").text)
    refused = client.post("/pipelines/shop/edit", data={"text": BROKEN, "base": base}, headers=ORIGIN)
    assert refused.status_code == 422 and "Not saved: 3 errors" in refused.text
    assert shop_file(workspace).read_text() == before
    saved = client.post("/pipelines/shop/edit", data={"text": BROKEN, "base": base, "allow_errors": "1"},
                        headers=ORIGIN, follow_redirects=False)
    assert saved.status_code == 303
    assert shop_file(workspace).read_text() == BROKEN
    page = client.get(saved.headers["location"]).text
    assert "Saved pipelines/shop.yml with 3 errors: the pipeline cannot run until they are fixed." in html.unescape(
        re.sub(r"\s+", " ", page))


def test_a_file_changed_on_disk_since_the_page_opened_is_not_overwritten(client: TestClient, workspace: Workspace) -> None:
    base = base_of(client.get("/pipelines/shop/edit").text)
    shop_file(workspace).write_text(SHOP + "# edited in another window\n")
    saved = client.post("/pipelines/shop/edit", data={"text": SHOP.replace("k: 3", "k: 5"), "base": base},
                        headers=ORIGIN)
    assert saved.status_code == 409 and "changed on disk since this page opened it" in saved.text
    assert shop_file(workspace).read_text().endswith("# edited in another window\n")


def test_only_listed_pipeline_files_are_edited(client: TestClient, workspace: Workspace) -> None:
    workspace_file = (workspace.root / "segloop.yml").read_text()
    for name in ("segloop", "..", "%2E%2E%2Fsegloop", "nosuch"):
        assert client.get(f"/pipelines/{name}/edit").status_code == 404
        answer = client.post(f"/pipelines/{name}/edit", data={"text": "name: x\n", "base": "", "allow_errors": "1"},
                             headers=ORIGIN)
        assert answer.status_code == 404
    assert (workspace.root / "segloop.yml").read_text() == workspace_file
    # A pipeline is found by its file name or by its `name:`.
    (workspace.pipelines_dir / "renamed_file.yml").write_text(SHOP.replace("name: shop", "name: other_shop"))
    assert client.get("/pipelines/other_shop/edit").status_code == 200


def test_renaming_to_a_taken_name_is_an_error(client: TestClient) -> None:
    found = client.post("/pipelines/shop/edit/check", data={"text": SHOP.replace("name: shop", "name: segments")},
                        headers=ORIGIN).json()
    assert [e["text"] for e in found["errors"]] == [
        "pipelines/shop.yml:2: pipeline: `name` segments is already the pipeline in pipelines/segments.yml; pick another name"]


def test_preview_dry_runs_the_edited_node_and_writes_nothing(client: TestClient, workspace: Workspace) -> None:
    before = shop_file(workspace).read_text()
    with Pipeline.load("shop", workspace).connect() as warehouse:
        rows_before = warehouse.count(warehouse.table("shop__clusters"))
        tables_before = sorted(warehouse.list_tables())
    text = SHOP.replace("    k: 3\n", "    k: 5\n")
    result = client.post("/pipelines/shop/edit/preview", data={"text": text, "node": "clusters"}, headers=ORIGIN).json()
    assert "error" not in result, result
    assert result["total"] == rows_before and len(result["rows"]) == editor.SAMPLE_ROWS
    assert result["columns"][:3] == ["user_id", "cluster", "cluster_name"]
    assert {row[1] for row in result["rows"]} <= {"0", "1", "2", "3", "4"}
    assert ("k", "5") in [tuple(m) for m in result["metrics"]]  # the edited k, not the saved one
    assert shop_file(workspace).read_text() == before
    with Pipeline.load("shop", workspace).connect() as warehouse:
        assert sorted(warehouse.list_tables()) == tables_before
        assert warehouse.to_arrow(warehouse.table("shop__clusters")).column("cluster").to_pylist().count(4) == 0


def test_preview_of_a_segment_node_shows_what_it_would_send(client: TestClient) -> None:
    text = SHOP.replace("      segment: rfm_segment\n", "      segment: rfm_segment\n      rfm_score: score\n")
    result = client.post("/pipelines/shop/edit/preview", data={"text": text, "node": "rfm_to_segment"},
                         headers=ORIGIN).json()
    assert "error" not in result, result
    assert len(result["payloads"]) == editor.PAYLOAD_ROWS
    assert all('"score":' in p and '"rfm_segment":' in p for p in result["payloads"])
    metrics = dict(tuple(m) for m in result["metrics"])
    assert metrics["changed"] != "0"  # the new trait changes every row: all would be sent again


def test_preview_refuses_text_with_errors_and_unknown_nodes(client: TestClient) -> None:
    bad = client.post("/pipelines/shop/edit/preview", data={"text": BROKEN, "node": "rfm"}, headers=ORIGIN)
    assert bad.status_code == 422 and "fix the 3 error(s) above first" in bad.json()["error"]
    unknown = client.post("/pipelines/shop/edit/preview", data={"text": SHOP, "node": "nope"}, headers=ORIGIN)
    assert unknown.status_code == 422 and "has no node `nope`" in unknown.json()["error"]


def test_hostile_bodies_get_a_clear_answer(client: TestClient, workspace: Workspace) -> None:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9))
    found = client.post("/pipelines/shop/edit/check", data={"text": laughs}, headers=ORIGIN).json()
    assert "the alias *e here makes the file hold more than 250,000 values" in found["errors"][0]["text"]
    assert found["parses"] is False
    huge = client.post("/pipelines/shop/edit/check", content=b"text=" + b"x" * (editor.MAX_BODY + 10),
                       headers={**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"})
    assert huge.status_code == 413 and "over 2,000,000 bytes" in huge.json()["error"]


def test_every_editor_post_goes_through_the_guard(workspace: Workspace) -> None:
    before = shop_file(workspace).read_text()
    local = TestClient(create_app(workspace, runs=BackgroundRuns(workspace)), base_url=LOCAL)
    base = base_of(local.get("/pipelines/shop/edit").text)
    for path, data in (("/pipelines/shop/edit", {"text": "name: evil\n", "base": base, "allow_errors": "1"}),
                       ("/pipelines/shop/edit/check", {"text": SHOP}),
                       ("/pipelines/shop/edit/preview", {"text": SHOP, "node": "rfm"})):
        refused = local.post(path, data=data, headers={"Origin": "http://evil.example"})
        assert refused.status_code == 403, path
    # Off loopback, without the token: refused before any page code runs.
    remote = TestClient(create_app(workspace, host="0.0.0.0", token="s3cret-token",
                                   runs=BackgroundRuns(workspace)), base_url="http://10.0.0.5:8765")
    assert remote.get("/pipelines/shop/edit").status_code == 401
    answer = remote.post("/pipelines/shop/edit", data={"text": "name: evil\n", "base": base, "allow_errors": "1"},
                         headers={"Origin": "http://10.0.0.5:8765"})
    assert answer.status_code == 401
    assert shop_file(workspace).read_text() == before
    with_token = remote.post("/pipelines/shop/edit/check", data={"text": SHOP},
                             headers={"Origin": "http://10.0.0.5:8765", "Authorization": "Bearer s3cret-token"})
    assert with_token.status_code == 200 and with_token.json()["errors"] == []


def test_a_node_that_writes_when_it_runs_is_not_previewed(client: TestClient, workspace: Workspace) -> None:
    text = SHOP + "\n  source:\n    type: segment_source\n    schema: demo_shop\n    tables: [tracks]\n"
    answer = client.post("/pipelines/shop/edit/preview", data={"text": text, "node": "source"}, headers=ORIGIN)
    assert answer.status_code == 422
    assert "a `segment_source` node writes to the warehouse when it runs" in answer.json()["error"]
    with Pipeline.load("shop", workspace).connect() as warehouse:
        assert not any(name.startswith("shop__source") for name in warehouse.list_tables())


def test_a_broken_file_is_found_by_its_name_and_an_oversize_file_is_refused_unread(
    client: TestClient, workspace: Workspace
) -> None:
    # A file that does not validate is still opened by its `name:`, to be fixed.
    (workspace.pipelines_dir / "draft_file.yml").write_text(BROKEN.replace("name: shop", "name: draft"))
    page = client.get("/pipelines/draft/edit")
    assert page.status_code == 200 and "sqll" in html.unescape(page.text)
    # ... and its name is taken: renaming shop to it is an error naming that file.
    found = client.post("/pipelines/shop/edit/check", data={"text": SHOP.replace("name: shop", "name: draft")},
                        headers=ORIGIN).json()
    assert any("already the pipeline in pipelines/draft_file.yml" in e["text"] for e in found["errors"])
    # A huge file is refused with the size limit's message, never read whole (a sparse 4 GB file).
    huge = workspace.pipelines_dir / "huge.yml"
    with huge.open("wb") as handle:
        handle.truncate(4 * 1024**3)
    page = client.get("/pipelines/huge/edit")
    assert page.status_code == 404 and "bytes; segloop reads pipeline and workspace files up to" in html.unescape(page.text)
    assert client.get("/pipelines/shop/edit").status_code == 200  # the other files still open


def test_each_request_reads_the_pipeline_files_once(
    client: TestClient, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pipeline file is read and parsed per scan; a check or a save of a workspace with
    many pipelines must not pay for it twice (the name-clash check reuses the scan)."""
    scans: list[int] = []
    scan = type(workspace).scan_pipelines

    def counting(self: Workspace) -> list:
        scans.append(1)
        return scan(self)

    monkeypatch.setattr(type(workspace), "scan_pipelines", counting)
    found = client.post("/pipelines/shop/edit/check", data={"text": SHOP.replace("name: shop", "name: segments")},
                        headers=ORIGIN).json()
    assert "already the pipeline in pipelines/segments.yml" in found["errors"][0]["text"]
    assert len(scans) == 1
    scans.clear()
    assert client.get("/pipelines/shop/edit").status_code == 200 and len(scans) == 1

"""The report page when several requests build the same report at once (two tabs, a reload
while the run's own report is being written): every one gets the report, none an error."""

from __future__ import annotations

import threading

from starlette.testclient import TestClient

from segloop.config import Workspace
from segloop.pipeline import Pipeline
from segloop.scheduler import BackgroundRuns
from segloop.web.app import create_app

PIPELINE = """\
name: shop
nodes:
  totals:
    type: sql
    sql: select 1 as id, 'a' as label
"""


def test_concurrent_builds_of_one_report_all_succeed(make_workspace) -> None:
    root = make_workspace({"shop": PIPELINE})
    run = Pipeline.load(root / "pipelines" / "shop.yml").run()
    workspace = Workspace.load(root)
    app = create_app(workspace, runs=BackgroundRuns(workspace))
    answers: list[int] = []
    failures: list[str] = []
    together = threading.Barrier(4)

    def open_report() -> None:
        client = TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False)
        for _ in range(5):
            together.wait(30)  # the four requests of a round at the same moment
            answer = client.get(f"/runs/{run.run_id}/report?rebuild=1")  # each request writes the file
            answers.append(answer.status_code)
            if answer.status_code != 200:
                failures.append(answer.text[:300])

    threads = [threading.Thread(target=open_report) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == [] and answers == [200] * 20
    report = (root / ".segloop" / "runs" / run.run_id / "report.html").read_text()
    assert report.rstrip().endswith("</html>") and "shop" in report
    assert [p.name for p in (root / ".segloop" / "runs" / run.run_id).iterdir() if p.suffix == ".tmp"] == []

"""A workspace whose data tries to run script in the UI: shared by the CSP tests.

Every place a page prints workspace data gets markup: the pipeline's description (overview,
pipeline page, editor), a column name and cell values (the table page), and a node whose SQL
fails with the markup in DuckDB's error (pipeline page, run page, report). Each payload would
set ``window.__pwned`` if a browser ran it.
"""

from __future__ import annotations

from pathlib import Path

from segloop.config import Workspace
from segloop.pipeline import Pipeline
from segloop.store import RunStore

SCRIPT = '<script>window.__pwned = "script"</script>'
IMG = '<img src=x onerror="window.__pwned = 1">'
COLUMN = "<img src=y onerror=window.__pwned=2>"
TABLE = "<img src=z onerror=window.__pwned=3>"
STYLE = "<style>body { display: none }</style>"
PAYLOADS = (SCRIPT, IMG, COLUMN, TABLE, STYLE)

PIPELINE = f"""\
name: hostile
description: '{SCRIPT} {STYLE}'
nodes:
  notes:
    type: sql
    sql: |
      select 1 as id, '{SCRIPT}' as note, '{IMG}' as "{COLUMN}"
      union all select 2, '{STYLE}', 'ok'
  broken:
    type: sql
    input: notes
    sql: select * from "{TABLE}"
"""


def hostile_workspace(root: Path) -> Path:
    """The workspace at ``root``, run once: `notes` succeeded, `broken` failed, a report written."""
    (root / "pipelines").mkdir(parents=True, exist_ok=True)
    (root / "segloop.yml").write_text("warehouses:\n  default:\n    type: duckdb\n    path: .segloop/warehouse.duckdb\n")
    (root / "pipelines" / "hostile.yml").write_text(PIPELINE)
    result = Pipeline.load(root / "pipelines" / "hostile.yml").run()
    assert result.node("notes").status == "success", result.node("notes").error
    assert result.node("broken").status == "failed" and TABLE in (result.node("broken").error or "")
    return root


def last_run_id(workspace: Workspace) -> str:
    store = RunStore(workspace.state_dir / "state.db")
    try:
        return store.list_runs("hostile", 1)[0].id
    finally:
        store.close()

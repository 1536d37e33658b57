"""`segloop query`: a table that is never cut when piped, csv/json/markdown exports, --output FILE."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segloop.cli import app
from segloop.warehouses import DuckDBConfig, Warehouse

LONG = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15"


@pytest.fixture
def workspace(make_workspace, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workspace whose warehouse has `src.visits`: 120 rows, a long string, a NULL, awkward text."""
    root = make_workspace({})
    with Warehouse.connect(DuckDBConfig(), root) as wh:
        wh.raw_sql("create schema if not exists src")
        wh.raw_sql(f"""
            create table src.visits as
            select i as id, 'u' || i as user_id, '{LONG}' as user_agent,
                   1677 + i as orders, 1332.8812 * (i + 1) as revenue, 0.7341234 as probability,
                   case when i = 1 then null else 'a|b, "c"' end as note
            from range(120) as t(i)
        """)
    monkeypatch.chdir(root)
    return root


def query(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["query", *args], env={"COLUMNS": "80"})
    return result.exit_code, result.stdout, result.stderr


def test_a_piped_table_keeps_every_character_on_one_line(workspace: Path) -> None:
    code, out, _ = query("select user_id, user_agent, orders, revenue, probability, note from src.visits order by id limit 2")
    assert code == 0, out
    first = next(line for line in out.splitlines() if "u0 " in line)
    assert LONG in first  # not folded to 80 columns, not cut
    assert "1677" in first and "1332.88" in first and "0.734123" in first
    assert all(len(line) == len(first) for line in out.splitlines() if line.startswith(("│", "┃")))


def test_numbers_have_one_style(workspace: Path) -> None:
    code, out, _ = query("select orders, revenue from src.visits order by id limit 2")
    assert code == 0
    row = next(line for line in out.splitlines() if "1677" in line)
    assert "1332.88" in row and "," not in row.replace("│", "")  # no 1,332.88 next to 1677
    assert row.index("1677") > row.index("│") + 2  # numbers are right-aligned


def test_table_shows_50_rows_and_says_there_are_more(workspace: Path) -> None:
    code, out, err = query("select id from src.visits order by id")
    assert code == 0
    shown = [line for line in out.splitlines() if line.startswith("│")]
    assert len(shown) == 50
    assert "showed the first 50 rows" in err and "--limit" in err
    code, out, err = query("select id from src.visits where false")
    assert code == 0 and "id" in out and "(no rows)" in err
    code, out, err = query("select id from src.visits order by id", "--limit", "200")
    assert len([line for line in out.splitlines() if line.startswith("│")]) == 120 and "first" not in err


def test_csv_has_every_row_full_precision_and_empty_nulls(workspace: Path) -> None:
    code, out, _ = query("select id, revenue, probability, note from src.visits order by id", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 120  # exports are not limited to 50
    assert rows[0] == {"id": "0", "revenue": "1332.8812", "probability": "0.7341234", "note": 'a|b, "c"'}
    assert rows[1]["note"] == ""


def test_json_is_an_array_of_objects(workspace: Path) -> None:
    code, out, _ = query("select id, user_id, probability, note from src.visits order by id", "-f", "json", "--limit", "2")
    assert code == 0
    assert json.loads(out) == [
        {"id": 0, "user_id": "u0", "probability": 0.7341234, "note": 'a|b, "c"'},
        {"id": 1, "user_id": "u1", "probability": 0.7341234, "note": None},
    ]
    code, out, _ = query("select id from src.visits where false", "-f", "json")
    assert code == 0 and json.loads(out) == []


def test_markdown_table_escapes_pipes_and_aligns_numbers(workspace: Path) -> None:
    code, out, _ = query("select user_id, orders, note from src.visits order by id", "--format", "markdown", "--limit", "2")
    assert code == 0
    assert out.splitlines() == [
        "| user_id | orders | note |",
        "|---|---:|---|",
        '| u0 | 1677 | a\\|b, "c" |',
        "| u1 | 1678 | NULL |",
    ]


def test_output_file_takes_its_format_from_the_suffix(workspace: Path, tmp_path: Path) -> None:
    target = tmp_path / "exports" / "visits.csv"
    code, out, err = query("select id, user_id from src.visits order by id", "--output", str(target))
    assert code == 0
    assert out == ""  # the rows went to the file
    assert "wrote 120 rows to" in err and "(csv)" in err
    assert len(list(csv.DictReader(target.open()))) == 120
    as_json = tmp_path / "v.json"
    assert query("select id from src.visits", "-o", str(as_json), "--limit", "3")[0] == 0
    assert len(json.loads(as_json.read_text())) == 3
    code, _, err = query("select 1", "-o", str(tmp_path / "v.xlsx"))
    assert code == 1 and "--format" in err and not (tmp_path / "v.xlsx").exists()


def test_a_failed_query_leaves_no_file(workspace: Path, tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    code, _, err = query("select nosuch from src.visits", "--output", str(exports / "out.csv"))
    assert code == 1 and "query failed" in err and "nosuch" in err
    assert list(exports.iterdir()) == []  # neither out.csv nor a partial one


def test_duckdb_statements_export_too(workspace: Path) -> None:
    code, out, _ = query("describe src.visits", "--format", "csv")
    assert code == 0
    assert [row["column_name"] for row in csv.DictReader(io.StringIO(out))][:3] == ["id", "user_id", "user_agent"]


def test_a_closed_pipe_is_not_an_error(workspace: Path) -> None:
    """`segloop query ... --format csv | head -1`: quiet, no traceback."""
    shell = subprocess.run(
        f"{sys.executable} -m segloop.cli query 'select * from range(300000)' --format csv | head -1",
        shell=True, cwd=workspace, capture_output=True, text=True, timeout=120,
    )
    assert shell.stdout == "range\n"
    assert "Traceback" not in shell.stderr and "Broken pipe" not in shell.stderr, shell.stderr

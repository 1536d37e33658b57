"""`segloop query`: run a query, write its result as a table for people or csv/json/markdown.

A table on a terminal fits the terminal (long values fold, nothing is cut); piped or
written to a file it is as wide as its content, so `segloop query ... | less -S` or a
redirect keeps every character. The other formats stream the result in record batches, so
an export of any size never sits in memory whole.

Numbers have one style everywhere: the digits as the warehouse has them, with no thousands
separators (ids and years stay readable and values paste into a spreadsheet), and floats
rounded for reading: cents from 100 up, six significant digits below (probabilities). The
machine formats keep full precision.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from segloop.errors import SegloopError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    from rich.console import Console

    from segloop.warehouses import Warehouse

FORMATS = ("table", "csv", "json", "markdown")
SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".md": "markdown", ".markdown": "markdown", ".txt": "table"}
TABLE_ROWS = 50  # rows a table shows unless --limit says otherwise; exports get every row
NULL = "NULL"  # what a missing value looks like in a table (empty would read as '')


def choose_format(fmt: str | None, output: Path | None) -> str:
    """``--format`` if given, else the one ``--output``'s suffix names, else a table."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise SegloopError(f"--format must be one of {', '.join(FORMATS)}, not `{fmt}`")
        return fmt
    if output is None:
        return "table"
    suffix = output.suffix.lower()
    if suffix not in SUFFIX_FORMATS:
        raise SegloopError(
            f"cannot tell the format of {output} from its suffix; add --format "
            f"{'|'.join(FORMATS)} (or name it .csv, .json, .md)"
        )
    return SUFFIX_FORMATS[suffix]


def is_numeric(arrow_type: pa.DataType) -> bool:
    import pyarrow.types as pt

    return bool(pt.is_integer(arrow_type) or pt.is_floating(arrow_type) or pt.is_decimal(arrow_type))


def cell_text(value: Any) -> str:
    """A value as a table or markdown cell shows it (one style for every number)."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, dict | list):
        return _json_text(value)
    return str(value)


def number_text(value: float) -> str:
    """Floats for reading: cents from 100 up, six significant digits below; no separators."""
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    return f"{value:.2f}" if abs(value) >= 100 else f"{value:.6g}"


def _json_text(value: Any) -> str:
    import orjson

    return orjson.dumps(value, default=_json_default).decode()


def _json_default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return str(value)


# -- running ----------------------------------------------------------------------------------

def export_query(wh: Warehouse, sql: str, kind: str, limit: int | None, output: Path) -> tuple[int, bool]:
    """`--output FILE`: write beside ``output`` and rename, so a failed query leaves no half file."""
    partial = output.with_name(f".{output.name}.partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("w", encoding="utf-8", newline="") as out:
            from rich.console import Console

            result = write_query(wh, sql, kind, limit, Console(file=out), out)
        partial.replace(output)
    except OSError as exc:
        raise SegloopError(f"could not write {output}: {exc.strerror or exc}; "
                           "check that its folder can be written to") from None
    finally:
        partial.unlink(missing_ok=True)
    return result


def write_query(wh: Warehouse, sql: str, kind: str, limit: int | None, console: Console,
                out: TextIO | None = None) -> tuple[int, bool]:
    """Run ``sql`` and write its rows as ``kind`` (a table to ``console``, the rest to ``out``).

    Returns the rows written and whether ``limit`` left some out.
    """
    from segloop.errors import database_message

    try:
        if kind == "table":  # a bounded number of rows; one more tells whether there are more
            table = _query_table(wh, sql, None if limit is None else limit + 1)
            more = limit is not None and table.num_rows > limit
            table = table.slice(0, limit)
            return print_table(console, table.schema, table.to_batches()), more
        schema, batches = _query_batches(wh, sql, limit)
        writer = {"csv": write_csv, "json": write_json, "markdown": write_markdown}[kind]
        return writer(schema, batches, out or sys.stdout), False
    except (SegloopError, OSError):  # ours, or writing failed (a closed pipe, a full disk)
        raise
    except Exception as exc:  # the warehouse refused the query
        raise SegloopError(f"query failed in the {wh.dialect} warehouse: "
                           f"{database_message(exc, pointer=True)}") from None


def _query_table(wh: Warehouse, sql: str, limit: int | None) -> pa.Table:
    return wh.preview_query(sql, limit)


def _query_batches(wh: Warehouse, sql: str, limit: int | None) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The result's Arrow schema and its record batches, streamed (exports of any size)."""
    reader = wh.stream_query(sql, limit)
    return reader.schema, iter(reader)


# -- writers ----------------------------------------------------------------------------------


def write_csv(schema: pa.Schema, batches: Iterable[pa.RecordBatch], out: TextIO) -> int:
    """RFC 4180 CSV with a header; NULL is an empty field, numbers at full precision."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(schema.names)
    rows = 0
    for batch in batches:
        for row in _rows(batch):
            writer.writerow(["" if v is None else _json_text(v) if isinstance(v, dict | list) else v for v in row])
            rows += 1
    return rows


def write_json(schema: pa.Schema, batches: Iterable[pa.RecordBatch], out: TextIO) -> int:
    """A JSON array of objects, one per line (jq reads it; so does a person)."""
    import orjson

    names = schema.names
    rows = 0
    out.write("[")
    for batch in batches:
        for row in _rows(batch):
            out.write(",\n" if rows else "\n")
            out.write(orjson.dumps(dict(zip(names, row, strict=True)), default=_json_default).decode())
            rows += 1
    out.write("\n]\n" if rows else "]\n")
    return rows


def write_markdown(schema: pa.Schema, batches: Iterable[pa.RecordBatch], out: TextIO) -> int:
    """A GitHub-flavoured markdown table; numeric columns right-aligned."""
    numeric = [is_numeric(field.type) for field in schema]
    out.write("| " + " | ".join(_md(name) for name in schema.names) + " |\n")
    out.write("|" + "|".join("---:" if n else "---" for n in numeric) + "|\n")
    rows = 0
    for batch in batches:
        for row in _rows(batch):
            out.write("| " + " | ".join(_md(cell_text(v)) for v in row) + " |\n")
            rows += 1
    return rows


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def print_table(console: Console, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> int:
    """A rich table: folded to fit a terminal; as wide as its content anywhere else."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    table = Table()
    numeric = [is_numeric(field.type) for field in schema]
    for name, right in zip(schema.names, numeric, strict=True):
        table.add_column(name, justify="right" if right else "left", overflow="fold",
                         min_width=min(len(name), 24))
    rows = 0
    for batch in batches:
        for row in _rows(batch):
            table.add_row(*(Text(NULL, style="dim") if v is None else Text(cell_text(v)) for v in row))
            rows += 1
    if not console.is_terminal:  # a pipe or a file: never cut, never fold
        wide = Console(width=100_000, no_color=True)
        width = Measurement.get(wide, wide.options, table).maximum
        console = Console(file=console.file, width=max(width, 20), no_color=True, highlight=False)
    console.print(table)
    return rows


def _rows(batch: pa.RecordBatch) -> Iterator[list[Any]]:
    columns = [column.to_pylist() for column in batch.columns]
    return (list(row) for row in zip(*columns, strict=True))

"""Ibis 12 on duckdb 2 and sqlglot 30: what Ibis still calls, restored, so segloop installs
next to current releases.

Two breaks, measured with the whole test suite on duckdb 2.0.1 + sqlglot 30.22 + Ibis
12.0.0 (the current releases; tests/warehouses/test_ibis_compat.py keeps them fixed):

- duckdb 2.0 removed ``DuckDBPyConnection.fetch_arrow_table()`` and
  ``fetch_record_batch(rows_per_batch)`` (deprecated since 1.4) in favour of
  ``to_arrow_table()`` and ``to_arrow_reader(batch_size)``. Ibis 12 still calls the old
  names on a connection after ``execute``: creating a schema, ``insert``, ``to_pyarrow``
  and ``to_pyarrow_batches`` fail with ``'DuckDBPyConnection' object has no attribute
  'fetch_arrow_table'``. The two names come back as thin aliases of the new methods.
  duckdb warns that Arrow output from a DB-API result copies the rows once more (silenced
  here: 1.x did the same; segloop's hot path, ``DuckDBWarehouse.to_arrow``, reads relations).
- sqlglot 30 keeps the names of ``DROP`` in ``tables`` (a list) where it had ``this``;
  Ibis 12 still builds ``Drop(this=table, ...)``, which sqlglot 30 renders as ``DROP VIEW
  IF EXISTS`` with no name (a syntax error on every backend: ``create_table(...,
  overwrite=True)``, ``drop_table``, ``drop_view``). The generator reads ``this`` as the one
  table when ``tables`` is empty.
- sqlglot 30 reads Ibis's ``json_extract_path_text(x, VARIADIC ARRAY[]::TEXT[])`` (how Ibis
  unwraps a JSON value to text on PostgreSQL) as its JSON operator and writes ``x ->> VARIADIC
  ARRAY[]::TEXT[]``, a syntax error (the ``<table>_products`` view on PostgreSQL). The call is
  written as the function again when its path is that VARIADIC argument.

``install()`` patches each only where the installed version lacks it, once per process, so
it does nothing on duckdb 1.x / sqlglot < 30 and stops mattering once Ibis uses the new
names. Remove this module when an Ibis release does.
"""

from __future__ import annotations

import warnings
from typing import Any

_COPY_WARNING = "Arrow output on a DB-API result"
_installed = False


def install() -> None:
    """Patch duckdb's connection and sqlglot's ``DROP`` for Ibis 12 (idempotent, cheap)."""
    global _installed
    if _installed:
        return
    _patch_sqlglot_drop()
    _patch_postgres_json_text()
    _patch_duckdb_connection()
    _installed = True


def _patch_duckdb_connection() -> None:
    try:
        import duckdb
    except ImportError:  # pragma: no cover - duckdb is a dependency
        return
    connection = duckdb.DuckDBPyConnection
    if not hasattr(connection, "fetch_arrow_table") and hasattr(connection, "to_arrow_table"):
        connection.fetch_arrow_table = _fetch_arrow_table  # type: ignore[attr-defined]
    if not hasattr(connection, "fetch_record_batch") and hasattr(connection, "to_arrow_reader"):
        connection.fetch_record_batch = _fetch_record_batch  # type: ignore[attr-defined]


def _fetch_arrow_table(self: Any) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_COPY_WARNING)
        return self.to_arrow_table()


def _fetch_record_batch(self: Any, rows_per_batch: int = 1_000_000) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_COPY_WARNING)
        return self.to_arrow_reader(batch_size=rows_per_batch)


def _patch_sqlglot_drop() -> None:
    from sqlglot import expressions as exp
    from sqlglot.generator import Generator

    if "tables" not in exp.Drop.arg_types or getattr(Generator.drop_sql, "_segloop", False):
        return  # sqlglot < 30 renders ``this`` itself
    original = Generator.drop_sql

    def drop_sql(self: Generator, expression: exp.Drop) -> str:
        this = expression.args.get("this")
        if this is not None and not expression.args.get("tables"):
            expression = expression.copy()
            expression.set("this", None)
            expression.set("tables", [this])
        return original(self, expression)

    drop_sql._segloop = True  # type: ignore[attr-defined]
    Generator.drop_sql = drop_sql  # type: ignore[method-assign]


def _patch_postgres_json_text() -> None:
    from sqlglot import expressions as exp
    from sqlglot.dialects.postgres import Postgres

    transforms = Postgres.Generator.TRANSFORMS
    original = transforms.get(exp.JSONExtractScalar)
    if original is None or getattr(original, "_segloop", False):
        return

    def json_extract_scalar(self: Any, expression: exp.JSONExtractScalar) -> str:
        path = expression.expression
        if isinstance(path, exp.Var) and str(path.this).upper().startswith("VARIADIC"):
            return f"JSON_EXTRACT_PATH_TEXT({self.sql(expression, 'this')}, {path.this})"
        return str(original(self, expression))

    json_extract_scalar._segloop = True  # type: ignore[attr-defined]
    transforms[exp.JSONExtractScalar] = json_extract_scalar

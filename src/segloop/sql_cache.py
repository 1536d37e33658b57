"""Compiled SQL kept on disk between runs: a fresh `segloop run` process skips Ibis's compiler.

Turning an Ibis expression into SQL is the slowest step of a run in Python (~20 ms for
the RFM query, against ~20 ms for DuckDB to compute RFM over a million events), and a
one-shot `segloop run` compiles the same expressions as the run before it.
``Warehouse.compile`` keeps SQL in memory within a process; this cache keeps it in the
workspace (`.segloop/cache/sql/`) across processes.

The key is a SHA-256 of the whole expression graph: every operation's class and
arguments, in topological order, with values written out exactly (names, types, literal
values). Anything the fingerprint cannot write out exactly (data held in Python, an
unknown kind of value) makes the expression uncacheable: it is compiled as usual. The
folder is per backend and per Ibis and sqlglot version, so upgrading either starts
afresh. Reading or writing the cache never fails a run: a problem means compiling.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    import ibis.expr.types as ir

    from segloop.warehouses import Warehouse

log = logging.getLogger("segloop")

MAX_ENTRIES = 500  # beyond this, the oldest entries go (expressions with per-run literals pile up)
_EXACT = (str, int, float, bool, type(None), Decimal, date, datetime, time, timedelta, UUID, bytes)


class _Inexact(Exception):
    """A value the fingerprint cannot write out exactly."""


def fingerprint(op: Any) -> str | None:
    """A stable digest of an Ibis operation graph, or None when it holds data it cannot write out."""
    import ibis.expr.operations as ops
    from ibis.common.graph import Graph, Node

    ordered = Graph.from_bfs(op).toposort()
    graph = ordered[0] if isinstance(ordered, tuple) else ordered  # Ibis 12 adds the dependents
    ids: dict[Node, int] = {}
    digest = hashlib.sha256()

    def enc(value: Any) -> str:
        if isinstance(value, Node):
            return f"#{ids[value]}"
        if isinstance(value, Enum):
            return f"{type(value).__qualname__}.{value.name}"
        if isinstance(value, _EXACT):
            return f"{type(value).__name__}:{value!r}"
        if isinstance(value, tuple | list):
            return "(" + ",".join(enc(v) for v in value) + ")"
        if isinstance(value, frozenset | set):  # no order of its own: sorted, as written out
            return "set(" + ",".join(sorted(enc(v) for v in value)) + ")"
        if isinstance(value, Mapping):
            return "{" + ",".join(f"{enc(k)}={enc(v)}" for k, v in value.items()) + "}"
        argnames = getattr(value, "__argnames__", None)
        if argnames is not None:  # Ibis's own values (data types, schemas, namespaces)
            return type(value).__qualname__ + "(" + ",".join(enc(getattr(value, n)) for n in argnames) + ")"
        if type(value).__module__.startswith("ibis.backends"):  # the backend a table lives in: not in the SQL
            return "backend"
        raise _Inexact(type(value).__qualname__)

    try:
        for i, node in enumerate(graph):
            if isinstance(node, ops.InMemoryTable):
                return None  # data held in Python, under a generated name
            ids[node] = i
            args = ",".join(f"{n}={enc(v)}" for n, v in zip(node.__argnames__, node.__args__, strict=True))
            digest.update(f"{type(node).__module__}.{type(node).__qualname__}({args});".encode())
    except _Inexact as exc:
        log.debug("expression not cacheable: holds a %s", exc)
        return None
    return digest.hexdigest()


class SqlCache:
    """One folder of ``<fingerprint>.sql`` files for one backend and Ibis/sqlglot version."""

    def __init__(self, folder: Path, backend: str):
        import ibis
        import sqlglot

        self.folder = folder / f"{backend}-ibis{ibis.__version__}-sqlglot{sqlglot.__version__}"

    def compile(self, op: Any, compile_fn: Callable[[], str]) -> str:
        """The SQL of ``op``: from the cache, or ``compile_fn()`` (then kept)."""
        try:
            key = fingerprint(op)
        except Exception:  # an Ibis version whose graph looks different: just compile
            log.debug("cannot fingerprint an expression", exc_info=True)
            key = None
        if key is None:
            return compile_fn()
        file = self.folder / f"{key}.sql"
        try:
            return file.read_text(encoding="utf-8")
        except OSError:
            pass
        sql = compile_fn()
        self._put(file, sql)
        return sql

    def expressions_file(self, what: str, config: str, inputs: Sequence[ir.Table]) -> Path | None:
        """Where ``cached_expressions`` keeps the SQL of ``what`` built over ``inputs``; None
        when an input cannot be fingerprinted (data held in Python)."""
        try:
            prints = [fingerprint(table.op()) for table in inputs]
        except Exception:
            log.debug("cannot fingerprint an input", exc_info=True)
            return None
        version = code_version()
        if version is None or any(p is None for p in prints):
            return None
        key = hashlib.sha256(json.dumps([version, what, config, prints]).encode()).hexdigest()
        return self.folder / f"{key}.json"

    def put_expressions(self, file: Path, queries: list[tuple[str, ibis.Schema]]) -> None:
        try:
            text = json.dumps([{"sql": sql, "schema": {name: _dtype_json(dtype) for name, dtype in schema.items()}}
                               for sql, schema in queries])
        except (TypeError, ValueError):  # a type with an argument JSON cannot hold (an interval's unit)
            log.debug("expressions not cached: a column type cannot be written as JSON")
            return
        self._put(file, text)

    def _put(self, file: Path, text: str) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f"{file.name}.{secrets.token_hex(4)}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, file)  # readers never see half a file
            self._prune()
        except OSError as exc:
            log.debug("compiled SQL not cached in %s: %s", self.folder, exc)

    def _prune(self) -> None:
        entries = [e for e in os.scandir(self.folder) if e.name.endswith((".sql", ".json"))]
        if len(entries) <= MAX_ENTRIES:
            return
        entries.sort(key=lambda e: e.stat().st_mtime)
        for entry in entries[: len(entries) - MAX_ENTRIES]:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


# -- built expressions ------------------------------------------------------------------------
#
# Compiling is not the only Ibis cost: an operator builds its expressions first (~15-25 ms
# for RFM in a fresh process, mostly Ibis's first use of its type checks). When an
# operator's expressions depend on nothing but its config and its inputs' schemas, the
# SQL they compile to can stand in for them: a fresh process then reads the SQL and the
# output schema from disk and hands the warehouse a query with a known schema, and a
# long-lived process (scheduler, web UI) reuses the expressions it built.

_BUILT: dict[tuple[Any, ...], tuple[Any, ...]] = {}
_BUILT_MAX = 32
_BUILT_LOCK = threading.Lock()


def cached_expressions(
    warehouse: Warehouse, what: str, config: str, inputs: Sequence[ir.Table],
    build: Callable[[], tuple[ir.Table, ...]],
) -> tuple[ir.Table, ...]:
    """``build()``, or what an earlier build for the same ``what``/``config``/inputs gave.

    ``build`` must depend on nothing but ``config`` (the operator's settings, written out
    in full), the inputs' tables and schemas, and segloop's code: the key holds those, and
    the modification times of segloop's source files, so changed code builds afresh. In a
    process the built expressions are kept (Ibis operations compare by structure); across
    processes, with the warehouse's ``sql_cache``, their SQL and schemas are kept on disk
    and come back as queries (``Warehouse.query``) that compile to exactly that SQL.
    """
    key = (warehouse.backend, what, config, *(table.op() for table in inputs))
    found = _BUILT.get(key)
    if found is not None:
        return found
    cache = warehouse.sql_cache
    file = cache.expressions_file(what, config, inputs) if cache is not None else None
    if file is not None:
        found = _read_queries(warehouse, file)
    if found is None:
        found = build()
        if file is not None and cache is not None:
            cache.put_expressions(file, [(warehouse.compile(t), t.schema()) for t in found])
    with _BUILT_LOCK:
        _BUILT[key] = found
        while len(_BUILT) > _BUILT_MAX:
            del _BUILT[next(iter(_BUILT))]
    return found


def _read_queries(warehouse: Warehouse, file: Path) -> tuple[ir.Table, ...] | None:
    import ibis

    try:
        entries = json.loads(file.read_bytes())
        return tuple(
            warehouse.query(entry["sql"], ibis.schema({k: _dtype_from_json(v) for k, v in entry["schema"].items()}))
            for entry in entries
        )
    except FileNotFoundError:
        return None
    except Exception:  # a damaged or foreign file: build afresh (and overwrite it)
        log.debug("cached expressions in %s not usable", file, exc_info=True)
        return None


@lru_cache(maxsize=1)
def code_version() -> str | None:
    """A digest of segloop's version and its source files' names, sizes and modification
    times; None when they cannot be read (segloop run from a zip archive): then built
    expressions are only kept within a process."""
    from segloop import version

    try:
        return source_digest(os.path.dirname(version.__file__), version.__version__)
    except OSError:
        log.debug("segloop's source files cannot be listed; built expressions are not kept on disk")
        return None


def source_digest(root: str, version: str) -> str:
    """A digest of ``version`` and the ``.py`` files below ``root`` (names, sizes, modification times)."""
    digest = hashlib.sha256(version.encode())
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.endswith(".py"):
                    stat = entry.stat()
                    digest.update(f"{entry.path[len(root):]}:{stat.st_size}:{stat.st_mtime_ns};".encode())
                elif entry.is_dir() and entry.name != "__pycache__":
                    stack.append(entry.path)
    return digest.hexdigest()


def _dtype_json(dtype: Any) -> Any:
    """An Ibis data type as JSON: its class name and arguments (types inside written the same way).

    Read back by constructing the class: exact, and without Ibis's type-string parser
    (~1-2 ms per new type in a fresh process).
    """
    def arg(value: Any) -> Any:
        if isinstance(value, Mapping):  # a struct's fields
            return {"fields": {k: _dtype_json(v) for k, v in value.items()}}
        if hasattr(value, "__argnames__"):
            return {"dtype": _dtype_json(value)}
        return value

    return [type(dtype).__name__, {name: arg(getattr(dtype, name)) for name in dtype.__argnames__}]


def _dtype_from_json(data: Any) -> Any:
    import ibis.expr.datatypes as dt

    def arg(value: Any) -> Any:
        if isinstance(value, dict) and "fields" in value:
            return {k: _dtype_from_json(v) for k, v in value["fields"].items()}
        if isinstance(value, dict) and "dtype" in value:
            return _dtype_from_json(value["dtype"])
        return value

    name, args = data
    cls = getattr(dt, name)
    if not (isinstance(cls, type) and issubclass(cls, dt.DataType)):
        raise ValueError(f"not an Ibis data type: {name}")
    return cls(**{key: arg(value) for key, value in args.items()})

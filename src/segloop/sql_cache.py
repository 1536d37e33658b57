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
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

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

    def _put(self, file: Path, sql: str) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f"{file.name}.{secrets.token_hex(4)}.tmp")
            tmp.write_text(sql, encoding="utf-8")
            os.replace(tmp, file)  # readers never see half a file
            self._prune()
        except OSError as exc:
            log.debug("compiled SQL not cached in %s: %s", self.folder, exc)

    def _prune(self) -> None:
        entries = [e for e in os.scandir(self.folder) if e.name.endswith(".sql")]
        if len(entries) <= MAX_ENTRIES:
            return
        entries.sort(key=lambda e: e.stat().st_mtime)
        for entry in entries[: len(entries) - MAX_ENTRIES]:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)

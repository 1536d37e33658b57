"""What a warehouse's schemas hold: table and view names, and which kind each one is.

Mixed into ``Warehouse`` (warehouses/base.py). Replacing a table by a view (or back) needs
the right DROP on every warehouse, so a run keeps one listing per schema, read with one
catalog query and kept current by this connection's own writes. Backends override the
query (``_kinds_query``) or the one-name lookup (``_relation_kind_of``) where their catalog
differs (Spark's metastore lists views apart).
"""

from __future__ import annotations

from typing import Any

from segloop.warehouses.exprs import sql_literal


class Catalog:
    """Names and kinds of the relations in a schema, for ``Warehouse``."""

    con: Any
    schema: str
    _kinds: dict[str, dict[str, str]]
    _wrote: set[tuple[str, str]]

    def list_tables(self, schema: str | None = None) -> list[str]:
        """Names of the tables and views in ``schema`` (default: the output schema)."""
        return list(self.con.list_tables(database=schema or self.schema))

    def list_schemas(self) -> list[str]:
        return list(self.con.list_databases())

    def has_table(self, name: str, schema: str | None = None) -> bool:
        """Whether a table or view of that name exists."""
        try:
            return name in self.list_tables(schema)
        except Exception:
            return False

    def relation_kind(self, name: str, schema: str | None = None, fresh: bool = False) -> str | None:
        """``"table"``, ``"view"`` or None (nothing of that name) in ``schema``.

        Replacing a table by a view (or back) needs the right DROP on every warehouse:
        ``DROP TABLE`` of a view (and ``CREATE OR REPLACE VIEW`` over a table) is an error.
        The first call per schema lists the whole schema in one catalog query; this
        connection's own writes keep that listing current, so a run asks the catalog once
        instead of once per node (``raw_sql`` forgets it: any SQL may create or drop).
        ``fresh=True`` asks the catalog again (after a write failed on a stale listing).
        """
        target = schema or self.schema
        kinds = None if fresh else self._kinds.get(target)
        if kinds is None:
            kinds = self._load_kinds(target)
        if kinds is not None:
            return kinds.get(name)
        return self._relation_kind_of(name, target)

    def relations(self, schema: str | None = None) -> dict[str, str]:
        """``{name: "table" | "view"}`` of ``schema`` (default: the output schema)."""
        target = schema or self.schema
        kinds = self._kinds.get(target)
        if kinds is None:
            kinds = self._load_kinds(target)
        if kinds is None:
            return dict.fromkeys(self.list_tables(target), "table")
        return dict(kinds)

    def _load_kinds(self, target: str) -> dict[str, str] | None:
        """One catalog query for every table and view of ``target``; None where there is none."""
        query = self._kinds_query(target)
        if query is None:
            return None
        try:
            rows = self._fetch(query)
        except Exception:  # no information_schema: _relation_kind_of finds names one by one
            return None
        kinds = {str(row[0]): "view" if "VIEW" in str(row[1]).upper() else "table" for row in rows}
        self._kinds[target] = kinds
        return kinds

    def _kinds_query(self, target: str) -> str | None:
        """The catalog query listing ``(table_name, table_type)`` of ``target``; None: none."""
        return ("SELECT table_name, table_type FROM information_schema.tables "
                f"WHERE table_schema = {sql_literal(target)}")

    def _noted(self, name: str, schema: str, kind: str | None) -> None:
        """Keep the listing of ``schema`` current after this connection wrote ``name``."""
        if kind is None:
            self._wrote.discard((schema, name))
        else:
            self._wrote.add((schema, name))
        kinds = self._kinds.get(schema)
        if kinds is None:
            return
        if kind is None:
            kinds.pop(name, None)
        else:
            kinds[name] = kind

    def _relation_kind_of(self, name: str, target: str) -> str | None:
        """The kind of one name where no listing exists: Spark's metastore lists views apart,
        and a warehouse without the information_schema listing still finds names."""
        return "table" if self.has_table(name, target) else None

    def _fetch(self, query: str) -> list[tuple[Any, ...]]:
        """Rows of a small catalog query, without Ibis compiling (or pandas)."""
        result = self.con.raw_sql(query)
        try:
            rows = result.fetchall() if hasattr(result, "fetchall") else list(result)
        finally:
            close = getattr(result, "close", None)
            if callable(close):
                close()
        return [tuple(row) for row in rows]

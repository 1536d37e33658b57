"""Node `sql`: a query in the warehouse's dialect, run inside the warehouse.

``"double quotes"`` name identifiers on every warehouse, as in standard SQL, also where the
warehouse's own SQL reads them as strings (Spark): a query such as the demo's
``select user_id, "timestamp" ...`` means the same everywhere. A node that says
``dialect: spark`` is read exactly as Spark would read it.

The query may name upstream nodes by their node name (``select * from orders``) and any
warehouse table as ``schema.table``. Node names are rewritten to the nodes' materialized
tables (``<schema>.<pipeline>__<node>``) with sqlglot, so no rows pass through Python.

A node's extra tables and views (``<pipeline>__<node>__<name>``) are named
``<node>.<name>``: ``select * from src.tracks`` reads the `tracks` view of a
segment_source node `src`, ``rfm.rejects`` the rejects of an rfm node. A node name used
as a qualifier wins over a warehouse schema of the same name. When the query declares its
upstream nodes (``input:``/``inputs:``), their extra tables may also be named by short
name (``select * from tracks``) as long as only one of them has that name.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from segloop.errors import NodeError, database_message
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import sqlglot.expressions as exp


class SqlConfig(NodeConfig):
    type: Literal["sql"] = "sql"
    sql: str = Field(description="A SELECT query; name upstream nodes by node name.")
    dialect: str | None = Field(
        default=None,
        description="SQL dialect the query is written in (e.g. duckdb, postgres); segloop "
        "translates it to the warehouse's with sqlglot. Default: the warehouse's own.",
    )

    @field_validator("dialect")
    @classmethod
    def _known_dialect(cls, value: str | None) -> str | None:
        if value is not None:
            from sqlglot.dialects.dialect import Dialect

            try:
                Dialect.get_or_raise(value)
            except ValueError:
                raise ValueError(f"unknown SQL dialect `{value}` (e.g. duckdb, postgres, snowflake, "
                                 "bigquery, spark)") from None
        return value

    @field_validator("sql")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the query is empty")
        return value

    def implicit_upstream(self, node_names: set[str]) -> list[str]:
        names = [name for name in referenced_tables(self.sql, self.dialect) if name in node_names]
        for db, _ in qualified_refs(self.sql, self.dialect):
            if db in node_names and db not in names:
                names.append(db)
        return names


@lru_cache(maxsize=256)
def _parse(sql: str, dialect: Any = None) -> exp.Expr | None:  # sqlglot 30: parse_one returns Expr
    """The query's syntax tree, parsed once per process (a run asks for it four times).

    Shared between callers: read it, or ``transform`` it (which copies); never change it.
    """
    import sqlglot

    try:
        return sqlglot.parse_one(sql, read=dialect)
    except Exception:
        return None


def _cte_names(tree: exp.Expr) -> set[str]:
    import sqlglot.expressions as exp

    return {cte.alias_or_name for cte in tree.find_all(exp.CTE)}


def referenced_tables(sql: str, dialect: str | None = None) -> list[str]:
    """Unqualified table names a query reads (CTE names excluded), in order of appearance."""
    import sqlglot.expressions as exp

    tree = _parse(sql, dialect)
    if tree is None:
        return []
    ctes = _cte_names(tree)
    names: list[str] = []
    for table in tree.find_all(exp.Table):
        if not table.args.get("db") and table.name not in ctes and table.name not in names:
            names.append(table.name)
    return names


def qualified_refs(sql: str, dialect: str | None = None) -> list[tuple[str, str]]:
    """``(qualifier, table)`` pairs of two-part table names (``src.tracks``), in order."""
    import sqlglot.expressions as exp

    tree = _parse(sql, dialect)
    if tree is None:
        return []
    pairs: list[tuple[str, str]] = []
    for table in tree.find_all(exp.Table):
        if table.args.get("db") and not table.args.get("catalog"):
            pair = (table.db, table.name)
            if pair not in pairs:
                pairs.append(pair)
    return pairs


def rewrite_node_refs(
    sql: str,
    mapping: dict[str, tuple[str, str]],
    dialect: str,
    qualified: dict[tuple[str, str], tuple[str, str]] | None = None,
    read: Any = None,
) -> str:
    """Replace references to nodes by ``schema.table`` of their outputs.

    The query is parsed as ``read`` (default: ``dialect``) and written as ``dialect``.

    ``mapping`` maps unqualified names (node names, short names of extra tables);
    ``qualified`` maps ``(node, name)`` pairs written ``node.name`` to extra tables.
    """
    import sqlglot.expressions as exp

    tree = _parse(sql, read or dialect)
    if tree is None:
        return sql
    ctes = _cte_names(tree)
    qualified = qualified or {}

    def target(node: exp.Table) -> tuple[str, str] | None:
        if node.args.get("catalog"):
            return None
        if node.args.get("db"):
            return qualified.get((node.db, node.name))
        if node.name in ctes:
            return None
        return mapping.get(node.name)

    def swap(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and (found := target(node)) is not None:
            schema, table = found
            alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
            return exp.Table(
                this=exp.to_identifier(table, quoted=True),
                db=exp.to_identifier(schema, quoted=True),
                alias=alias,
            )
        return node

    return tree.transform(swap).sql(dialect=dialect)


class SqlOperator(Operator[SqlConfig]):
    """Runs a SELECT inside the warehouse; its result becomes the node's table."""

    type_name: ClassVar[str] = "sql"
    config_model: ClassVar[type[NodeConfig]] = SqlConfig
    READS_INPUTS_AS_SQL: ClassVar[bool] = True
    VIEW_BY_DEFAULT: ClassVar[bool] = True
    min_inputs: ClassVar[int] = 0
    max_inputs: ClassVar[int | None] = None

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        config = self.config
        wh = ctx.warehouse
        dialect = wh.dialect
        upstream = sorted(ctx.upstream or set(inputs))
        mapping = {name: (wh.schema, ctx.table_name(node=name)) for name in upstream}
        qualified = _extra_table_refs(config, upstream, mapping, ctx)
        if config.dialect and _parse(config.sql, config.dialect) is None:
            raise NodeError(ctx.node, f"the query is not valid {config.dialect} SQL (`dialect: "
                            f"{config.dialect}`); fix it or drop `dialect:` to write {dialect} SQL")
        # Without `dialect:`, "double quotes" are identifiers on every warehouse (Spark too).
        read = config.dialect or wh.node_sql_dialect
        query = rewrite_node_refs(config.sql, mapping, dialect, qualified, read=read)
        try:
            table = wh.sql(query)
        except Exception as exc:
            hint = ""
            if read is not wh.dialect and '"' in config.sql:  # "text" read as a name (Spark)
                hint = (f"; segloop reads \"double quotes\" as names, not text, on {dialect} too: write text "
                        f"in 'single quotes', or set `dialect: {dialect}` to read the query as {dialect} does")
            raise NodeError(ctx.node, f"the query failed in the {dialect} warehouse: "
                            f"{database_message(exc)}{hint}") from exc
        return NodeOutput(table=table, metrics={"query": query})


def _extra_table_refs(
    config: SqlConfig, upstream: list[str], mapping: dict[str, tuple[str, str]], ctx: RunContext
) -> dict[tuple[str, str], tuple[str, str]]:
    """Resolve ``node.name`` and short names to upstream nodes' extra tables and views.

    Adds short names to ``mapping`` in place; returns the ``(node, name)`` mapping. Only
    looks at the warehouse when the query names something that may be an extra table.
    """
    wh = ctx.warehouse
    refs = [(db, name) for db, name in qualified_refs(config.sql, config.dialect) if db in upstream]
    declared = [name for name in config.upstream() if name in upstream]
    shorts = [name for name in referenced_tables(config.sql, config.dialect) if name not in mapping] if declared else []
    if not refs and not shorts:
        return {}
    existing = set(wh.list_tables())
    qualified: dict[tuple[str, str], tuple[str, str]] = {}
    for node, name in refs:
        table = ctx.table_name(name, node=node)
        if table not in existing:
            prefix = ctx.table_name(node=node) + "__"
            offered = sorted(t[len(prefix):] for t in existing if t.startswith(prefix))
            raise NodeError(
                ctx.node,
                f"`{node}.{name}`: node `{node}` has no table `{name}` "
                f"({'it has: ' + ', '.join(offered) if offered else 'it has no extra tables'}); "
                "fix the table name in the query",
            )
        qualified[(node, name)] = (wh.schema, table)
    for name in shorts:
        owners = [node for node in declared if ctx.table_name(name, node=node) in existing]
        if len(owners) > 1:
            raise NodeError(
                ctx.node,
                f"`{name}` is a table of several input nodes ({', '.join(owners)}); "
                f"write `{owners[0]}.{name}` to say which",
            )
        if owners:
            mapping[name] = (wh.schema, ctx.table_name(name, node=owners[0]))
    return qualified

"""Node `sql`: a query in the warehouse's dialect, run inside the warehouse.

The query may name upstream nodes by their node name (``select * from orders``) and any
warehouse table as ``schema.table``. Node names are rewritten to the nodes' materialized
tables (``<schema>.<pipeline>__<node>``) with sqlglot, so no rows pass through Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from segloop.errors import NodeError
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    import sqlglot.expressions as exp


class SqlConfig(NodeConfig):
    type: Literal["sql"] = "sql"
    sql: str = Field(description="A SELECT query; name upstream nodes by node name.")

    @field_validator("sql")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the query is empty")
        return value

    def implicit_upstream(self, node_names: set[str]) -> list[str]:
        return [name for name in referenced_tables(self.sql) if name in node_names]


def _parse(sql: str, dialect: str | None = None) -> exp.Expression | None:
    import sqlglot

    try:
        return sqlglot.parse_one(sql, read=dialect)
    except Exception:
        return None


def _cte_names(tree: exp.Expression) -> set[str]:
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


def rewrite_node_refs(sql: str, mapping: dict[str, tuple[str, str]], dialect: str) -> str:
    """Replace unqualified references to node names by ``schema.table`` of their outputs."""
    import sqlglot.expressions as exp

    tree = _parse(sql, dialect)
    if tree is None:
        return sql
    ctes = _cte_names(tree)

    def swap(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and not node.args.get("db") and node.name in mapping and node.name not in ctes:
            schema, table = mapping[node.name]
            alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
            return exp.Table(
                this=exp.to_identifier(table, quoted=True),
                db=exp.to_identifier(schema, quoted=True),
                alias=alias,
            )
        return node

    return tree.transform(swap).sql(dialect=dialect)


class SqlOperator(Operator):
    """Runs a SELECT inside the warehouse; its result becomes the node's table."""

    type_name: ClassVar[str] = "sql"
    config_model: ClassVar[type[NodeConfig]] = SqlConfig
    min_inputs: ClassVar[int] = 0
    max_inputs: ClassVar[int | None] = None

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        config = self.config
        assert isinstance(config, SqlConfig)  # noqa: S101 - type narrowing, not input checking
        wh = ctx.warehouse
        dialect = wh.dialect
        upstream = ctx.options.get("pipeline_nodes", set(inputs))
        mapping = {name: (wh.schema, ctx.table_name(node=name)) for name in upstream}
        query = rewrite_node_refs(config.sql, mapping, dialect)
        try:
            table = wh.sql(query)
        except Exception as exc:
            raise NodeError(ctx.node, f"the query failed in the {dialect} warehouse: {_short(exc)}") from exc
        return NodeOutput(table=table, metrics={"query": query})


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

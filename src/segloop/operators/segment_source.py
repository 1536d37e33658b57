"""Node `segment_source`: a Segment source schema (tracks, identifies, users, event tables).

The node checks the source's tables exist and exposes each one to downstream SQL as a
VIEW ``<pipeline>__<node>__<table>`` in the output schema: nothing is copied, the warehouse
reads the source tables when a downstream query runs. A sql node names them as
``<node>.<table>`` (``select * from src.order_completed``) or, when it declares the source
as its input, by short name (``select * from tracks``).

The node's own table ``<pipeline>__<node>`` is a small catalog: one row per exposed table
(short name, view, source table, window). An optional window on ``received_at`` limits what
downstream nodes see: ``since: 30d`` (relative to the run), ``since: 2026-01-01``, or
``incremental: true`` (rows received after the high-water mark of the last successful,
non-dry run of this pipeline, read from the run history).

Segment stores an event's ``products`` array (the e-commerce spec's Order Completed, Cart
Viewed, Checkout Started, ...) as a JSON string. For every exposed table with such a
column the node also exposes ``<table>_products``: one row per product, the event's
columns next to the spec's product fields (``product_id``, ``sku``, ``category``, ...).
The unnesting is an Ibis expression, so each warehouse gets its own SQL for it
(``json_array_elements`` on PostgreSQL, ``unnest`` of a JSON list on DuckDB), or the
warehouse's own (``LATERAL VIEW explode`` on Spark: ``Warehouse.unnest_json_objects``); a
query over the view is the same on all of them. Other warehouses skip the view with a warning.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from segloop.errors import NodeError
from segloop.operators.base import NodeConfig, NodeOutput, Operator, RunContext

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

    from segloop.warehouses import Warehouse

CORE_TABLES = ("tracks", "identifies", "users")
WINDOW_COLUMN = "received_at"
DURATION = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
PRODUCTS_COLUMN = "products"
PRODUCTS_SUFFIX = "_products"
# The products view needs JSON unnesting that Ibis compiles correctly (``Warehouse.UNNESTS_JSON``,
# checked by the tests), or the warehouse's own SQL (``Warehouse.unnest_json_objects``: Spark's
# LATERAL VIEW explode, Snowflake's LATERAL FLATTEN); elsewhere (BigQuery) the view is skipped
# with a warning.
# Segment's e-commerce spec: product fields and their column types in `<table>_products`.
# Numbers are float64 (a quantity sent as 1.5 must not fail the query on any warehouse).
PRODUCT_FIELDS: dict[str, str] = {
    "product_id": "string", "sku": "string", "category": "string", "name": "string",
    "brand": "string", "variant": "string", "price": "float64", "quantity": "float64",
    "coupon": "string",
}


def parse_since(value: str | date | datetime) -> timedelta | datetime:
    """``30d`` / ``12h`` / ``2w`` / ``90m`` -> a timedelta; an ISO date or time -> a datetime."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime.combine(value, datetime.min.time())
    match = DURATION.match(value)
    if match:
        return timedelta(**{UNITS[match.group(2)]: int(match.group(1))})
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"`since: {value}` is neither a duration (30d, 12h, 2w, 90m) nor a date (2026-01-31)"
        ) from None


class SegmentSourceConfig(NodeConfig):
    type: Literal["segment_source"] = "segment_source"
    schema_: str = Field(alias="schema", description="The Segment source's schema (one per source).")
    tables: list[str] | None = Field(
        default=None, description="Tables to expose; default: every table in the schema."
    )
    since: str | date | datetime | None = Field(
        default=None, description="Only rows received in this window: 30d, 12h, or a date."
    )
    incremental: bool = Field(
        default=False, description="Only rows received since the last successful run."
    )
    identity: Literal["none", "stitch", "profiles"] = Field(
        default="none",
        description="`stitch`: add `canonical_user_id` to every event view, resolved through "
        "identifies and aliases; `profiles`: resolved through Segment's Profiles Sync tables.",
    )
    shared_device: Literal["first", "none"] = Field(
        default="first",
        description="An anonymous id seen with two users: `first` gives its anonymous events "
        "to the user it was first seen with (Segment's merge protection), `none` to nobody.",
    )
    profiles_schema: str | None = Field(
        default=None,
        description="With `identity: profiles`: the Profiles Sync schema, if not `schema`.",
    )
    products: bool = Field(
        default=True,
        description="Also expose `<table>_products` (one row per product) for tables with a "
        "`products` JSON array column, e.g. order_completed_products.",
    )

    model_config = NodeConfig.model_config | {"populate_by_name": True}

    @field_validator("since")
    @classmethod
    def _valid_since(cls, value: str | date | datetime | None) -> str | date | datetime | None:
        if value is not None:
            parse_since(value)
        return value

    @field_validator("tables")
    @classmethod
    def _tables_not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("`tables` is empty; name tables or drop the key to expose all")
        return value

    @model_validator(mode="after")
    def _one_window(self) -> SegmentSourceConfig:
        if self.since is not None and self.incremental:
            raise ValueError("give either `since` or `incremental: true`, not both")
        if self.profiles_schema is not None and self.identity != "profiles":
            raise ValueError("`profiles_schema` is read with `identity: profiles` only")
        return self


class SegmentSourceOperator(Operator[SegmentSourceConfig]):
    """Checks a Segment source schema and exposes its tables to downstream SQL as views."""

    type_name: ClassVar[str] = "segment_source"
    config_model: ClassVar[type[NodeConfig]] = SegmentSourceConfig
    OUTPUT_IN_PYTHON: ClassVar[bool] = True
    min_inputs: ClassVar[int] = 0
    max_inputs: ClassVar[int | None] = 0
    WRITES_WHEN_RUN: ClassVar[bool] = True  # its views

    def run(self, inputs: dict[str, ir.Table], ctx: RunContext) -> NodeOutput:
        import ibis
        import pyarrow as pa

        config = self.config
        wh = ctx.warehouse
        schema, present = self._present_tables(wh, ctx)
        chosen = self._chosen_tables(present, ctx)
        lower_bound, marks_before = self._window_start(ctx)
        rows: list[dict[str, Any]] = []
        marks: dict[str, str] = {}
        identity = None
        if config.identity != "none":
            from segloop.operators.source_identity import build_identity

            identity = build_identity(self, ctx, schema, present, chosen)
            rows.extend(identity.catalog)
        for short in chosen:
            actual = present[short]
            table = wh.table(actual, schema=schema)
            column = _column(table, WINDOW_COLUMN)
            start = marks_before.get(short) if config.incremental else lower_bound
            window = "all rows"
            if (config.since is not None or config.incremental) and column is None:
                ctx.warn(f"table {config.schema_}.{actual} has no `{WINDOW_COLUMN}` column; "
                         "it is exposed without the time window")
            elif column is not None and (config.since is not None or config.incremental):
                if config.incremental:
                    high = wh.to_arrow(table.aggregate(hwm=table[column].max()))["hwm"][0].as_py()
                    if high is not None:
                        marks[short] = high.isoformat()
                        table = table.filter(table[column] <= ibis.literal(high).cast(table[column].type()))
                        window = f"{column} <= {high.isoformat()}"
                if start is not None:
                    start_ts = datetime.fromisoformat(start) if isinstance(start, str) else start
                    table = table.filter(table[column] > ibis.literal(start_ts).cast(table[column].type()))
                    window = f"{column} > {start_ts.isoformat()}" + (
                        f" and {window}" if window != "all rows" else "")
            if identity is not None:
                table = identity.apply(table)
            view = ctx.table_name(short)
            _create_view(wh, view, table)
            rows.append({"table": short, "view": f"{wh.schema}.{view}",
                         "source": f"{schema}.{actual}", "window": window})
            items = _column(table, PRODUCTS_COLUMN) if config.products else None
            if items is not None and (table[items].type().is_string() or table[items].type().is_json()):
                name = short + PRODUCTS_SUFFIX
                if not wh.UNNESTS_JSON:
                    ctx.warn(f"`{name}` (one row per product of `{short}`) cannot be built "
                             f"on {wh.backend}; unnest `{items}` in a sql node, "
                             "or set `products: false` to silence this")
                    continue
                if name in present:
                    ctx.warn(f"table {config.schema_}.{present[name]} exists, so the products of "
                             f"`{short}` are not exposed as `{name}`; read it with SQL instead")
                    continue
                _create_view(wh, ctx.table_name(name), products_expr(table, items, wh))
                rows.append({"table": name, "view": f"{wh.schema}.{ctx.table_name(name)}",
                             "source": f"{schema}.{actual}.{items}", "window": window})
        catalog = pa.Table.from_pylist(rows, schema=pa.schema(
            [("table", pa.string()), ("view", pa.string()), ("source", pa.string()), ("window", pa.string())]))
        metrics: dict[str, Any] = {"schema": config.schema_, "tables": [row["table"] for row in rows]}
        if config.incremental:
            metrics["high_water_marks"] = {**marks_before, **marks}
        if identity is not None:
            metrics.update(identity.metrics)
        ctx.progress(len(rows), len(rows))
        return NodeOutput(table=catalog, metrics=metrics)

    # -- checks --------------------------------------------------------------------------

    def _present_tables(self, wh: Warehouse, ctx: RunContext) -> tuple[str, dict[str, str]]:
        """The schema's actual name, and short (lower-case) -> actual name of its tables."""
        config = self.config
        schemas = wh.list_schemas()
        by_lower = {s.lower(): s for s in schemas}
        if config.schema_ not in schemas and config.schema_.lower() not in by_lower:
            from segloop.segment.sources import segment_sources

            found = [s.schema for s in segment_sources(wh)]
            hint = f"Segment sources in this warehouse: {', '.join(found)}" if found else \
                "no schema in this warehouse holds `tracks` or `identifies`"
            raise NodeError(ctx.node, f"schema `{config.schema_}` does not exist in warehouse "
                            f"`{wh.name}` ({hint}); fix `schema:`")
        from segloop.segment.sources import segment_tables

        schema = config.schema_ if config.schema_ in schemas else by_lower[config.schema_.lower()]
        return schema, {name.lower(): name for name in segment_tables(wh.list_tables(schema))}

    def _chosen_tables(self, present: dict[str, str], ctx: RunContext) -> list[str]:
        config = self.config
        existing = ", ".join(sorted(present)) or "no tables"
        if config.tables is None:
            if not any(core in present for core in CORE_TABLES[:2]):
                raise NodeError(ctx.node, f"schema `{config.schema_}` does not look like a Segment "
                                f"source: it has neither `tracks` nor `identifies` (it has: {existing})")
            return sorted(present, key=_table_order)
        missing = [t for t in config.tables if t.lower() not in present]
        if missing:
            raise NodeError(ctx.node, f"table(s) {', '.join(missing)} not found in schema "
                            f"`{config.schema_}` (it has: {existing}); fix `tables:`")
        return [t.lower() for t in config.tables]

    def _window_start(self, ctx: RunContext) -> tuple[datetime | None, dict[str, str]]:
        """Lower bound of ``since`` and, for ``incremental``, the previous high-water marks."""
        config = self.config
        if config.since is not None:
            since = parse_since(config.since)
            if isinstance(since, timedelta):
                return datetime.now(UTC).replace(tzinfo=None) - since, {}
            return since, {}
        if config.incremental:
            return None, self._previous_marks(ctx)
        return None, {}

    def _previous_marks(self, ctx: RunContext, key: str = "high_water_marks") -> dict[str, str]:
        """High-water marks recorded by the last successful, non-dry run of this pipeline."""
        store = ctx.history
        if store is None:
            ctx.warn("`incremental: true` without a workspace has no run history; reading all rows")
            return {}
        # Marks only move forward, so the latest successful run holds the highest ones; taking
        # the maximum per table does not depend on how runs in the same second are ordered.
        marks: dict[str, datetime] = {}
        for run in store.list_runs(ctx.pipeline, limit=1000):
            if run.status != "success" or run.dry_run or run.id == ctx.run_id:
                continue
            for node in run.nodes:
                recorded = node.metrics.get(key) if node.node == ctx.node else None
                if node.status != "success" or not isinstance(recorded, dict):
                    continue
                for table, value in recorded.items():
                    mark = datetime.fromisoformat(str(value))
                    if table not in marks or mark > marks[table]:
                        marks[str(table)] = mark
        return {table: mark.isoformat() for table, mark in marks.items()}


def products_expr(table: ir.Table, column: str, wh: Warehouse | None = None) -> ir.Table:
    """One row per element of the JSON array in ``column``: the event's other columns, then
    the spec's product fields (named ``product_<field>`` if the event has that column).

    A product id sent as a number becomes its text, so ids compare with other tables' ids.
    Rows whose column is NULL, not an array, or an empty array give no rows. A warehouse
    with SQL of its own for this (``wh.unnest_json_objects``: Spark) builds it that way.
    """
    import ibis

    event_columns = [c for c in table.columns if c != column]
    taken = {c.lower() for c in event_columns}
    names = {(field if field not in taken else f"product_{field}"): (field, dtype)
             for field, dtype in PRODUCT_FIELDS.items()}
    own = wh.unnest_json_objects(table, column, names) if wh is not None else None
    if own is not None:
        return own
    unnested = table.mutate(_segloop_item=table[column].cast("json").array.unnest())
    item = unnested._segloop_item
    fields: dict[str, ir.Value] = {}
    for name, (field, dtype) in names.items():
        value = item[field]
        if dtype == "string":
            text = value.str
            if field == "product_id":
                text = ibis.coalesce(text, value.int.cast("string"))
            fields[name] = text
        else:
            fields[name] = value.float.cast(dtype)
    return unnested.select(*event_columns, **fields)


def _table_order(name: str) -> tuple[int, str]:
    return (CORE_TABLES.index(name) if name in CORE_TABLES else len(CORE_TABLES), name)


def _column(table: ir.Table, name: str) -> str | None:
    for column in table.columns:
        if column.lower() == name:
            return column
    return None


def _create_view(wh: Warehouse, name: str, expr: ir.Table) -> None:
    """Create or replace a view in the output schema (a table of the same name is dropped)."""
    from segloop.errors import WarehouseError

    try:
        # Replaced in place where the warehouse allows it: on PostgreSQL a view can only be
        # dropped together with the views of later nodes that read it.
        wh.replace_view(name, expr)
    except Exception as exc:
        raise WarehouseError(f"could not create view {wh.schema}.{name}: {str(exc).strip().splitlines()[0]}. "
                             "segloop's user needs CREATE on the output schema and SELECT on the "
                             "source schema") from exc

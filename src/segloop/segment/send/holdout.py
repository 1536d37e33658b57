"""Holdout groups of a Segment node: customers who are never sent, the same on every run and machine.

A Segment node with ``holdout: {percent: 10, salt: "spring-2026"}`` keeps about 10% of its
customers out of every send, so a ``lift`` node can later compare what they did with what
the customers who were sent did. A customer's group depends only on its id and the salt:

    h = the first 8 hex digits of md5(salt + ":" + customer_id), read as a number in [0, 2**32)
    holdout  if  h < round(percent / 100 * 2**32),  treatment otherwise

The hash runs in the warehouse (``Warehouse.md5_hex``); the first 8 lower-case hex digits
are compared as text with the threshold written as 8 lower-case hex digits, which orders
exactly as the numbers do (the rule is `warehouses/sampling.py`'s, which samples use too). ``group_of`` is the same rule in Python (the reference the tests
check every warehouse against). The customer id is the text of the node's ``customer_id``
column, as the sync state keys it (``123`` and ``'123'`` are the same customer).

Every customer the node sees is recorded once in ``<pipeline>__<node>__holdout``
(``customer_id``, ``group_name``, ``first_assigned``, ``run_id``, ``percent``, ``salt``):
``first_assigned`` is the time of the run that first saw the customer and never changes.
Changing ``percent`` or ``salt`` after customers were assigned would move customers between
groups (held-out customers would start receiving messages, treated ones would join the
holdout after being treated), so the node refuses to run until the settings are restored
or the experiment is ended with ``segloop reset PIPELINE NODE --holdout`` (docs/holdout.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from segloop.errors import NodeError
from segloop.warehouses import sampling

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

    from segloop.warehouses import Warehouse

HOLDOUT, TREATMENT = "holdout", "treatment"
SUFFIX = "holdout"  # the assignment table is <pipeline>__<node>__holdout
COLUMNS = ("customer_id", "group_name", "first_assigned", "run_id", "percent", "salt")


def threshold_hex(percent: float) -> str:
    """``round(percent / 100 * 2**32)`` as 8 lower-case hex digits (percent is in (0, 100))."""
    return sampling.threshold_hex(percent / 100)


def group_of(customer_id: str, salt: str, percent: float) -> str:
    """The group of one customer, computed in Python: the rule the warehouse's SQL follows."""
    return HOLDOUT if sampling.in_sample(customer_id, percent / 100, salt) else TREATMENT


@dataclass(frozen=True)
class Holdout:
    """The holdout settings of one Segment node, and its assignment table."""

    percent: float
    salt: str
    table: str  # <pipeline>__<node>__holdout, in the warehouse's output schema
    node: str

    def held_out(self, wh: Warehouse, key: ir.StringValue) -> ir.BooleanValue:
        """Whether the customer ``key`` (text) is in the holdout group, as a warehouse expression."""
        return sampling.sample_filter(wh.key_hash(key, self.salt), self.percent / 100)

    # -- the assignment table ------------------------------------------------------------

    def check_settings(self, wh: Warehouse, pipeline: str) -> None:
        """Refuse to run when customers were assigned under another percent or salt."""
        table = wh.table_if_exists(self.table)
        if table is None:
            return
        found = wh.rows(table.select("percent", "salt").distinct().limit(5))
        others = [r for r in found if (float(r["percent"]), r["salt"]) != (float(self.percent), self.salt)]
        if not others:
            return
        before = others[0]
        changed = []
        if float(before["percent"]) != float(self.percent):
            changed.append(f"percent {_num(before['percent'])} -> {_num(self.percent)}")
        if before["salt"] != self.salt:
            changed.append(f"salt {before['salt']!r} -> {self.salt!r}")
        raise NodeError(
            self.node,
            f"the holdout changed ({', '.join(changed)}) since customers were assigned in "
            f"{wh.schema}.{self.table}. Changing it would send customers who were held out and "
            "hold out customers who were already sent, which spoils the experiment, so nothing "
            f"was sent. To keep the experiment, restore `percent: {_num(before['percent'])}` and "
            f"`salt: {before['salt']}`; to end it and draw new groups with the new settings, run "
            f"`segloop reset {pipeline} {self.node} --holdout` (the old assignments are kept "
            "under a dated name for the lift of the old experiment)",
        )

    def assign(self, wh: Warehouse, keys: ir.Table, run_id: str, now: datetime | None = None) -> int:
        """Record customers seen for the first time (``keys``: one ``_key`` text column,
        distinct, no NULLs); returns how many were added. Earlier rows are never touched."""
        import ibis

        if not wh.has_table(self.table):
            wh.create_empty(self.table, table_schema())
        existing = wh.table(self.table)
        stamp = (now or datetime.now(UTC)).replace(tzinfo=None)
        fresh = keys.anti_join(existing, keys._key == existing.customer_id)
        fresh = fresh.select(
            customer_id=fresh._key,
            group_name=ibis.ifelse(self.held_out(wh, fresh._key), ibis.literal(HOLDOUT), ibis.literal(TREATMENT)),
            first_assigned=ibis.literal(stamp, type="timestamp"),
            run_id=ibis.literal(run_id, type="string"),
            percent=ibis.literal(float(self.percent), type="float64"),
            salt=ibis.literal(self.salt, type="string"),
        )
        count = wh.count(fresh)
        if count:
            columns = ", ".join(wh.quote(c) for c in COLUMNS)
            wh.raw_sql(f"INSERT INTO {wh.qualified(self.table)} ({columns}) {wh.compile(fresh)}")
        return count

    def end(self, wh: Warehouse, now: datetime | None = None) -> str | None:
        """End the experiment: keep the assignments as ``<table>_until_<UTC time>`` and
        start afresh on the next run. Returns the archive's name (None: nothing assigned)."""
        table = wh.table_if_exists(self.table)
        if table is None:
            return None
        stamp = (now or datetime.now(UTC)).strftime("%Y%m%d_%H%M%S")
        archive, n = f"{self.table}_until_{stamp}", 1
        while wh.has_table(archive):  # two experiments ended within a second: keep both
            n += 1
            archive = f"{self.table}_until_{stamp}_{n}"
        wh.create_table(archive, table)
        wh.drop_table(self.table)
        return archive


def table_schema() -> Any:
    import ibis

    return ibis.schema({
        "customer_id": "string", "group_name": "string", "first_assigned": "timestamp",
        "run_id": "string", "percent": "float64", "salt": "string",
    })


def _num(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)

"""Pipeline text many tests start from: the demo shop's orders -> rfm nodes, in two spellings.

A test that needs "a valid pipeline" puts a header of its own (name, warehouse, ...) above
SQL_RFM (or SQL_RFM_KNOWN) and its own nodes below. Tests that check an error's line number
count on SQL_RFM's nine lines as they are. `segloop init`'s example
(segloop.cli.PIPELINE_TEMPLATE) is not built from this: the tests of `init` check what it
writes on their own terms.
"""

from __future__ import annotations

# The `orders` sql node over Segment's Order Completed table and the `rfm` node over it,
# indented to sit under `nodes:`.
SQL_RFM = """\
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from demo_shop.order_completed
  rfm:
    type: rfm
    input: orders
    customer_id: user_id
    timestamp: timestamp
    amount: revenue
"""

# The same two nodes as the demo pipelines write them: customers with a user_id only, and
# the rfm node's default column names.
SQL_RFM_KNOWN = """\
  orders:
    type: sql
    sql: select user_id, "timestamp", revenue from demo_shop.order_completed where user_id is not null
  rfm:
    type: rfm
    input: orders
"""

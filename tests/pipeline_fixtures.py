"""Pipeline text many tests start from: the demo shop's orders -> rfm nodes.

A test that needs "a valid pipeline" puts a header of its own (name, warehouse, ...) above
SQL_RFM and its own nodes below. Tests that check an error's line number count on these
nine lines as they are. `segloop init`'s example (segloop.cli.PIPELINE_TEMPLATE) is not
built from this: the tests of `init` check what it writes on their own terms.
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

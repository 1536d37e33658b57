"""A deterministic sample of rows by a hash of their key, computed in the warehouse.

A node that trains on a sample when its rows exceed ``memory_limit`` should pull only the
sample into Python, and pick the same customers on every run, on every warehouse and
whatever order the rows come in. The rule (the same as a holdout group's, see
``segment/send/holdout.py``):

    h = the first 8 hex digits of md5(salt + ":" + key), read as a number in [0, 2**32)
    the row is in the sample  if  h < round(share * 2**32)

``key`` is the text of the key column (``123`` and ``'123'`` are the same key); rows whose
key is NULL are never in it. The warehouse compares the 8 lower-case hex digits as text
with the threshold written the same way, which orders exactly as the numbers do, so no
engine needs a hex-to-integer function. MD5 is the one hash every supported engine has
and computes alike (DuckDB, PostgreSQL, Snowflake and Spark as ``md5(text)``; BigQuery
through ``Warehouse.md5_hex``), so a sample is the same on all of them. ``in_sample`` is
the rule in Python: the reference the tests check each warehouse against.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir

HASH_DIGITS = 8  # hex digits of the md5 read as the key's number: 32 bits
HASH_RANGE = 16**HASH_DIGITS


def threshold_hex(share: float) -> str:
    """``round(share * 2**32)`` as 8 lower-case hex digits, for ``0 <= share < 1``."""
    return f"{min(round(share * HASH_RANGE), HASH_RANGE - 1):0{HASH_DIGITS}x}"


def in_sample(key: str | int, share: float, salt: str = "") -> bool:
    """Whether the row keyed ``key`` is in the sample of ``share`` for ``salt`` (in Python)."""
    if share >= 1:
        return True
    digest = hashlib.md5(f"{salt}:{key}".encode()).hexdigest()
    return digest[:HASH_DIGITS] < threshold_hex(share)


def sample_filter(digest: ir.StringValue, share: float) -> ir.BooleanValue:
    """The condition on ``md5_hex(salt + ":" + key)`` that keeps ``share`` of the keys."""
    import ibis

    return digest.substr(0, HASH_DIGITS) < ibis.literal(threshold_hex(share))

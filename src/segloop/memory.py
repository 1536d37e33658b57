"""How much memory a node may hold in Python: the `memory_limit:` setting.

A model node pulls rows out of the warehouse to train and score. What it may keep in
Python at once is bounded by a byte budget that does not grow with the data: the
workspace's ``memory_limit:`` (``segloop.yml``), or a node's own ``memory_limit:``.
A node that needs more rows than fit trains on a sample (and says so in its metrics)
and scores in chunks streamed back to the warehouse. The warehouse's own memory
(DuckDB's ``memory_limit`` and spill directory) is set on the warehouse, not here.

Sizes are written as pydantic's ``ByteSize`` reads them: ``512MB``, ``2GB`` (decimal),
``2GiB`` (binary), or a number of bytes.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from pydantic import AfterValidator, ByteSize, TypeAdapter

DEFAULT_MEMORY_LIMIT = "2GB"
"""What a node may hold in Python when neither the workspace nor the node says."""

_SIZE: TypeAdapter[ByteSize] = TypeAdapter(ByteSize)


def parse_size(value: str | int) -> int:
    """``"2GB"`` / ``"512MiB"`` / ``1000000`` as bytes; a clear ``ValueError`` otherwise."""
    try:
        return int(_SIZE.validate_python(value))
    except Exception as exc:
        raise ValueError(
            f"`{value}` is not a size; write it like 512MB, 2GB or 2GiB (or a number of bytes)"
        ) from exc


DEFAULT_MEMORY_LIMIT_BYTES = parse_size(DEFAULT_MEMORY_LIMIT)

MIN_MEMORY_LIMIT = "64KB"
"""The smallest `memory_limit:` accepted: below it a node would train on a few hundred rows
at most, so `0` or `1KB` is a typo (or a hope that 0 means "no limit"), not a plan. Small
limits above it are allowed on purpose: they make a node sample on small data."""
MIN_MEMORY_LIMIT_BYTES = parse_size(MIN_MEMORY_LIMIT)


def _at_least_the_minimum(value: ByteSize) -> ByteSize:
    if int(value) < MIN_MEMORY_LIMIT_BYTES:
        raise ValueError(
            f"memory_limit {value.human_readable(decimal=True)} is below the minimum {MIN_MEMORY_LIMIT}: "
            f"write at least {MIN_MEMORY_LIMIT}, or leave the key out for the default {DEFAULT_MEMORY_LIMIT} "
            "(there is no unlimited setting)"
        )
    return value


MemoryLimit = Annotated[ByteSize, AfterValidator(_at_least_the_minimum)]
"""A `memory_limit:` field: a size (``512MB``, ``2GB``) of at least ``MIN_MEMORY_LIMIT``."""


def rows_within(limit: int, bytes_per_row: float, share: float = 1.0) -> int:
    """How many rows of ``bytes_per_row`` fit in ``share`` of a ``limit`` bytes budget (at least 1)."""
    if bytes_per_row <= 0:
        raise ValueError("bytes_per_row must be positive")
    return max(1, int(limit * share // bytes_per_row))


DUCKDB_SHARE = 0.25
"""Share of the machine's memory DuckDB may use by default (its own default is 80%)."""
DUCKDB_STEP = 512 * 2**20
"""The default is a multiple of 512 MiB: DuckDB shows its limit rounded down to 0.1 GiB, so
a value read back and set again (segloop.segment.sync does) must be exact in that form."""
DUCKDB_MAX_DEFAULT = 3 * 2**30
DUCKDB_MIN_DEFAULT = DUCKDB_STEP


def physical_memory() -> int | None:
    """Bytes of memory of this machine; None where the OS does not say."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def duckdb_memory_limit(total: int | None = None) -> str:
    """The DuckDB ``memory_limit`` segloop sets when the warehouse config does not.

    A quarter of the machine's memory in steps of 512 MiB, between 512 MiB and 3 GiB:
    DuckDB runs in segloop's own process, next to the Python side of the nodes
    (``memory_limit:`` above, 2 GB by default), so DuckDB's own default (80% of the memory)
    would leave them nothing. Beyond it DuckDB spills to its ``temp_directory`` instead of
    failing.
    """
    total = physical_memory() if total is None else total
    share = DUCKDB_MAX_DEFAULT if total is None else int(total * DUCKDB_SHARE) // DUCKDB_STEP * DUCKDB_STEP
    return f"{min(max(share, DUCKDB_MIN_DEFAULT), DUCKDB_MAX_DEFAULT) // 2**20}MiB"


def release_freed_memory() -> None:
    """Return what the process has freed to the operating system, after a model node.

    A model node frees its matrices when it ends, but glibc's allocator keeps freed blocks
    for reuse, and so does Arrow's (jemalloc or mimalloc), so the process's resident memory
    stays at the node's peak and the next nodes start from there. ``malloc_trim`` hands
    glibc's back (glibc only; elsewhere nothing happens), Arrow's pool releases its unused
    memory. No garbage collection: a full one after every node made a test pipeline's run
    1.6x slower, and the arrays are freed by reference counting.
    """
    import sys

    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no glibc (musl has no malloc_trim)
        return None

"""What reaches Spark's driver: rows collected from Spark and rows uploaded into it, counted.

``DriverTraffic`` wraps the PySpark calls that move rows between the executors and the
Python driver (``DataFrame.collect`` / ``toArrow`` / ``toPandas`` / ``toLocalIterator`` /
``tail``, which ``take``, ``first``, Ibis's ``to_pyarrow`` and segloop's ``to_batches``
go through, and ``SparkSession.createDataFrame``) and records the rows of each call, so
a test can say "no call moved more rows than the catalogue has" for a node run on Spark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class DriverTraffic:
    collected: list[int] = field(default_factory=list)  # rows per call, Spark -> driver
    uploaded: list[int] = field(default_factory=list)  # rows per call, driver -> Spark
    depth: int = 0  # calls made inside a counted call (toPandas -> collect) count once

    @property
    def largest(self) -> int:
        return max(self.collected + self.uploaded, default=0)

    @property
    def total(self) -> int:
        return sum(self.collected) + sum(self.uploaded)


def _rows(result: Any) -> int:
    if result is None:
        return 0
    if hasattr(result, "num_rows"):
        return int(result.num_rows)
    if hasattr(result, "__len__"):
        return len(result)
    return 1


@contextmanager
def driver_traffic(monkeypatch: pytest.MonkeyPatch, traffic: DriverTraffic | None = None) -> Iterator[DriverTraffic]:
    """Count the rows moved while the block runs (into ``traffic`` when given)."""
    from pyspark.sql.classic.dataframe import DataFrame
    from pyspark.sql.session import SparkSession

    traffic = traffic if traffic is not None else DriverTraffic()

    def counted(original: Callable[..., Any], into: list[int], rows_of: Callable[[Any, tuple[Any, ...]], int]
                ) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            traffic.depth += 1
            try:
                result = original(*args, **kwargs)
            finally:
                traffic.depth -= 1
            if traffic.depth == 0:
                if hasattr(result, "__next__"):  # toLocalIterator: count rows as they come
                    return _counting(result, into)
                into.append(rows_of(result, args))
            return result

        return wrapper

    def _counting(rows: Iterator[Any], into: list[int]) -> Iterator[Any]:
        n = 0
        for row in rows:
            n += 1
            yield row
        into.append(n)

    with monkeypatch.context() as patch:
        for name in ("collect", "toArrow", "toPandas", "toLocalIterator", "tail"):
            patch.setattr(DataFrame, name, counted(getattr(DataFrame, name), traffic.collected,
                                                   lambda result, args: _rows(result)))
        patch.setattr(SparkSession, "createDataFrame",
                      counted(SparkSession.createDataFrame, traffic.uploaded,
                              lambda result, args: _rows(args[1]) if len(args) > 1 else 0))
        yield traffic


def bare_python(folder: Path) -> str:
    """A Python without segloop or any library (a virtual environment of nothing): what an
    executor whose Python lacks them runs; give it to ``SparkContext.pythonExec``."""
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder / "bare")], check=True)
    return str(folder / "bare" / "bin" / "python")

"""What reading workspace files within limits costs: a refused alias bomb, a 1 MB file, a workspace scan.

    .venv/bin/python bench/yaml_limits.py [--repeat 5]

Each figure is the median of ``--repeat`` runs in this process (libyaml parsing when
PyYAML has it, as installed from PyPI). Peak memory is Python's allocations (tracemalloc)
during one run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from segloop.config import Workspace, parse_pipeline
from segloop.errors import ConfigError
from segloop.yaml_doc import MAX_FILE_BYTES, load_yaml

BOMB = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
)
NODE = "  n{i}:\n    type: sql\n    sql: select {i} as user_id, revenue, \"timestamp\" from demo_shop.orders\n"


def big_pipeline() -> str:
    """A valid pipeline file just under the size limit (about 12,000 sql nodes)."""
    text, i = "name: big\nnodes:\n", 0
    while len(text) + len(NODE.format(i=i)) < MAX_FILE_BYTES:
        text += NODE.format(i=i)
        i += 1
    return text


def measure(run: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Median seconds over ``repeat`` runs, and peak MB of Python allocations during one."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak / 1e6


def refuse_bomb() -> None:
    try:
        load_yaml(BOMB, "bomb.yml")
    except ConfigError:
        return
    raise AssertionError("the alias bomb was accepted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    big = big_pipeline()
    rows = []
    rows.append((f"refuse a {len(BOMB)}-byte alias bomb (9**9 strings)", *measure(refuse_bomb, args.repeat)))
    rows.append((f"read the YAML of a {len(big.encode()):,}-byte pipeline ({big.count('type: sql'):,} nodes)",
                 *measure(lambda: load_yaml(big, "big.yml"), args.repeat)))
    rows.append(("read + check it (sqlglot parses each node's SQL)",
                 *measure(lambda: parse_pipeline(big, "big.yml"), args.repeat)))
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "pipelines").mkdir()
        for i in range(50):
            (root / "pipelines" / f"p{i}.yml").write_text(f"name: p{i}\nnodes:\n" + NODE.format(i=i))
        (root / "pipelines" / "bomb.yml").write_text(BOMB)
        workspace = Workspace.load(root)
        rows.append(("find a pipeline by name among 50 files + a bomb", *measure(
            lambda: workspace.find_pipeline("p49"), args.repeat)))
    print(f"libyaml: {yaml.__with_libyaml__}, repeat {args.repeat}")
    print("| what | median | peak Python memory |")
    print("| --- | ---: | ---: |")
    for what, seconds, mb in rows:
        print(f"| {what} | {seconds * 1000:,.1f} ms | {mb:,.1f} MB |")


if __name__ == "__main__":
    main()

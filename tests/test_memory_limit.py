"""`memory_limit:`: what a node may hold in Python, from the workspace or the node itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from segloop.config import Workspace
from segloop.errors import ConfigError
from segloop.memory import DEFAULT_MEMORY_LIMIT_BYTES, parse_size, rows_within
from segloop.pipeline import Pipeline

PIPELINE = """\
name: shop
nodes:
  orders:
    type: sql
    sql: select 1 as user_id
  rfm:
    type: rfm
    input: orders
    customer_id: user_id
    timestamp: ts
    amount: revenue
    memory_limit: 300MiB
"""


def _workspace(tmp_path: Path, workspace_yml: str) -> Path:
    (tmp_path / "segloop.yml").write_text(workspace_yml)
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "shop.yml").write_text(PIPELINE)
    return tmp_path


def test_node_setting_overrides_the_workspace_and_sizes_read_as_users_write_them(tmp_path: Path) -> None:
    root = _workspace(tmp_path, "memory_limit: 1.5GB\n")
    pipeline = Pipeline.load(root / "pipelines" / "shop.yml")
    assert pipeline.memory_limit("orders") == 1_500_000_000
    assert pipeline.memory_limit("rfm") == 300 * 1024**2


def test_default_when_nobody_says(tmp_path: Path) -> None:
    root = _workspace(tmp_path, "name: w\n")
    assert Pipeline.load(root / "pipelines" / "shop.yml").memory_limit("orders") == DEFAULT_MEMORY_LIMIT_BYTES == 2 * 10**9


def test_a_bad_size_names_the_file_and_line(tmp_path: Path) -> None:
    _workspace(tmp_path, "name: w\nmemory_limit: lots\n")
    with pytest.raises(ConfigError) as caught:
        Workspace.load(tmp_path)
    assert "segloop.yml:2" in str(caught.value) and "memory_limit" in str(caught.value)


def test_parse_size_and_rows_within() -> None:
    assert parse_size("512MB") == 512 * 10**6 and parse_size("2GiB") == 2 * 1024**3 and parse_size(4096) == 4096
    with pytest.raises(ValueError, match="512MB"):
        parse_size("a lot")
    assert rows_within(1000, 10) == 100 and rows_within(1000, 10, share=0.5) == 50 and rows_within(5, 10) == 1


@pytest.mark.parametrize("where", ["workspace", "node"])
@pytest.mark.parametrize("value", ["0", "1KB", "60KB"])
def test_a_limit_too_small_to_hold_a_chunk_is_refused(tmp_path: Path, where: str, value: str) -> None:
    if where == "workspace":
        _workspace(tmp_path, f"name: w\nmemory_limit: {value}\n")
        with pytest.raises(ConfigError) as caught:
            Workspace.load(tmp_path)
        assert "segloop.yml:2" in str(caught.value)
    else:
        root = _workspace(tmp_path, "name: w\n")
        shop = root / "pipelines" / "shop.yml"
        shop.write_text(shop.read_text().replace("memory_limit: 300MiB", f"memory_limit: {value}"))
        with pytest.raises(ConfigError) as caught:
            Pipeline.load(shop)
        assert "shop.yml" in str(caught.value)
    assert "memory_limit" in str(caught.value) and "at least 64KB" in str(caught.value)


CHILD = """
import numpy as np, sys
from segloop.memory import release_freed_memory
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 // 2**20
blocks = [np.ones(1000) for _ in range(60_000)]  # 8 KB each: on glibc's heap, not mmap'ed
last = blocks[-1]  # still in use at the heap's top, so the heap cannot simply shrink
del blocks
held = rss()
if sys.argv[1] == "release":
    release_freed_memory()
print(held, rss())
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the process's RSS from /proc")
def test_memory_a_node_freed_goes_back_to_the_system_before_the_next_node() -> None:
    """The pipeline calls ``release_freed_memory`` after each model node: glibc keeps what a
    node freed (here ~470 MB of 8 KB arrays) as the process's memory, and the next nodes
    started from that."""
    import subprocess
    import sys

    def child(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
        held, after = map(int, out.stdout.split())
        return held, after

    held, kept = child("keep")
    assert held > 400 and kept > 400  # freed, yet still the process's: what the nodes saw
    held, released = child("release")
    assert held > 400 and released < held - 350

"""CI=true turns a missing optional test dependency or tool into a failure, not a quiet skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requirements import java_major_version

ROOT = Path(__file__).resolve().parents[1]

PROBE = '''
import pytest
from tests.requirements import missing, require_module

nothing_here = require_module("segloop_no_such_module", "pip install nothing") if {module_level} else None

def test_missing_tool():
    missing("the frobnicator is not on PATH")

def test_plain_importorskip():
    pytest.importorskip("segloop_no_such_module_either")

@pytest.mark.skip(reason="a deliberate skip, not a missing dependency")
def test_deliberate_skip():
    pass

def test_passes():
    pass
'''


def run_probe(tmp_path: Path, ci: str | None, module_level: bool = False) -> str:
    folder = tmp_path / f"{'module' if module_level else 'tests'}-ci-{ci}"
    folder.mkdir()
    (folder / "conftest.py").write_text(
        "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n")
    (folder / "test_probe.py").write_text(PROBE.format(module_level=module_level))
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--rootdir", str(folder),
         "-c", os.devnull, str(folder)],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )
    return done.stdout + done.stderr


def test_without_ci_a_missing_dependency_is_a_skip(tmp_path: Path) -> None:
    out = run_probe(tmp_path, None)
    assert "1 passed, 3 skipped" in out, out


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_missing_dependency_or_tool_fails_and_says_why(tmp_path: Path, ci: str) -> None:
    out = run_probe(tmp_path, ci)
    assert "2 failed, 1 passed, 1 skipped" in out, out
    assert "FAILED" in out and "test_missing_tool" in out and "test_plain_importorskip" in out
    assert "the frobnicator is not on PATH" in out
    assert "CI=true: a missing test dependency or tool is a failure here" in out
    assert "SKIPPED" in out and "a deliberate skip" in out  # other skips stay skips


def test_under_ci_a_module_that_cannot_import_its_dependency_fails(tmp_path: Path) -> None:
    assert "1 skipped" in run_probe(tmp_path, None, module_level=True)
    out = run_probe(tmp_path, "true", module_level=True)
    assert "segloop_no_such_module" in out and "pip install nothing" in out
    assert " skipped" not in out.splitlines()[-1] and "error" in out.splitlines()[-1], out


@pytest.mark.parametrize(("output", "major"), [
    ('openjdk version "17.0.15" 2025-04-15', 17),
    ('openjdk version "21" 2023-09-19', 21),
    ('java version "1.8.0_392"', 8),
    ('openjdk version "11.0.2" 2019-01-15', 11),
    ("bash: java: command not found", None),
])
def test_java_version_is_read_from_java_version_output(output: str, major: int | None) -> None:
    assert java_major_version(output) == major

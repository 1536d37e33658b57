"""segloop's modules import each other in layers, never in a cycle (docs/architecture.md).

``tools/import_cycles.py`` is run as `make check` runs it: on src/segloop it must find no
cycle. The checker itself is tried on small packages written here, so the guard is known
to fail when a cycle appears, including one hidden in a function.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT / "tools" / "import_cycles.py"


def check(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECKER), str(package)],
                          capture_output=True, text=True, timeout=120)


def write_package(root: Path, files: dict[str, str]) -> Path:
    package = root / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


def test_segloop_has_no_import_cycle() -> None:
    done = check(ROOT / "src" / "segloop")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("no import cycles among ")


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        ({"a.py": "from pkg import b\n", "b.py": "from pkg.a import x\nx = 1\n"}, "pkg.a -> pkg.b -> pkg.a"),
        # an import inside a function still runs, so it still counts
        ({"a.py": "def f():\n    from pkg import b\n", "b.py": "import pkg.a\n"}, "pkg.a -> pkg.b -> pkg.a"),
        # relative imports, through a subpackage
        ({"a.py": "from .sub import c\n", "sub/__init__.py": "", "sub/c.py": "from .. import a\n"},
         "pkg.a -> pkg.sub.c -> pkg.a"),
    ],
)
def test_a_cycle_fails_the_check_and_names_the_imports(tmp_path: Path, files: dict[str, str], cycle: str) -> None:
    done = check(write_package(tmp_path, files))
    assert done.returncode == 1
    assert "1 import cycle group(s)" in done.stdout
    assert cycle in done.stdout
    assert "pkg/a.py:" in done.stdout  # the file and line of the import to cut


def test_imports_for_type_checkers_only_do_not_count(tmp_path: Path) -> None:
    files = {
        "a.py": "from pkg import b\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n",
    }
    done = check(write_package(tmp_path, files))
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip() == "no import cycles among 3 modules"


def test_a_folder_that_is_not_a_package_is_a_clear_error(tmp_path: Path) -> None:
    done = check(tmp_path)
    assert done.returncode == 2
    assert "is not a package" in done.stdout and "src/segloop" in done.stdout

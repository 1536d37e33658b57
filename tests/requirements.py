"""Optional test dependencies and tools: skip where they are missing, fail under CI=true.

A laptop without Java or the `dev` extra can still run the rest of the suite; CI (which
runs `.ci/run` with CI=true) must run everything, so there a missing dependency or tool
is a failure, not a quiet skip. Tests call `require_module`, `require_java` or `missing`;
tests/conftest.py turns these skips (and plain `pytest.importorskip` ones) into failures
when CI is set.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
from types import ModuleType
from typing import NoReturn

import pytest

# Every skip raised here starts with this; the conftest hook recognises it (also in
# collection reports, which keep only the text).
MISSING = "missing test requirement: "
# What pytest.importorskip says when it is given no reason of its own.
IMPORTORSKIP = "could not import "


def ci_enforced() -> bool:
    """True when CI is set to a true value (CI=true, as GitHub Actions and .ci/run set)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def is_missing_requirement(reason: str) -> bool:
    text = reason.removeprefix("Skipped: ").strip()
    return text.startswith(MISSING) or text.startswith(IMPORTORSKIP)


def missing(what: str) -> NoReturn:
    """Skip (or, under CI=true, fail via the conftest hook) because ``what`` is missing."""
    raise pytest.skip.Exception(MISSING + what, allow_module_level=True)


def require_module(name: str, install: str) -> ModuleType:
    """Import an optional module, or skip saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"`{name}` cannot be imported ({exc}); install it: {install}")


JAVA_VERSION = re.compile(r'version "(\d+)(?:\.(\d+))?')


def java_major_version(output: str) -> int | None:
    """The major version in `java -version` output ("1.8.0_392" -> 8, "17.0.15" -> 17)."""
    found = JAVA_VERSION.search(output)
    if not found:
        return None
    major = int(found.group(1))
    if major == 1 and found.group(2):  # Java 8 and older say 1.x
        return int(found.group(2))
    return major


def require_java(minimum: int = 17) -> None:
    """Local Spark needs a Java runtime of at least ``minimum``; skip (or fail) otherwise."""
    java = shutil.which("java")
    if java is None:
        missing(f"local Spark needs Java {minimum}+ on PATH (apt-get install openjdk-{minimum}-jre-headless)")
    try:
        answer = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        missing(f"`{java} -version` did not answer ({exc}); local Spark needs Java {minimum}+")
    major = java_major_version(answer.stderr + answer.stdout)
    if major is None or major < minimum:
        first = (answer.stderr + answer.stdout).strip().splitlines()[:1]
        missing(f"local Spark needs Java {minimum}+, but `{java} -version` says "
                f"{first[0] if first else 'nothing'!r}; install openjdk-{minimum}-jre-headless")

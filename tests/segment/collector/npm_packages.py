"""Segment's JavaScript libraries for the client tests, installed from the npm registry once.

The test setup runs ``npm install`` of a pinned version into a cache folder
(``$SEGLOOP_NPM_CACHE``, default ``~/.cache/segloop-tests/npm``) the first time a test
needs it; later runs use the cache. Nothing is fetched at run time from anywhere else:
the browser test serves the installed bundle from a local server.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.requirements import missing

VERSIONS = {
    "@segment/analytics-next": "1.84.3",
    "@segment/analytics-node": "3.1.0",
}


def cache_root() -> Path:
    default = Path.home() / ".cache" / "segloop-tests" / "npm"
    return Path(os.environ.get("SEGLOOP_NPM_CACHE", default))


def npm_package(name: str) -> Path:
    """The folder of ``name`` (at its pinned version) installed in the cache: its package root."""
    version = VERSIONS[name]
    prefix = cache_root() / f"{name.replace('/', '+')}@{version}"
    target = prefix / "node_modules" / name
    if (target / "package.json").exists():
        return target
    npm = shutil.which("npm")
    if npm is None:  # under CI=true a failure (tests/requirements.py)
        missing("npm (Node.js) is not installed; the client tests install Segment's JS libraries with it")
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes install it once
        if not (target / "package.json").exists():
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(prefix),
                 f"{name}@{version}"],
                capture_output=True, text=True, timeout=600,
            )
            if done.returncode != 0 or not (target / "package.json").exists():
                pytest.fail(f"npm install {name}@{version} failed:\n{done.stderr[-2000:]}")
    return target

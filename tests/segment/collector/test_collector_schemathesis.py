"""Schemathesis, driven by the collector's own OpenAPI spec, finds no server error (loopback only)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from tests.requirements import require_module

schemathesis = require_module("schemathesis", "pip install -e '.[dev]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from segloop.segment.archive.files import read_all_messages  # noqa: E402
from segloop.segment.collector.app import serve_in_thread  # noqa: E402
from segloop.segment.collector.openapi import openapi_spec  # noqa: E402

KEY = "wk_fuzz"
# Bounded for the default run; SEGLOOP_FUZZ_EXAMPLES=300 for a longer hunt.
EXAMPLES_PER_OPERATION = int(os.environ.get("SEGLOOP_FUZZ_EXAMPLES", "25"))


@pytest.mark.slow
@pytest.mark.parametrize("authorized", [True, False], ids=["with-key", "as-generated"])
def test_schemathesis_finds_no_server_error(tmp_path: Path, authorized: bool):
    schema = schemathesis.openapi.from_dict(openapi_spec())
    headers = {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
    statuses: dict[int, int] = {}
    with serve_in_thread({KEY: "web"}, tmp_path / "collector") as running:
        for result in schema.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case) -> None:
                response = case.call(base_url=running.url, headers=headers if authorized else None, timeout=10)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, f"{case.method} {case.path}: {response.text}"

            check()
        accepted = running.stats["accepted"]
    assert not [code for code in statuses if code >= 500]
    if authorized:
        assert statuses.get(200, 0) > 0
        # Everything acknowledged is in the archive.
        assert len(read_all_messages(tmp_path / "collector" / "segment-logs")) == accepted

"""Property-based fuzz of the collector's request parsing: a clear 4xx or acceptance, always.

Hypothesis generates requests (methods, paths, headers, bodies: raw bytes, gzip, JSON of
any shape, Segment-like messages with wrong types) and checks the two layers:

- the pure parsing (``decode_body``, ``parse_json``, ``write_key_from``, ``prepare``) either
  returns or raises ``BadRequest`` with a reason and a sentence, nothing else;
- the collector on a loopback port answers every request within the client's timeout
  (never a hang) with a status below 500 and a plain-text reason for refusals, logs no
  traceback, and keeps in its archive exactly what it acknowledged.

SEGLOOP_FUZZ_EXAMPLES raises the number of examples for a longer hunt.
"""

from __future__ import annotations

import base64
import gzip
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from segloop.segment.archive.files import read_all_messages
from segloop.segment.collector.app import serve_in_thread
from segloop.segment.collector.requests import (
    BadRequest,
    decode_body,
    parse_json,
    prepare,
    write_key_from,
)

KEY = "wk_fuzz"
EXAMPLES = int(os.environ.get("SEGLOOP_FUZZ_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=5), max_leaves=30)
timestamps = st.one_of(st.just("2025-01-01T00:00:00Z"), st.just("0001-01-01T00:00:00Z"),
                       st.just("9999-12-31T23:59:59.999Z"), st.just("not a date"), st.text(max_size=30),
                       st.integers(), st.none())
messages = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias", "nope", ""]) | json_values,
        "userId": st.text(max_size=20) | st.integers() | json_values,
        "anonymousId": st.text(max_size=20) | st.floats() | json_values,
        "event": st.text(max_size=20) | json_values,
        "groupId": st.text(max_size=10) | json_values,
        "previousId": st.text(max_size=10) | json_values,
        "messageId": st.text(max_size=120) | json_values,
        "timestamp": timestamps,
        "sentAt": timestamps,
        "properties": json_values,
        "traits": json_values,
        "context": json_values,
        "writeKey": st.sampled_from([KEY, "wrong", ""]) | json_values,
    },
)
bodies = st.one_of(
    st.fixed_dictionaries({"batch": st.lists(messages | json_values, max_size=8)},
                          optional={"sentAt": timestamps, "context": json_values, "writeKey": st.just(KEY)}),
    messages,
    json_values,
)


def encode(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return b"{}"


raw_bodies = st.one_of(
    bodies.map(encode),
    bodies.map(lambda b: gzip.compress(encode(b))),
    st.binary(max_size=300),
    st.binary(max_size=60).map(gzip.compress),
    st.sampled_from([b"", b"NaN", b"[1,", b'{"batch": 1}', b"\xff\xfe", b'{"a":' * 300]),
)
auth_headers = st.one_of(
    st.none(),
    st.just("Basic " + base64.b64encode(f"{KEY}:".encode()).decode()),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40),
    st.binary(max_size=20).map(lambda b: "Basic " + base64.b64encode(b).decode()),
)


@SETTINGS
@given(raw=raw_bodies, encoding=st.sampled_from([None, "gzip", "identity", "br", "GZIP", ""]),
       call=st.sampled_from([None, "track", "identify", "page", "screen", "group", "alias"]),
       auth=auth_headers)
def test_parsing_returns_or_refuses_with_a_reason(raw: bytes, encoding: str | None, call: str | None,
                                                  auth: str | None) -> None:
    try:
        body = parse_json(decode_body(raw, encoding))
        write_key_from(auth, body)
        prepared = prepare(body, call, datetime.now(UTC), len(raw))
    except BadRequest as exc:
        assert exc.reason and str(exc)
        return
    for message_id, line in prepared.lines:
        stored = orjson.loads(line)
        assert stored["messageId"] == message_id and "writeKey" not in stored
        assert stored["type"] in ("track", "identify", "page", "screen", "group", "alias")
    assert len(prepared.lines) + sum(prepared.dropped.values()) + prepared.over_limit == prepared.received


ACCEPTED_TRACK = orjson.dumps({"type": "track", "userId": "u1", "event": "Fuzz Checked", "messageId": "fuzz-1"})
PATHS = ["/v1/batch", "/v1/import", "/v1/b", "/v1/track", "/v1/t", "/v1/identify", "/v1/i", "/v1/p",
         "/v1/s", "/v1/g", "/v1/a", "/v1/m", f"/v1/projects/{KEY}/settings", "/v1/projects/x/settings",
         "/stats", "/health", "/v1/", "/v1/zz", "/%2e%2e/etc/passwd"]


@pytest.mark.slow
def test_the_server_answers_every_request_with_a_clear_status(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    statuses: dict[int, int] = {}
    with caplog.at_level(logging.WARNING), serve_in_thread({KEY: "web"}, tmp_path / "c") as running, \
            httpx.Client(base_url=running.url, timeout=20) as http:

        @SETTINGS
        @given(method=st.sampled_from(["POST", "POST", "POST", "GET", "OPTIONS", "PUT"]),
               path=st.sampled_from(PATHS), raw=raw_bodies,
               content_type=st.sampled_from(["application/json", "text/plain", "text/plain;charset=UTF-8",
                                             "application/x-www-form-urlencoded", "", "APPLICATION/JSON"]),
               encoding=st.sampled_from([None, "gzip", "deflate"]), auth=auth_headers)
        # One request the collector must accept, always tried: random examples reach a 200
        # only by chance (1 of 2 runs on 2026-12-05 drew none in 150), and the asserts below need one.
        @example(method="POST", path="/v1/track", raw=ACCEPTED_TRACK, content_type="application/json",
                 encoding=None, auth="Basic " + base64.b64encode(f"{KEY}:".encode()).decode())
        def check(method: str, path: str, raw: bytes, content_type: str, encoding: str | None,
                  auth: str | None) -> None:
            headers = {"Content-Type": content_type}
            if encoding:
                headers["Content-Encoding"] = encoding
            if auth is not None:
                headers["Authorization"] = auth.strip()  # HTTP forbids edge whitespace
            res = http.request(method, path, content=raw if method in ("POST", "PUT") else None, headers=headers)
            statuses[res.status_code] = statuses.get(res.status_code, 0) + 1
            assert res.status_code < 500, f"{method} {path}: {res.status_code} {res.text[:200]}"
            if res.status_code >= 400:
                assert res.headers["content-type"].startswith("text/plain")
                assert res.text.split(":")[0] in ("Bad Request", "Unauthorized", "Not Found",
                                                  "Method Not Allowed", "Request Timeout")

        check()
        accepted = running.stats["accepted"]
        assert http.get("/health").status_code == 200
    assert 200 in statuses and any(400 <= code < 500 for code in statuses)
    assert len(read_all_messages(tmp_path / "c" / "segment-logs")) == accepted
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy][:5]


raw_requests = st.one_of(
    st.binary(max_size=200),
    st.tuples(st.sampled_from([b"POST", b"GET", b"P\x00ST", b""]), st.sampled_from([b"/v1/t", b"/stats", b"*", b""]),
              st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9", b""]),
              st.lists(st.binary(max_size=30), max_size=4), st.binary(max_size=60)).map(
        lambda p: p[0] + b" " + p[1] + b" " + p[2] + b"\r\n" + b"\r\n".join(p[3]) + b"\r\n\r\n" + p[4]),
)


@pytest.mark.slow
def test_garbage_on_the_socket_gets_a_4xx_or_a_close_never_a_hang(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with caplog.at_level(logging.WARNING), serve_in_thread(
        {KEY: "web"}, tmp_path / "c", header_timeout_s=1, body_timeout_s=1
    ) as running:

        @settings(max_examples=min(EXAMPLES, 60), deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(data=raw_requests)
        def check(data: bytes) -> None:
            with socket.create_connection(("127.0.0.1", running.port), timeout=20) as sock:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                reply = b""
                try:
                    while chunk := sock.recv(65536):
                        reply += chunk
                except ConnectionResetError:
                    pass
            if reply:
                status = int(reply.split(b" ", 2)[1])
                assert 200 <= status < 500, reply[:200]

        check()
        with httpx.Client(base_url=running.url, timeout=10) as http:
            assert http.get("/health").status_code == 200
    noisy = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy][:5]

"""Benchmark: segloop's Segment client vs segment-analytics-python, same rows, same endpoint.

A small asyncio HTTP/1.1 server on 127.0.0.1 (a subprocess) stands in for Segment's
``/v1/batch``: it counts messages and unique messageIds and can add latency per request.
Each client runs in its own subprocess (so peak RSS is its own) and sends the same rows
as ``track("Sales Prediction")`` calls; throughput is rows / (first call -> all delivered).

    .venv/bin/python bench/sender.py                  # 200k rows, 0 ms and 20 ms latency
    .venv/bin/python bench/sender.py --messages 50000 --latency 20
    .venv/bin/python bench/sender.py --sweep          # max_in_flight sweep for segloop
    .venv/bin/python bench/sender.py --repeat 3       # median of 3 runs (on a busy machine)
    .venv/bin/python bench/sender.py --messages 1000000 --only pipeline --latency 0   # 1M-row memory
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

HERE = os.path.abspath(__file__)

# name -> (library, options)
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "segment defaults": ("segment", {}),
    "segment tuned (upload_size=1000, thread=8)": (
        "segment", {"upload_size": 1000, "thread": 8, "max_queue_size": 100000}),
    "segloop defaults (upload_size=100)": ("segloop", {"on_full": "block"}),
    "segloop upload_size=500": ("segloop", {"on_full": "block", "upload_size": 500}),
    "segloop pipeline path (render_row + send_messages)": ("segloop-rows", {"on_full": "block"}),
}


# --- the endpoint ---------------------------------------------------------------------------


class _Sink(asyncio.Protocol):
    """Minimal keep-alive HTTP/1.1: POST /v1/batch counts, GET /stats, POST /reset."""

    stats: dict[str, Any] = {"messages": 0, "requests": 0, "max_body": 0}
    ids: set[str] = set()
    latency = 0.0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""
        self.queue: asyncio.Queue[tuple[str, str, dict[str, str], bytes] | None] = asyncio.Queue()
        self.task = asyncio.ensure_future(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.queue.put_nowait((method, path, headers, body))

    async def _serve(self) -> None:
        import orjson

        while True:
            item = await self.queue.get()
            if item is None:
                return
            method, path, headers, body = item
            if path == "/stats":
                payload = orjson.dumps({**_Sink.stats, "unique": len(_Sink.ids)})
            elif path == "/reset":
                _Sink.stats = {"messages": 0, "requests": 0, "max_body": 0}
                _Sink.ids = set()
                payload = b"{}"
            else:
                if _Sink.latency:
                    await asyncio.sleep(_Sink.latency)
                raw = gzip.decompress(body) if headers.get("content-encoding") == "gzip" else body
                batch = orjson.loads(raw)["batch"]
                _Sink.stats["messages"] += len(batch)
                _Sink.stats["requests"] += 1
                _Sink.stats["max_body"] = max(_Sink.stats["max_body"], len(body))
                _Sink.ids.update(m["messageId"] for m in batch)
                payload = b'{"success":true}'
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(payload)).encode() + b"\r\n\r\n" + payload
            )


def serve(port: int, latency_ms: float) -> None:
    _Sink.latency = latency_ms / 1000

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Sink, "127.0.0.1", port, backlog=512)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _http(url: str, method: str = "GET") -> dict[str, Any]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the clients ------------------------------------------------------------------------------


def _rows(n: int) -> Any:
    for i in range(n):
        yield {"user_id": str(100000000 + i), "iphone": (i % 1000) / 1000, "apple_watch": (i % 777) / 777}


def run_client(library: str, url: str, messages: int, options: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    if library == "segment":
        from segment.analytics import Client as SegmentClient

        seg = SegmentClient("BENCH_KEY", host=url, **options)
        full_waits = 0
        for row in _rows(messages):
            props = {"iphone": row["iphone"], "apple_watch": row["apple_watch"]}
            while seg.queue.full():  # wait for room instead of losing the row
                full_waits += 1
                time.sleep(0.001)
            while not seg.track(row["user_id"], "Sales Prediction", props)[0]:
                full_waits += 1
                time.sleep(0.001)
        seg.flush()
        seconds = time.perf_counter() - start
        seg.join()
        extra = {"queue_full_waits": full_waits}
    elif library == "segloop":
        from segloop.segment import Client

        client = Client("BENCH_KEY", host=url, **options)
        for row in _rows(messages):
            client.track(row["user_id"], "Sales Prediction",
                         {"iphone": row["iphone"], "apple_watch": row["apple_watch"]})
        report = client.flush()
        seconds = time.perf_counter() - start
        client.shutdown()
        extra = {"sent": report.sent, "lost": report.lost}
    else:  # segloop-rows: what the pipeline node does per row
        from segloop.segment import Client, send_messages
        from segloop.segment.messages import RowMapping, render_row

        mapping = RowMapping(event="Sales Prediction", properties=["iphone", "apple_watch"],
                             namespace=("bench", "to_segment"))
        client = Client("BENCH_KEY", host=url, **options)
        summary = send_messages(((None, render_row(r, mapping)) for r in _rows(messages)), client)
        seconds = time.perf_counter() - start
        client.shutdown()
        extra = {"sent": summary.sent, "lost": summary.read - summary.sent}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak_mb, **extra}


def _client_subprocess(library: str, url: str, messages: int, options: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, HERE, "--client", json.dumps([library, url, messages, options])],
        capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{library} client failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def bench(latency_ms: float, messages: int, scenarios: dict[str, tuple[str, dict[str, Any]]],
          repeat: int = 1) -> list[dict[str, Any]]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, HERE, "--serve", str(port), "--latency-ms", str(latency_ms)])
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                _http(base + "/stats")
                break
            except OSError:
                time.sleep(0.05)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
        for _ in range(repeat):  # round-robin, so background load hits every client alike
            for name, (library, options) in scenarios.items():
                _http(base + "/reset", "POST")
                res = _client_subprocess(library, base, messages, options)
                stats = _http(base + "/stats")
                res.update(name=name, latency_ms=latency_ms, messages=messages,
                           received=stats["messages"], unique=stats["unique"],
                           requests=stats["requests"], max_body=stats["max_body"],
                           per_second=messages / res["seconds"],
                           zero_loss=stats["unique"] == messages == stats["messages"])
                runs[name].append(res)
                print(f"  {latency_ms:>4g} ms  {name:<52} {res['per_second']:>9,.0f} msg/s  "
                      f"peak {res['peak_rss_mb']:>5.0f} MB  received {stats['messages']:,} "
                      f"(unique {stats['unique']:,}) in {stats['requests']:,} requests, "
                      f"max body {stats['max_body']:,} B", flush=True)
        results = []
        for rs in runs.values():
            rs.sort(key=lambda r: r["per_second"])
            median = dict(rs[len(rs) // 2])
            median["zero_loss"] = all(r["zero_loss"] for r in rs)
            median["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rs)
            median["all_per_second"] = [round(r["per_second"]) for r in rs]
            results.append(median)
        return results
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--latency", type=float, action="append", help="ms added per request (repeatable)")
    parser.add_argument("--sweep", action="store_true", help="segloop max_in_flight sweep only")
    parser.add_argument("--upload-size", type=int, default=100, help="upload_size in the sweep")
    parser.add_argument("--only", help="run scenarios whose name contains this text")
    parser.add_argument("--repeat", type=int, default=1, help="runs per client; the median is reported")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--latency-ms", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.latency_ms)
        return
    if args.client:
        library, url, messages, options = json.loads(args.client)
        print(json.dumps(run_client(library, url, messages, options)))
        return
    latencies = args.latency or [0.0, 20.0]
    if args.sweep:
        scenarios = {
            f"segloop max_in_flight={n} upload_size={args.upload_size}": (
                "segloop", {"on_full": "block", "max_in_flight": n, "upload_size": args.upload_size})
            for n in (1, 2, 4, 8, 16, 32)
        }
    else:
        scenarios = {k: v for k, v in SCENARIOS.items() if not args.only or args.only in k}
    print(f"{args.messages:,} track calls per client, endpoint on 127.0.0.1, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, median of {args.repeat} run(s)")
    all_results = []
    for latency in latencies:
        all_results.extend(bench(latency, args.messages, scenarios, args.repeat))
    print()
    for latency in latencies:
        rows = [r for r in all_results if r["latency_ms"] == latency]
        baseline = next((r for r in rows if r["name"] == "segment defaults"), None)
        print(f"latency {latency:g} ms")
        for r in rows:
            ratio = f"{r['per_second'] / baseline['per_second']:5.1f}x" if baseline else "   - "
            print(f"  {r['name']:<52} {r['per_second']:>9,.0f} msg/s  {ratio} vs segment defaults  "
                  f"peak {r['peak_rss_mb']:.0f} MB  zero loss: {'yes' if r['zero_loss'] else 'NO'}"
                  + (f"  runs: {r['all_per_second']}" if len(r["all_per_second"]) > 1 else ""))
    if not all(r["zero_loss"] for r in all_results):
        sys.exit("some messages were lost")


if __name__ == "__main__":
    main()

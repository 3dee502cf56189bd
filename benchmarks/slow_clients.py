#!/usr/bin/env python3
"""Slow clients against the real `serve` process: stalled and trickling connections held open
while /ping and ordinary invocations are measured.

    python benchmarks/slow_clients.py [--model-dir DIR] [--stalled 500] [--trickling 500]

Opens `--stalled` connections that send an invocation's headers and its first body bytes
and then nothing, and `--trickling` that go on sending a byte a second each (never idle, so
waitress's idle timeout never ends them); then measures /ping (50 calls) and invocations of
a 640x480 photo (median of 5) against the same before the clients came, and the server's RSS.
The connections are closed before MASKRCNN_REQUEST_TIMEOUT_S (default 60 s) would answer them
408 (tests/test_slow_clients.py checks that). Default model: R50 with seeded random weights
on the default backend. Writes benchmarks/results/slow_clients.json with the machine.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import write_results  # noqa: E402
from harness.model_dirs import random_r50_model_dir  # noqa: E402
from harness.photos import benchmark_photo_jpeg  # noqa: E402
from harness.proc import rss_mb  # noqa: E402
from harness.server import started_server  # noqa: E402
from harness.slow_clients import Trickle, allow_open_files, open_slow_request  # noqa: E402
from harness.timing import timed  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir")
    parser.add_argument("--stalled", type=int, default=500)
    parser.add_argument("--trickling", type=int, default=500)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "slow_clients.json")
    args = parser.parse_args(argv)
    allow_open_files(args.stalled + args.trickling + 256)
    model_dir = args.model_dir or random_r50_model_dir("slow-clients-")
    server = started_server(model_dir, Path(tempfile.mkdtemp(prefix="slow-clients-")) / "serve.log")
    port = server.port
    body = benchmark_photo_jpeg()

    def call(method, path, payload=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request(method, path, body=payload, headers={"Content-Type": "image/jpeg"} if payload else {})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
        finally:
            conn.close()

    def ms(*request) -> float:
        return timed(call, *request)[0] * 1e3

    def figures() -> dict:
        pings = sorted(ms("GET", "/ping") for _ in range(50))
        invocations = [ms("POST", "/invocations", body) for _ in range(5)]
        return {"ping_ms_p50": round(float(np.median(pings)), 2), "ping_ms_p95": round(pings[47], 2),
                "ping_ms_max": round(pings[-1], 2), "invocation_ms_median": round(float(np.median(invocations)), 1),
                "server_rss_mb": round(rss_mb(server.pid), 1)}

    clients, trickle = [], None
    try:
        call("POST", "/invocations", body)  # warm
        before = figures()
        opened = time.monotonic()
        clients = [open_slow_request(port) for _ in range(args.stalled + args.trickling)]
        trickle = Trickle(clients[args.stalled:])
        time.sleep(1.0)  # the server accepts and reads them all
        during = figures()
        during["seconds_since_opened"] = round(time.monotonic() - opened, 1)
    finally:
        if trickle:
            trickle.stop()
        for sock in clients:
            sock.close()
        server.stop(60)
    write_results({"benchmark": "slow_clients", "model_dir": model_dir, "stalled": args.stalled,
                   "trickling": args.trickling, "before": before, "with_slow_clients": during}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

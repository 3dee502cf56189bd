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
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.inputs import benchmark_photo_jpeg, random_r50_model_dir, serve_command, start_server  # noqa: E402
from benchmarks.machine import write_results  # noqa: E402


def open_slow_request(port: int) -> socket.socket:
    """A connection that has sent an invocation's headers and the first bytes of its body."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                 b"Content-Length: 200000\r\n\r\n\xff\xd8\xff")
    return sock


class Trickle:
    """Sends one byte on each of `socks` about every second, on a thread, until stopped."""

    def __init__(self, socks: list[socket.socket]):
        self._socks = socks
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            for sock in self._socks:
                try:
                    sock.send(b"\x00")
                except OSError:
                    pass
            self._stop.wait(1.0)

    def stop(self):
        self._stop.set()
        self._thread.join(5)


def allow_open_files(wanted: int) -> None:
    """This process holds every client socket: raise its soft open-file limit towards `wanted`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))


def timed_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir")
    parser.add_argument("--stalled", type=int, default=500)
    parser.add_argument("--trickling", type=int, default=500)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "slow_clients.json")
    args = parser.parse_args(argv)
    allow_open_files(args.stalled + args.trickling + 256)
    model_dir = args.model_dir or random_r50_model_dir("slow-clients-")
    proc, port = start_server(serve_command(model_dir), Path(tempfile.mkdtemp(prefix="slow-clients-")) / "serve.log")
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

    def rss_mb() -> float:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) / 1024

    def measure() -> dict:
        pings = sorted(timed_ms(lambda: call("GET", "/ping")) for _ in range(50))
        invocations = [timed_ms(lambda: call("POST", "/invocations", body)) for _ in range(5)]
        return {"ping_ms_p50": round(float(np.median(pings)), 2), "ping_ms_p95": round(pings[47], 2),
                "ping_ms_max": round(pings[-1], 2), "invocation_ms_median": round(float(np.median(invocations)), 1),
                "server_rss_mb": round(rss_mb(), 1)}

    clients, trickle = [], None
    try:
        call("POST", "/invocations", body)  # warm
        before = measure()
        opened = time.monotonic()
        clients = [open_slow_request(port) for _ in range(args.stalled + args.trickling)]
        trickle = Trickle(clients[args.stalled:])
        time.sleep(1.0)  # the server accepts and reads them all
        during = measure()
        during["seconds_since_opened"] = round(time.monotonic() - opened, 1)
    finally:
        if trickle:
            trickle.stop()
        for sock in clients:
            sock.close()
        proc.terminate()
        proc.wait(60)
    write_results({"benchmark": "slow_clients", "model_dir": model_dir, "stalled": args.stalled,
                   "trickling": args.trickling, "before": before, "with_slow_clients": during}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

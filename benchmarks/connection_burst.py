#!/usr/bin/env python3
"""Connection bursts against the real `serve` process: N connections arriving at once, each
sending an invocation's headers and then stalling, and /ping right behind them.

    python benchmarks/connection_burst.py [--model-dir DIR] [--connections 1000] [--rounds 5]

Per round: the first /ping sent after the burst (its latency is what SageMaker's 2 s health
check sees), then 20 more; the server's CPU time over the burst (user + system, from
/proc/PID/stat) divided by N is what the accept path costs per connection (accepting it,
reading its headers, parsing them). The connections are closed between rounds. Default
model: the bundled demo model (the work measured does not depend on the model). Writes
benchmarks/results/connection_burst.json with the machine description.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import write_results  # noqa: E402
from harness.proc import cpu_seconds  # noqa: E402
from harness.server import started_server  # noqa: E402
from harness.slow_clients import allow_open_files  # noqa: E402
from harness.timing import timed  # noqa: E402

STALLED_HEAD = (b"POST /invocations HTTP/1.1\r\nHost: localhost\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 100000\r\n\r\n")


def _ping(port: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/ping")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status
    finally:
        conn.close()


def ping_ms(port: int) -> float:
    return timed(_ping, port)[0] * 1e3


def _open_stalled(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        try:
            sock.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        socks.append(sock)
    for sock in socks:
        sock.setblocking(True)
        sock.sendall(STALLED_HEAD)
    return socks


def burst(port: int, n: int) -> tuple[list[socket.socket], float]:
    """n connections opened without waiting for each, then each sends headers: (them, ms taken)."""
    seconds, socks = timed(_open_stalled, port, n)
    return socks, seconds * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=str(ROOT / "demo" / "model"))
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "connection_burst.json")
    args = parser.parse_args(argv)
    allow_open_files(args.connections + 256)
    server = started_server(args.model_dir, Path(tempfile.mkdtemp(prefix="burst-")) / "serve.log")
    port = server.port
    rounds = []
    try:
        for _ in range(args.rounds):
            idle = float(np.median([ping_ms(port) for _ in range(5)]))
            cpu_before = cpu_seconds(server.pid)
            socks, opened_ms = burst(port, args.connections)
            first = ping_ms(port)
            cpu = cpu_seconds(server.pid) - cpu_before
            later = [ping_ms(port) for _ in range(20)]
            rounds.append({"opened_ms": round(opened_ms, 1), "idle_ping_ms": round(idle, 2),
                           "first_ping_ms": round(first, 1), "later_ping_ms_p50": round(float(np.median(later)), 2),
                           "later_ping_ms_max": round(max(later), 2),
                           "server_cpu_us_per_connection": round(cpu / args.connections * 1e6, 1)})
            print(rounds[-1], flush=True)
            for sock in socks:
                sock.close()
            time.sleep(2)  # the server closes them
    finally:
        server.stop(60)
    firsts = [r["first_ping_ms"] for r in rounds]
    write_results({
        "benchmark": "connection_burst", "model_dir": args.model_dir, "connections": args.connections,
        "first_ping_ms_max": max(firsts), "first_ping_ms_median": float(np.median(firsts)),
        "server_cpu_us_per_connection_median": float(np.median([r["server_cpu_us_per_connection"] for r in rounds])),
        "rounds": rounds,
    }, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

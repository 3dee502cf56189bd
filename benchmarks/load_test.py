#!/usr/bin/env python3
"""Load test of the real `serve` process: N concurrent clients, a fixed number of requests.

    python benchmarks/load_test.py --model-dir DIR [--clients 4] [--requests 300]

Measures, in one run: the engine's median latency (sequential requests, from the server's
own inference_ms), throughput under load against 1 / that median, errors (503s from a full
queue counted apart), /ping latency sampled every 250 ms throughout, and the server's
resident memory after the first 20 and after all requests. Writes
benchmarks/results/load_test.json with the machine description.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import write_results  # noqa: E402
from harness.photos import benchmark_photo_jpeg  # noqa: E402
from harness.proc import rss_mb  # noqa: E402
from harness.server import started_server  # noqa: E402
from harness.timing import timed  # noqa: E402


def request(port: int, method: str, path: str, body: bytes | None = None, headers=None, timeout=120.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "load_test.json")
    args = parser.parse_args(argv)

    server = started_server(None, ROOT / "benchmarks" / "results" / "load_test.server.log",
                            command=[sys.executable, "-m", "server"], extra_env={"PYTHONUNBUFFERED": "1"},
                            args=["--model-dir", str(args.model_dir), "--log-level", "WARNING"])
    port = server.port
    try:
        body = benchmark_photo_jpeg()
        headers = {"Content-Type": "image/jpeg", "Accept": "application/json"}
        sequential = []
        for _ in range(7):
            status, _, h = request(port, "POST", "/invocations", body, headers)
            assert status == 200, status
            attrs = json.loads(h.get("x-amzn-sagemaker-custom-attributes", "{}"))
            sequential.append(float(attrs["inference_ms"]))
        engine_median_s = float(np.median(sequential)) / 1000.0

        done = {"ok": 0, "busy": 0, "error": 0}
        lock = threading.Lock()
        counter = iter(range(args.requests))
        memory = {}
        stop = threading.Event()
        pings = []

        def client():
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                try:
                    status, _, _ = request(port, "POST", "/invocations", body, headers)
                except OSError:
                    status = -1
                with lock:
                    key = "ok" if status == 200 else "busy" if status == 503 else "error"
                    done[key] += 1
                    if sum(done.values()) == 20:
                        memory["after_20_mib"] = rss_mb(server.pid)
                    if status == 503:
                        time.sleep(0.5)

        def pinger():
            def ping() -> int:
                try:
                    return request(port, "GET", "/ping", timeout=5)[0]
                except OSError:
                    return -1

            while not stop.is_set():
                pings.append(timed(ping))  # (seconds, status)
                stop.wait(0.25)

        ping_thread = threading.Thread(target=pinger, daemon=True)
        ping_thread.start()
        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        stop.set()
        ping_thread.join()
        memory["after_all_mib"] = rss_mb(server.pid)
    finally:
        server.stop(60)

    ping_s = np.array([p[0] for p in pings])
    throughput = done["ok"] / elapsed
    report = {
        "benchmark": "load_test",
        "model_dir": str(args.model_dir),
        "clients": args.clients,
        "requests": args.requests,
        "engine_median_s": round(engine_median_s, 4),
        "throughput_rps": round(throughput, 4),
        "throughput_vs_1_over_median": round(throughput * engine_median_s, 3),
        "responses": done,
        "ping": {"count": len(pings), "max_s": round(float(ping_s.max()), 4), "p99_s": round(float(np.percentile(ping_s, 99)), 4),
                 "non_200": sum(1 for _, s in pings if s != 200)},
        "memory_mib": {k: round(v, 1) for k, v in memory.items()},
        "memory_growth": round(memory["after_all_mib"] / memory["after_20_mib"] - 1.0, 4) if "after_20_mib" in memory else None,
        "server_exit_code": server.proc.returncode,
    }
    write_results(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

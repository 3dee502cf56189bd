#!/usr/bin/env python3
"""Soak: the real server under steady mixed load for many minutes; memory and /ping over time.

    python benchmarks/soak.py --minutes 30 [--model-dir DIR] [--clients 4]

Starts `serve --model-dir DIR` (default: R50-FPN v1 with seeded random weights, exported to a
temp dir) on a free port. `--clients` threads send requests back to back, in turn: JSON (half
of them with RLE masks), JPEG and PNG answers for a 640x480 photo, and bad requests (an
unsupported content type, a body that is not an image, bad custom attributes, an Accept
nothing matches), each with the status it must get. A pinger calls /ping every 250 ms; the
server's RSS is sampled every 10 s. After the warm-up (the first fifth of the run, at most
5 minutes), memory growth is the last sample against the first. The soak targets: growth
< 5%, /ping p99 < 100 ms, no unexpected status. Writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
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
from harness.timing import timed  # noqa: E402

CA = "X-Amzn-SageMaker-Custom-Attributes"


def request_mix(photo: bytes) -> list[tuple[str, dict, bytes, int]]:
    """(name, headers, body, expected status), sent in this order by every client."""
    jpeg = {"Content-Type": "image/jpeg"}
    return [
        ("json", {**jpeg, "Accept": "application/json"}, photo, 200),
        ("json_rle_masks", {**jpeg, "Accept": "application/json",
                            CA: json.dumps({"include": ["masks", "scores"], "mask_format": "rle"})}, photo, 200),
        ("jpeg", {**jpeg, "Accept": "image/jpeg"}, photo, 200),
        ("png", {**jpeg, "Accept": "image/png"}, photo, 200),
        ("bad_content_type", {"Content-Type": "image/gif"}, photo, 415),
        ("not_an_image", jpeg, b"GIF89a" + bytes(1000), 400),
        ("bad_attributes", {**jpeg, CA: json.dumps({"score_threshold": "high"})}, photo, 400),
        ("bad_accept", {**jpeg, "Accept": "text/csv"}, photo, 406),
    ]


def call(port: int, method: str, path: str, body=None, headers=None, timeout: float = 120) -> tuple[int, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def exchange() -> int:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status

    try:
        seconds, status = timed(exchange)
        return status, seconds
    finally:
        conn.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--model-dir")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args(argv)
    model_dir = args.model_dir or random_r50_model_dir("soak-")
    server = started_server(model_dir, Path(tempfile.mkdtemp(prefix="soak-serve-")) / "serve.log")
    port = server.port
    try:
        mix = request_mix(benchmark_photo_jpeg())
        for _, headers, body, _ in mix:  # warm every path once
            call(port, "POST", "/invocations", body, headers)
        start = time.monotonic()
        end = start + args.minutes * 60
        results, pings, memory, lock = [], [], [], threading.Lock()

        def client(offset: int):
            i = offset
            while time.monotonic() < end:
                name, headers, body, expected = mix[i % len(mix)]
                i += 1
                try:
                    status, seconds = call(port, "POST", "/invocations", body, headers)
                except OSError as exc:
                    status, seconds = type(exc).__name__, float("nan")
                with lock:
                    results.append((name, status, expected, seconds))

        def pinger():
            while time.monotonic() < end:
                try:
                    status, seconds = call(port, "GET", "/ping", timeout=10)
                except OSError:
                    status, seconds = "error", float("inf")
                pings.append((status, seconds))
                time.sleep(0.25)

        def sampler():
            while time.monotonic() < end:
                memory.append((round(time.monotonic() - start, 1), round(rss_mb(server.pid), 1)))
                time.sleep(10)

        threads = [threading.Thread(target=client, args=(k * 2,)) for k in range(args.clients)]
        threads += [threading.Thread(target=pinger), threading.Thread(target=sampler)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        memory.append((round(time.monotonic() - start, 1), round(rss_mb(server.pid), 1)))
    finally:
        server.stop(60)

    warmup_s = min(300.0, args.minutes * 60 / 5)
    after = [mb for t, mb in memory[:-1] if t >= warmup_s]  # under load; the last sample is after it
    ping_s = np.array([s for st, s in pings if st == 200])
    unexpected = [(n, st, ex) for n, st, ex, _ in results if st != ex]
    by_kind = {}
    for name, status, expected, seconds in results:
        entry = by_kind.setdefault(name, {"expected_status": expected, "requests": 0, "latencies": []})
        entry["requests"] += 1
        entry["latencies"].append(seconds)
    for entry in by_kind.values():
        entry["median_s"] = round(float(np.nanmedian(entry.pop("latencies"))), 4)
    report = {
        "benchmark": "soak", "model_dir": model_dir, "minutes": args.minutes, "clients": args.clients,
        "requests": len(results), "unexpected_statuses": len(unexpected), "unexpected_examples": unexpected[:10],
        "by_kind": by_kind,
        "ping": {"count": int(len(pings)), "failed": int(len(pings) - len(ping_s)),
                 "p50_ms": round(float(np.percentile(ping_s, 50)) * 1e3, 1),
                 "p99_ms": round(float(np.percentile(ping_s, 99)) * 1e3, 1),
                 "max_ms": round(float(ping_s.max()) * 1e3, 1)},
        "memory_mb": {"warmup_s": warmup_s, "first_after_warmup": after[0], "last": after[-1],
                      "max": max(mb for _, mb in memory), "growth_after_warmup": round(after[-1] / after[0] - 1, 4),
                      "after_the_load": memory[-1][1],
                      "samples": memory},
    }
    write_results(report, args.output)
    ok = report["memory_mb"]["growth_after_warmup"] < 0.05 and report["ping"]["p99_ms"] < 100 and not unexpected
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

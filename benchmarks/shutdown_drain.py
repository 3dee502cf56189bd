#!/usr/bin/env python3
"""SIGTERM under load on a machine made slower than the work: what every client gets.

    python benchmarks/shutdown_drain.py [--model-dir DIR] [--neighbours 2] [--extra 3]

Starts the real `serve` process (default: R50-FPN with seeded random weights), starts
`--neighbours` CPU-bound processes beside it, fills every worker and queue slot with
640x480 photos (plus `--extra` requests the full queue refuses), sends SIGTERM, and records
each client's status (or connection error) and when it came, the server's exit code and
when it exited. Everything is expected to end in 200 or 503 + Retry-After, with the exit
inside SageMaker's 30 s. Writes benchmarks/results/shutdown_drain.json with the machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import write_results  # noqa: E402
from harness.model_dirs import random_r50_model_dir  # noqa: E402
from harness.photos import benchmark_photo_jpeg  # noqa: E402
from harness.server import started_server  # noqa: E402
from harness.timing import timed  # noqa: E402

QUEUE_SIZE = 8  # the server's default: one worker, eight waiting


def invoke(port: int, body: bytes) -> tuple[object, str | None, str]:
    """(status or the exception's name, Retry-After, the error message if any)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
        resp = conn.getresponse()
        content = resp.read()
        error = json.loads(content).get("error", "") if resp.status != 200 else ""
        return resp.status, resp.getheader("Retry-After"), error
    except OSError as exc:
        return type(exc).__name__, None, str(exc)
    finally:
        conn.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir")
    parser.add_argument("--neighbours", type=int, default=2, help="CPU-bound processes beside the server")
    parser.add_argument("--extra", type=int, default=3, help="requests beyond what the queue holds")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "shutdown_drain.json")
    args = parser.parse_args(argv)
    model_dir = args.model_dir or random_r50_model_dir("drain-")
    body = benchmark_photo_jpeg()
    server = started_server(model_dir, Path(tempfile.mkdtemp(prefix="drain-")) / "serve.log")
    port = server.port
    neighbours = []
    results, lock = [], threading.Lock()
    try:
        single, _ = timed(invoke, port, body)
        neighbours = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.neighbours)]
        began = time.monotonic()

        def client():
            outcome = invoke(port, body)
            with lock:
                results.append((*outcome, time.monotonic() - began))

        clients = [threading.Thread(target=client) for _ in range(1 + QUEUE_SIZE + args.extra)]
        for t in clients:
            t.start()
        while sum(r[0] == 503 for r in results) < args.extra:  # the rest are admitted
            time.sleep(0.01)
        signalled = time.monotonic()
        code = server.stop(60)  # SIGTERM, then its exit
        exited_after = time.monotonic() - signalled
        for t in clients:
            t.join(60)
    finally:
        for neighbour in neighbours:
            neighbour.kill()
        server.kill()
    since_signal = signalled - began
    answers = [{"status": status, "retry_after": retry, "error": error[:120],
                "after_sigterm_s": round(at - since_signal, 2)} for status, retry, error, at in sorted(results, key=lambda r: r[3])]
    statuses = [a["status"] for a in answers]
    write_results({
        "benchmark": "shutdown_drain", "model_dir": model_dir, "neighbours": args.neighbours,
        "one_request_alone_s": round(single, 2), "requests": len(answers),
        "answered_200": statuses.count(200),
        "refused_503_shutting_down": sum(a["status"] == 503 and "shutting down" in a["error"] for a in answers),
        "refused_503_other": sum(a["status"] == 503 and "shutting down" not in a["error"] for a in answers),
        "without_answer": sum(s not in (200, 503) for s in statuses),
        "exit_code": code, "exited_after_sigterm_s": round(exited_after, 2), "answers": answers,
    }, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

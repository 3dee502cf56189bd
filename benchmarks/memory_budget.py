#!/usr/bin/env python3
"""Peak memory with a full queue of the largest photos the server admits, against its budget.

    python benchmarks/memory_budget.py [--model-dir DIR] [--workers 1 2] [--budget-mb 1800]

For each worker count: `serve --model-dir DIR` (R50 with seeded random weights by default)
with MASKRCNN_MEMORY_BUDGET_MB at its default, warm-up requests at 640x480, then at once
workers + queue size + 2 requests of a 40-megapixel photo (skimage's coffee scaled up to
7296x5472 = 39.9 MP, just inside the 40 MP limit, JPEG), each asking for a PNG answer with
masks (score threshold 0.05, 100 detections: random weights give 100). Then, alone, one 640x480 request asking for 1000
detections (the most the API allows). The server's peak RSS (VmHWM, restarted after the
warm-up) is read from /proc and set against the budget; every status is counted. Writes
benchmarks/results/memory_budget.json.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import write_results  # noqa: E402
from harness.model_dirs import random_r50_model_dir  # noqa: E402
from harness.photos import jpeg_bytes, photo_of_size, skimage_photo  # noqa: E402
from harness.proc import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402
from harness.server import started_server  # noqa: E402

QUEUE_SIZE = 8  # the server's default MASKRCNN_QUEUE_SIZE
CA = "X-Amzn-SageMaker-Custom-Attributes"


def invoke(port: int, body: bytes, accept: str, attrs: dict) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/invocations", body=body, headers={
        "Content-Type": "image/jpeg", "Accept": accept, CA: json.dumps(attrs)})
    resp = conn.getresponse()
    data = resp.read()
    error = json.loads(data).get("error", "") if resp.getheader("Content-Type", "").startswith("application/json") and resp.status != 200 else ""
    return resp.status, error


def run_config(model_dir: str, workers: int, budget_mb: int, large: bytes, small: bytes) -> dict:
    # a long inference timeout: every admitted request is answered (nine 40 MP PNG answers
    # one after another pass SageMaker's 60 s; their memory is what is measured)
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(workers), "MASKRCNN_QUEUE_SIZE": str(QUEUE_SIZE),
           "MASKRCNN_MEMORY_BUDGET_MB": str(budget_mb), "SAGEMAKER_MODEL_SERVER_TIMEOUT": "600"}
    log_path = Path(tempfile.mkdtemp(prefix="memory-budget-")) / "server.log"
    server = started_server(model_dir, log_path, extra_env=env)
    port = server.port
    try:
        ready = next(json.loads(line) for line in log_path.read_text().splitlines()
                     if line.startswith("{") and json.loads(line)["message"] == "model ready")
        attrs = {"score_threshold": 0.05, "max_detections": 100}
        for accept in ("application/json", "image/png", "image/png"):
            assert invoke(port, small, accept, attrs)[0] == 200
        idle_mb = rss_mb(server.pid)
        reset_peak_rss(server.pid)
        results: list[tuple[int, str]] = []
        count = workers + QUEUE_SIZE + 2
        start = time.perf_counter()
        clients = [threading.Thread(target=lambda: results.append(invoke(port, large, "image/png", attrs)))
                   for _ in range(count)]
        for t in clients:
            t.start()
            time.sleep(0.05)  # in order, so the first ones are the admitted ones
        for t in clients:
            t.join()
        queue_s = time.perf_counter() - start
        queue_peak_mb = peak_rss_mb(server.pid)
        status, _ = invoke(port, small, "image/png", {"score_threshold": 0.0, "max_detections": 1000})
        many_peak_mb = peak_rss_mb(server.pid)
        after_mb = rss_mb(server.pid)
    finally:
        server.stop(60)
    statuses = sorted(s for s, _ in results)
    refused = sorted({e.split(";")[0] for s, e in results if s == 503})
    row = {"workers": workers, "budget_mb": budget_mb, "inference_mb_at_warm_up": ready.get("inference_mb"),
           "idle_mb": round(idle_mb), "requests": count,
           "answered_200": statuses.count(200), "refused_503": statuses.count(503),
           "other_statuses": [s for s in statuses if s not in (200, 503)], "refusals": refused,
           "full_queue_s": round(queue_s, 1), "peak_mb": round(queue_peak_mb),
           "peak_within_budget": queue_peak_mb <= budget_mb,
           "then_1000_detections": {"status": status, "peak_mb": round(many_peak_mb), "rss_after_mb": round(after_mb)}}
    print(json.dumps(row))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", help="default: R50-FPN v1, seeded random weights, exported now")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--budget-mb", type=int, default=None, help="default: the server's default")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory_budget.json"))
    args = parser.parse_args()
    from server.config import DEFAULT_MEMORY_BUDGET_MB

    budget_mb = args.budget_mb or DEFAULT_MEMORY_BUDGET_MB
    model_dir = args.model_dir or random_r50_model_dir("memory-budget-")
    import cv2

    large = jpeg_bytes(photo_of_size(5472, 7296))
    small = jpeg_bytes(cv2.resize(skimage_photo("coffee"), (640, 480), interpolation=cv2.INTER_AREA))
    rows = [run_config(model_dir, w, budget_mb, large, small) for w in args.workers]
    write_results({"model": "R50-FPN v1, random weights (seed 0)" if not args.model_dir else args.model_dir,
                   "photo": "coffee scaled to 7296x5472 (39.9 MP), JPEG q90, PNG answer with masks",
                   "large_body_mb": round(len(large) / 2**20, 1), "rows": rows}, args.out)
    return 0 if all(r["peak_within_budget"] and not r["other_statuses"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

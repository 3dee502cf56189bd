#!/usr/bin/env python3
"""Server overhead over `engine.predict` on a 640x480 photo, for JSON and JPEG responses.

    python benchmarks/server_overhead.py --model-dir models/coco-v1 [--repeats 9] [--replay-repeats 100]

The overhead of one request is its latency as the client sees it minus the engine.predict
time the server reports for that same request (`inference_ms` in the response's
X-Amzn-SageMaker-Custom-Attributes header), so the engine's run-to-run noise cancels. Two
ways in, each with two engines:

* in-process, through `falcon.testing.TestClient`: the app's own cost (header checks,
  header probe, JPEG decode, admission control, JSON or render + JPEG encode);
* through a real server process over loopback HTTP: adds waitress and the socket. With the
  real engine it is the `serve` command itself;
* engine "real": every request runs the model (seconds on a CPU, so few repeats);
* engine "replay": the real engine's detections for this photo, computed once and returned
  at once, so hundreds of repeats give a stable median on a noisy machine. It misses one
  real effect: after a real inference, the cores and caches are still busy for a moment.

The server overhead budget: median overhead at most 10 ms for JSON and 40 ms for JPEG. The
standalone cost of each step and the machine's load average are recorded too. Results are
printed as a table and written to benchmarks/results/server_overhead.json with the machine
description.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import describe  # noqa: E402
from harness.photos import benchmark_photo_jpeg  # noqa: E402
from harness.server import started_server  # noqa: E402
from harness.timing import median_s, timed  # noqa: E402

CA = "X-Amzn-SageMaker-Custom-Attributes"
BUDGET_MS = {"application/json": 10.0, "image/jpeg": 40.0}
KINDS = {"json": "application/json", "jpeg": "image/jpeg"}


class ReplayEngine:
    """The real engine's detections for one photo, returned instantly for every request."""

    def __init__(self, engine, body: bytes):
        from engine.image_io import decode_image

        self.class_names = engine.class_names
        self.model_name = engine.model_name
        self.backend_name = f"replay of {engine.backend_name}"
        self.precision = engine.precision
        self.untrained = engine.untrained
        self.demo = engine.demo
        self._detections = engine.predict(decode_image(body))

    def predict(self, image, score_threshold=0.5, max_detections=100, class_ids=None):
        return self._detections


def load(model_dir: Path, engine_kind: str, body: bytes):
    from engine import Engine

    engine = Engine.load(model_dir)
    engine.warmup()
    return engine if engine_kind == "real" else ReplayEngine(engine, body)


def summarise(samples: list[tuple[float, float, int]]) -> dict:
    """[(latency_ms, inference_ms, detections)] -> medians and spread."""
    overheads = sorted(lat - inf for lat, inf, _ in samples)
    return {
        "overhead_ms_median": round(statistics.median(overheads), 2),
        "overhead_ms_p90": round(overheads[min(len(overheads) - 1, int(0.9 * len(overheads)))], 2),
        "overhead_ms_min": round(overheads[0], 2),
        "latency_ms_median": round(statistics.median(s[0] for s in samples), 1),
        "inference_ms_median": round(statistics.median(s[1] for s in samples), 1),
        "detections": int(statistics.median(s[2] for s in samples)),
        "repeats": len(samples),
    }


def measure_overhead(call, repeats: int, warmup: int = 2) -> dict:
    """Alternating JSON and JPEG requests; per response type, a summary of the samples."""
    samples = {kind: [] for kind in KINDS}
    for i in range(warmup + repeats):
        for kind, accept in KINDS.items():
            seconds, (status, headers) = timed(call, accept)
            latency = seconds * 1e3
            if status != 200:
                raise RuntimeError(f"request failed with {status}")
            meta = json.loads(headers[CA])
            if i >= warmup:
                samples[kind].append((latency, meta["inference_ms"], meta["detections"]))
    return {kind: summarise(s) for kind, s in samples.items()}


def in_process(engine, body: bytes, repeats: int) -> dict:
    import falcon.testing

    from server import ServerConfig, create_app

    client = falcon.testing.TestClient(create_app(engine, ServerConfig()))

    def call(accept):
        resp = client.simulate_post("/invocations", body=body,
                                    headers={"Content-Type": "image/jpeg", "Accept": accept})
        return resp.status_code, resp.headers

    return measure_overhead(call, repeats)


def over_http(server: dict, body: bytes, repeats: int, log_path: Path) -> dict:
    """Start a server process (harness.server.ServerProcess's arguments in `server`), wait for
    /ping 200 (with a deadline), measure, SIGTERM it."""
    process = started_server(log_path=log_path, **server)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", process.port, timeout=120)  # kept alive

        def call(accept):
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": "image/jpeg", "Accept": accept})
            resp = conn.getresponse()
            resp.read()
            return resp.status, resp.headers

        return measure_overhead(call, repeats)
    finally:
        process.stop(60)


def replay_server(model_dir: Path, host: str, port: int) -> None:
    """The server process for the replay engine: the real app on waitress, as `serve` runs it."""
    import waitress

    from server import ServerConfig, create_app
    from server.serving import serve_until

    config = ServerConfig()
    app = create_app(load(model_dir, "replay", benchmark_photo_jpeg()), config)
    server = waitress.create_server(app, host=host, port=port, threads=config.http_threads)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    serve_until(server, stop)


def step_costs(engine, body: bytes, repeats: int = 30) -> dict:
    """Median standalone cost of the steps the server adds, in ms."""
    from engine.image_io import decode_image, probe_image
    from engine.render import encode_image, render_detections
    from server.negotiation import RequestOptions
    from server.responses import detections_to_json

    image = decode_image(body)
    det = engine.predict(image)

    def ms(fn) -> float:
        return round(median_s(fn, repeats, warmup=2)[0] * 1e3, 2)

    rendered = render_detections(image, det)
    return {
        "probe_header": ms(lambda: probe_image(body)),
        "decode_jpeg": ms(lambda: decode_image(body)),
        "json_body": ms(lambda: json.dumps(detections_to_json(det, RequestOptions())).encode()),
        "render": ms(lambda: render_detections(image, det)),
        "encode_jpeg_q90": ms(lambda: encode_image(rendered, "jpeg", 90)),
        "detections": len(det.scores),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="model directory (e.g. from `python build_engine.py --output DIR ...`)")
    parser.add_argument("--repeats", type=int, default=9, help="requests per case with the real engine (default 9)")
    parser.add_argument("--replay-repeats", type=int, default=100,
                        help="requests per case with replayed detections (default 100)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "server_overhead.json")
    parser.add_argument("--replay-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.model_dir.is_dir():
        parser.error(f"model directory {args.model_dir} does not exist")
    if args.replay_server:
        replay_server(args.model_dir, args.host, args.port)
        return 0

    body = benchmark_photo_jpeg()
    load_before = os.getloadavg()
    print(f"640x480 photo, {len(body)} bytes JPEG; model {args.model_dir}; load average {load_before}",
          file=sys.stderr)
    servers = {  # ServerProcess's arguments: the real `serve`, or this script's replay server
        "real": {"model_dir": args.model_dir},
        "replay": {"model_dir": None, "args": [],
                   "command": [sys.executable, str(Path(__file__).resolve()), "--replay-server",
                               "--model-dir", str(args.model_dir)]},
    }
    results, steps = {}, None
    with tempfile.TemporaryDirectory() as logs:
        for engine_kind, repeats in (("replay", args.replay_repeats), ("real", args.repeats)):
            engine = load(args.model_dir, engine_kind, body)
            if engine_kind == "real":
                steps = step_costs(engine, body)
            results[("in-process", engine_kind)] = in_process(engine, body, repeats)
            del engine  # free its threads and memory before the server process starts
            results[("waitress", engine_kind)] = over_http(servers[engine_kind], body, repeats,
                                                           Path(logs) / f"{engine_kind}.log")
    load_after = os.getloadavg()

    rows = []
    print(f"\n{'path':<12}{'engine':<8}{'response':<18}{'overhead ms':>12}{'p90':>8}{'budget':>8}"
          f"{'predict ms':>12}{'dets':>6}{'n':>5}")
    for (path, engine_kind), by_kind in sorted(results.items()):
        for kind, accept in KINDS.items():
            r = by_kind[kind]
            ok = r["overhead_ms_median"] <= BUDGET_MS[accept]
            rows.append({"path": path, "engine": engine_kind, "response": accept, **r,
                         "budget_ms": BUDGET_MS[accept], "within_budget": ok})
            print(f"{path:<12}{engine_kind:<8}{accept:<18}{r['overhead_ms_median']:>12.2f}{r['overhead_ms_p90']:>8.2f}"
                  f"{BUDGET_MS[accept]:>8.0f}{r['inference_ms_median']:>12.1f}{r['detections']:>6}{r['repeats']:>5}"
                  f"  {'ok' if ok else 'OVER BUDGET'}")
    print(f"\nstandalone step costs (ms): {json.dumps(steps)}\nload average before {load_before}, after {load_after}")

    model_json = json.loads((args.model_dir / "model.json").read_text())
    report = {
        "benchmark": "server overhead over engine.predict: median over requests of (client latency - inference_ms)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {**describe(), "load_average_before": load_before, "load_average_after": load_after},
        "model": {"dir": str(args.model_dir), "name": model_json.get("name"), "arch": model_json.get("arch"),
                  "weights": model_json.get("weights")},
        "image": {"source": "skimage.data.coffee resized to 640x480, JPEG quality 90", "jpeg_bytes": len(body)},
        "results": rows,
        "step_costs_ms": steps,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.output}", file=sys.stderr)
    return 0 if all(r["within_budget"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

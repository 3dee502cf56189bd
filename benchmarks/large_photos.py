#!/usr/bin/env python3
"""Phone photos: time per stage and memory, 640x480 against 12 and 40 MP, in the engine and
through the real server.

    python benchmarks/large_photos.py [--model-dir DIR] [--runs 3] [--server-requests 50] [--no-server]

The photos are skimage's `coffee` scaled up with bicubic interpolation (real content, smooth
at large sizes, as a phone's photo is). Score threshold 0.05 and at most 100 detections: R50
with seeded random weights (the default model) gives 100 at any size.

Engine (each size in its own child process, so its peak RSS is its own): load the model,
three warm-up requests at 640x480 (ONNX Runtime's arena reaches its steady size) and one at
the size itself; then `--runs` timed `predict` calls; then, once each, making every mask crop,
render + JPEG and render + PNG of the answer, the JSON with RLE masks. The peak memory of a
request is the child's peak RSS (VmHWM, reset first) over one whole request as the server
does it (decode the uploaded JPEG, predict, render and encode the JPEG answer), minus the
RSS before it, i.e. over the loaded, warm model. Decoding is timed per kind of file (JPEG,
grey JPEG, EXIF-rotated JPEG, PNG, grey PNG, 16-bit PNG).

Server: `serve --model-dir` on a free port; warm-up requests, then per size and answer (JSON
with RLE masks, JPEG, PNG) `--runs` requests timed as the client sees them; then
`--server-requests` 12 MP requests (the three answers in turn), sampling the server's RSS
after the first and after the last. Writes benchmarks/results/large_photos.json.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import write_results  # noqa: E402
from harness.model_dirs import random_r50_model_dir  # noqa: E402
from harness.photos import jpeg_bytes, photo_of_size  # noqa: E402
from harness.proc import peak_rss_mb, reset_peak_rss, rss_mb  # noqa: E402
from harness.server import started_server  # noqa: E402
from harness.timing import median_s, timed  # noqa: E402

SCORE_THRESHOLD = 0.05  # torchvision's default; R50 with random weights still gives 100 detections
SIZES = {"640x480": (480, 640), "4000x3000 (12 MP)": (3000, 4000), "7300x5500 (40 MP)": (5500, 7300)}
SERVER_SIZES = ("640x480", "4000x3000 (12 MP)")
CA = "X-Amzn-SageMaker-Custom-Attributes"
ANSWERS = {  # name -> (Accept, custom attributes)
    "json_rle": ("application/json", {"include": ["masks", "scores"], "mask_format": "rle"}),
    "jpeg": ("image/jpeg", {}),
    "png": ("image/png", {}),
}


def decode_kinds(photo: np.ndarray) -> dict:
    """The photo as each kind of upload: JPEG q90, grey JPEG, JPEG with EXIF orientation 6
    (stored sideways), PNG, grey PNG, 16-bit PNG."""
    import cv2
    from PIL import Image

    bgr = np.ascontiguousarray(photo[..., ::-1])
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.rot90(photo, 1))).save(rotated, "JPEG", quality=90, exif=exif.tobytes())
    return {
        "jpeg": jpeg_bytes(photo),
        "jpeg_gray": cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes(),
        "jpeg_exif_rotated": rotated.getvalue(),
        "png": cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes(),
        "png_gray": cv2.imencode(".png", gray, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes(),
        "png_16bit": cv2.imencode(".png", bgr.astype(np.uint16) * 257, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes(),
    }


def measure_one(model_dir: str, h: int, w: int, runs: int) -> dict:
    """In the child: load, warm up, time each stage, then the memory of one whole request."""
    from engine import Engine, decode_image
    from engine.render import encode_image, render_detections
    from server.negotiation import RequestOptions
    from server.responses import detections_to_json

    engine = Engine.load(model_dir)
    small = photo_of_size(480, 640)
    for _ in range(3):  # ONNX Runtime's arena grows over the first requests, then stays
        engine.predict(small, score_threshold=SCORE_THRESHOLD, max_detections=100)
    settings = {"score_threshold": SCORE_THRESHOLD, "max_detections": 100}

    def render(image, det, fmt: str) -> bytes:
        return encode_image(render_detections(image, det), fmt, overwrite=True)

    photo = photo_of_size(h, w)
    upload = jpeg_bytes(photo)
    engine.predict(photo, **settings)  # this size's first request (its resize plan is built once per size)
    times, stages = [], []
    for _ in range(runs):
        seconds, detections = timed(engine.predict, photo, **settings)
        times.append(seconds)
        stages.append(detections.timings)
    paste_s, _ = timed(lambda det: [crop.mask.shape for crop in det.mask_crops], detections)
    render_jpeg_s, answer = timed(render, photo, detections, "jpeg")
    render_png_s, _ = timed(render, photo, detections, "png")
    json_s, body = timed(lambda det: json.dumps(detections_to_json(det, RequestOptions(include=frozenset({"masks"})))),
                         detections)
    decode_s = {kind: round(median_s(lambda data=data: decode_image(data), 3)[0], 4)
                for kind, data in decode_kinds(photo).items()}
    count = len(detections)
    del detections, answer, body

    def whole_request():  # as the server runs one: decode the upload, predict, JPEG answer
        image = decode_image(upload)
        return render(image, engine.predict(image, **settings), "jpeg")

    del photo
    whole_request()
    before = rss_mb()
    reset_peak_rss()
    whole_request()
    return {
        "detections": count,
        "predict_median_s": round(float(np.median(times)), 4),
        "predict_runs_s": [round(t, 4) for t in times],
        "stages_median_ms": {k: round(float(np.median([s[k] for s in stages])), 1) for k in stages[0]},
        "paste_all_crops_s": round(paste_s, 4),
        "render_jpeg_s": round(render_jpeg_s, 4),
        "render_png_s": round(render_png_s, 4),
        "json_rle_s": round(json_s, 4),
        "decode_s": decode_s,
        "upload_jpeg_mb": round(len(upload) / 2**20, 2),
        "rss_before_request_mb": round(before, 1),
        "request_peak_over_warm_model_mb": round(peak_rss_mb() - before, 1),
    }


def post(port: int, body: bytes, answer: str) -> tuple[float, int, int]:
    """One invocation: (seconds as the client sees them, status, response bytes)."""
    accept, attributes = ANSWERS[answer]
    attributes = {**attributes, "score_threshold": SCORE_THRESHOLD, "max_detections": 100}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def call():
        conn.request("POST", "/invocations", body=body,
                     headers={"Content-Type": "image/jpeg", "Accept": accept, CA: json.dumps(attributes)})
        resp = conn.getresponse()
        return resp.status, resp.read()

    elapsed, (status, data) = timed(call)
    conn.close()
    return elapsed, status, len(data)


def measure_server(model_dir: str, runs: int, requests: int) -> dict:
    """The real `serve` process: latency per size and answer, and RSS over many large requests."""
    server = started_server(model_dir, Path(tempfile.mkdtemp(prefix="large-photos-serve-")) / "serve.log")
    port = server.port
    try:
        bodies = {label: jpeg_bytes(photo_of_size(*SIZES[label])) for label in SERVER_SIZES}
        for _ in range(3):
            post(port, bodies["640x480"], "json_rle")
        latency = {}
        for label in SERVER_SIZES:
            for answer in ANSWERS:
                post(port, bodies[label], answer)  # warm: the first request of its kind
                samples = [post(port, bodies[label], answer) for _ in range(runs)]
                assert all(status == 200 for _, status, _ in samples), samples
                latency[f"{label} {answer}"] = {"median_s": round(float(np.median([s[0] for s in samples])), 4),
                                                "response_bytes": samples[-1][2]}
        for answer in ANSWERS:
            large, small = latency[f"{SERVER_SIZES[1]} {answer}"], latency[f"{SERVER_SIZES[0]} {answer}"]
            large["ratio_to_640x480"] = round(large["median_s"] / small["median_s"], 3)
        answers = list(ANSWERS)
        rss = []
        for i in range(requests):
            _, status, _ = post(port, bodies[SERVER_SIZES[1]], answers[i % len(answers)])
            assert status == 200, status
            rss.append(round(rss_mb(server.pid), 1))
        return {"latency": latency, "requests": requests, "rss_after_first_mb": rss[0], "rss_after_last_mb": rss[-1],
                "rss_max_between_requests_mb": max(rss), "growth_first_to_last": round(rss[-1] / rss[0] - 1, 4)}
    finally:
        server.stop(60)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="default: R50-FPN v1 with seeded random weights, exported to a temp dir")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server-requests", type=int, default=50)
    parser.add_argument("--no-server", action="store_true", help="only the engine figures")
    parser.add_argument("--child", nargs=3, metavar=("MODEL_DIR", "H", "W"), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "large_photos.json")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_one(args.child[0], int(args.child[1]), int(args.child[2]), args.runs)))
        return 0
    model_dir = args.model_dir or random_r50_model_dir("large-photos-")
    results = {}
    for label, (h, w) in SIZES.items():
        out = subprocess.run([sys.executable, __file__, "--child", model_dir, str(h), str(w), "--runs", str(args.runs)],
                             capture_output=True, text=True, check=True)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
        print(label, results[label], file=sys.stderr)
    small = results["640x480"]["predict_median_s"]
    for label in SIZES:
        results[label]["predict_ratio_to_640x480"] = round(results[label]["predict_median_s"] / small, 3)
    report = {"benchmark": "large_photos", "model_dir": model_dir, "runs": args.runs,
              "score_threshold": SCORE_THRESHOLD, "max_detections": 100, "sizes": results}
    if not args.no_server:
        report["server"] = measure_server(model_dir, args.runs, args.server_requests)
    write_results(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Phone photos through the engine: time per stage and peak memory, 640x480 against 12 and 40 MP.

    python benchmarks/large_photos.py [--model-dir DIR] [--runs 3]

Each size runs in its own child process (so peak RSS belongs to that size alone): load the
model, warm up on the photo, then `--runs` timed `predict` calls with score threshold 0.05
and at most 100 detections (R50-FPN v1 with seeded random weights gives 100 at any size), then one
render + JPEG encode of the answer. Peak memory of one request is the child's peak RSS
(VmHWM, reset after the warm-up) during the requests minus its RSS after a warm-up on a
640x480 photo, i.e. over the loaded model. The photos are skimage's `coffee` scaled up with bicubic interpolation (real content,
smooth at large sizes, as a phone's photo is). Writes benchmarks/results/large_photos.json.

Not measured here yet (issue 13): the same sizes through the real server (JSON with RLE
masks, JPEG and PNG answers) and server memory over 50 large requests.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.inputs import skimage_photo  # noqa: E402
from benchmarks.machine import write_results  # noqa: E402

SCORE_THRESHOLD = 0.05  # torchvision's default; R50 with random weights still gives 100 detections
SIZES = {"640x480": (480, 640), "4000x3000 (12 MP)": (3000, 4000), "7300x5500 (40 MP)": (5500, 7300)}


def photo_of_size(h: int, w: int) -> np.ndarray:
    import cv2

    return np.ascontiguousarray(cv2.resize(skimage_photo("coffee"), (w, h), interpolation=cv2.INTER_CUBIC))


def rss_mb() -> float:
    """This process's current resident set (Linux /proc), MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak_rss() -> None:
    """Start a new peak (VmHWM) from the current RSS (Linux >= 4.0: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_mb() -> float:
    """Peak RSS since the last reset_peak_rss() (VmHWM), MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # kB


def measure_one(model_dir: str, h: int, w: int, runs: int) -> dict:
    """In the child: load, warm up, time predict per stage, then render + encode once."""
    from engine import Engine
    from engine.render import encode_image, render_detections

    engine = Engine.load(model_dir)
    engine.predict(photo_of_size(480, 640), score_threshold=SCORE_THRESHOLD, max_detections=100)
    photo = photo_of_size(h, w)
    # Everything up to here (model, a 640x480 request's buffers, the photo) is the baseline.
    reset_peak_rss()
    baseline = rss_mb()
    times, stages = [], []
    for _ in range(runs):
        start = time.perf_counter()
        detections = engine.predict(photo, score_threshold=SCORE_THRESHOLD, max_detections=100)
        times.append(time.perf_counter() - start)
        stages.append(detections.timings)
    start = time.perf_counter()
    encode_image(render_detections(photo, detections), "jpeg")
    render_s = time.perf_counter() - start
    return {
        "detections": len(detections),
        "predict_median_s": round(float(np.median(times)), 4),
        "predict_runs_s": [round(t, 4) for t in times],
        "stages_median_ms": {k: round(float(np.median([s[k] for s in stages])), 1) for k in stages[0]},
        "render_jpeg_s": round(render_s, 4),
        "baseline_rss_mb": round(baseline, 1),
        "request_peak_over_baseline_mb": round(peak_rss_mb() - baseline, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="default: R50-FPN v1 with seeded random weights, exported to a temp dir")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("MODEL_DIR", "H", "W"), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "large_photos.json")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure_one(args.child[0], int(args.child[1]), int(args.child[2]), args.runs)))
        return 0
    model_dir = args.model_dir
    if model_dir is None:
        from exporter import export
        from exporter.weights import coco_class_names, random_model

        model_dir = str(Path(tempfile.mkdtemp(prefix="large-photos-")) / "r50")
        export(random_model("maskrcnn_resnet50_fpn", seed=0), model_dir, coco_class_names(), quiet=True,
               weights_info={"source": "random", "seed": 0, "trained": False})
    results = {}
    for label, (h, w) in SIZES.items():
        out = subprocess.run([sys.executable, __file__, "--child", model_dir, str(h), str(w), "--runs", str(args.runs)],
                             capture_output=True, text=True, check=True)
        results[label] = json.loads(out.stdout.strip().splitlines()[-1])
        print(label, results[label], file=sys.stderr)
    small = results["640x480"]["predict_median_s"]
    for label in SIZES:
        results[label]["predict_ratio_to_640x480"] = round(results[label]["predict_median_s"] / small, 3)
    write_results({"benchmark": "large_photos", "model_dir": model_dir, "runs": args.runs,
                   "score_threshold": SCORE_THRESHOLD, "max_detections": 100, "sizes": results}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

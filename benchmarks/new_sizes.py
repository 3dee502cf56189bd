#!/usr/bin/env python3
"""The first request at an image size not seen before, against the same size repeated.

    python benchmarks/new_sizes.py [--model-dir DIR] [--backends openvino onnxruntime-cpu] [--repeats 2]

OpenVINO compiles dynamic shapes lazily (torchvision's whole graph took seconds on its first
call), so a new network input size could cost a request far more than its steady latency.
For each backend: load the model (R50-FPN v1, seeded random weights, by default), warm up as
the server does (Engine.warmup), then for each of several photo sizes whose resized, padded
network inputs all differ: one `predict` (the first at that input shape), then `--repeats`
more. The ratio is first / median of the repeats; the target for new sizes is at most 1.5
for every size after warm-up. Writes benchmarks/results/new_sizes.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import write_results  # noqa: E402
from harness.model_dirs import random_r50_model_dir  # noqa: E402
from harness.photos import skimage_photo  # noqa: E402
from harness.timing import repeat, timed  # noqa: E402

# (width, height) of the photos: landscape, portrait, square, wide, tall, small; each gives
# another padded network input under the 800/1333 rule
SIZES = [(640, 480), (500, 480), (700, 480), (480, 640), (1000, 480), (300, 480), (400, 400), (1600, 500)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", help="default: R50-FPN v1, seeded random weights, exported now")
    parser.add_argument("--backends", nargs="+", default=["openvino", "onnxruntime-cpu"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "new_sizes.json"))
    args = parser.parse_args()
    import cv2

    from engine import Engine

    model_dir = args.model_dir or random_r50_model_dir("new-sizes-")
    photo = skimage_photo("coffee")
    report = {"model": args.model_dir or "R50-FPN v1, random weights (seed 0)", "backends": {}}
    for backend in args.backends:
        engine = Engine.load(model_dir, backend=backend)
        warmup_s, _ = timed(engine.warmup)
        rows = []
        for w, h in SIZES:
            image = np.ascontiguousarray(cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA))
            padded = engine.transform(image).tensor.shape[2:]
            times = [s * 1e3 for s in repeat(lambda: engine.predict(image, score_threshold=0.05, max_detections=10),
                                             1 + args.repeats)[0]]
            steady = float(np.median(times[1:]))
            rows.append({"photo": f"{w}x{h}", "network_input": list(padded), "first_ms": round(times[0]),
                         "repeated_ms": round(steady), "ratio": round(times[0] / steady, 2)})
            print(backend, rows[-1], file=sys.stderr)
        report["backends"][backend] = {"precision": engine.precision, "warmup_s": round(warmup_s, 2), "sizes": rows,
                                       "max_ratio": max(r["ratio"] for r in rows)}
    write_results(report, args.out)
    return 0 if all(b["max_ratio"] <= 1.5 for b in report["backends"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

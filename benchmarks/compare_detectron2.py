#!/usr/bin/env python3
"""Latency of this engine against detectron2's own CPU DefaultPredictor: the same detectron2
Mask R-CNN (built by detectron2 from its model-zoo config, seeded weights), the same photo,
interleaved in one process, each giving the same top-10 detections.

Rows: detectron2's DefaultPredictor (eager PyTorch); this engine on the converted model
directory with ONNX Runtime FP32, OpenVINO FP32 and the engine's default backend and
precision (`backend="auto"`: OpenVINO BF16 where the CPU has BF16 instructions). Both sides
start from the decoded photo (DefaultPredictor's input is a decoded BGR array) and end with
masks at the photo's size (the engine's are pasted here, as a consumer reading them would).

    python benchmarks/compare_detectron2.py [--config COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml]
        [--runs 7] [--threads 2]

Needs torch and detectron2 (installed, or its source where tests/detectron2_reference.py
finds it). Writes benchmarks/results/compare_detectron2.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from benchmarks.compare_torchvision import agreement  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from harness.photos import benchmark_photo_jpeg  # noqa: E402
from harness.timing import timed  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
                        help="a detectron2 model-zoo config, relative to its configs folder")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "compare_detectron2.json")
    args = parser.parse_args(argv)

    import torch

    import detectron2_reference
    from detectron2_models import detectron2_cfg, predictor, save_pkl, seeded_model
    from engine import Engine, decode_image
    from engine.backends import available_backends
    from exporter.detectron2 import export_detectron2

    torch.set_num_threads(args.threads)
    detectron2_reference.load()
    image = decode_image(benchmark_photo_jpeg())  # RGB, as the server decodes an upload
    bgr = np.ascontiguousarray(image[:, :, ::-1])  # DefaultPredictor's input
    cfg = detectron2_cfg(args.config)
    work = Path(tempfile.mkdtemp(prefix="bench-d2-"))
    print("building detectron2's model with seeded weights...", file=sys.stderr)
    save_pkl(seeded_model(cfg), work / "model_final.pkl")
    reference = predictor(cfg, work / "model_final.pkl")
    print("converting it...", file=sys.stderr)
    config_file = work / "config.yaml"
    config_file.write_text(cfg.dump())
    export_detectron2(config_file, work / "model_final.pkl", work / "engine", quiet=True)

    engines = {"this engine, onnxruntime FP32": Engine.load(work / "engine", backend="onnxruntime-cpu",
                                                            threads=args.threads)}
    if available_backends()["openvino"] is None:
        engines["this engine, openvino FP32"] = Engine.load(work / "engine", backend="openvino", precision="fp32",
                                                            threads=args.threads)
    default = Engine.load(work / "engine", threads=args.threads)
    engines[f"this engine, default ({default.backend_name} {default.precision.upper()})"] = default

    def run_detectron2():
        instances = reference(bgr)["instances"]
        return instances.pred_boxes.tensor[:10].numpy(), instances.pred_classes[:10].numpy() + 1

    def engine_runner(engine):
        def run():
            det = engine.predict(image, score_threshold=cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
                                 max_detections=cfg.TEST.DETECTIONS_PER_IMAGE)
            for _ in det.mask_crops:  # every mask pasted, as DefaultPredictor's are
                pass
            return det.boxes[:10], det.class_ids[:10]

        return run

    methods = {"detectron2 DefaultPredictor": run_detectron2, **{n: engine_runner(e) for n, e in engines.items()}}
    results = {name: fn() for name, fn in methods.items()}  # warm-up, and the top-10s to compare
    times = {name: [] for name in methods}
    for run in range(args.runs):
        for name, fn in methods.items():
            times[name].append(timed(fn)[0])
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{n.split(',')[-1].strip()} {times[n][-1]:.2f}s"
                                                      for n in methods), file=sys.stderr)
    base = float(np.median(times["detectron2 DefaultPredictor"]))
    rows = [{"method": name,
             "median_s": round(float(np.median(times[name])), 4),
             "p90_s": round(float(np.percentile(times[name], 90)), 4),
             "ratio_to_detectron2": round(float(np.median(times[name])) / base, 3),
             "top10_agreement_with_detectron2": agreement(*results["detectron2 DefaultPredictor"], *results[name])}
            for name in methods]
    report = {
        "benchmark": "compare_detectron2",
        "config": args.config,
        "image": "skimage coffee resized to 640x480, as JPEG q90, decoded (network input 800x1067)",
        "threads": args.threads,
        "runs": args.runs,
        "weights": "seeded random (tests/detectron2_models.seeded_model, seed 0)",
        "detectron2": str(Path(detectron2_reference.load().__file__).parent),
        "results": rows,
        "machine": describe(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(r["method"]) for r in rows)
    for r in rows:
        print(f"{r['method']:{width}}  {r['median_s']:.3f} s  {r['ratio_to_detectron2']:.2f}x  "
              f"top-10 agreement {r['top10_agreement_with_detectron2']:.2f}")
    print(f"written {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

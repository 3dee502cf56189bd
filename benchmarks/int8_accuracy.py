#!/usr/bin/env python3
"""INT8 against FP32 on the demo model's held-out scenes: detection agreement, COCO AP and
latency, both engines from the same checkpoint and export path.

    python benchmarks/int8_accuracy.py --checkpoint CKPT [--scenes 300] [--calib 16]

Agreement: of the FP32 engine's detections scoring >= 0.5, the fraction that the INT8 engine
also returns with the same class and box IoU >= 0.9. Calibration uses training-range scenes
(never the held-out ones). Writes benchmarks/results/int8_accuracy.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.compare_torchvision import box_iou  # noqa: E402
from benchmarks.machine import write_results  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="demo.shapes_model state_dict")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "int8_accuracy.json")
    args = parser.parse_args(argv)

    import torch

    from demo.evaluate import engine_predictor, evaluate, held_out_scenes
    from demo.shapes import CLASS_NAMES, TRAIN_SEED_START, generate_scene
    from demo.shapes_model import build_shapes_model
    from engine import Engine
    from exporter import export
    from exporter.quantize import export_int8

    model = build_shapes_model()
    model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    model.eval()
    work = Path(tempfile.mkdtemp(prefix="int8-"))
    export(model, work / "fp32", CLASS_NAMES, mask_paste="aligned", quiet=True)
    calibration = [generate_scene(TRAIN_SEED_START + i).image for i in range(args.calib)]
    export_int8(model, work / "int8", CLASS_NAMES, calibration, mask_paste="aligned", quiet=True)
    engines = {"fp32": Engine.load(work / "fp32"), "int8": Engine.load(work / "int8")}
    scenes = held_out_scenes(args.scenes)

    figures, latency = {}, {}
    for name, engine in engines.items():
        start = time.perf_counter()
        figures[name] = evaluate(engine_predictor(engine), scenes)
        latency[name] = (time.perf_counter() - start) / len(scenes) * 1000.0
    matched = total = 0
    for scene in scenes:
        a = engines["fp32"].predict(scene.image, score_threshold=0.5)
        b = engines["int8"].predict(scene.image, score_threshold=0.5)
        total += len(a)
        if len(a) and len(b):
            ious = box_iou(a.boxes.astype(np.float64), b.boxes.astype(np.float64))
            ious[a.class_ids[:, None] != b.class_ids[None, :]] = 0
            matched += int((ious.max(axis=1) >= 0.9).sum())
    report = {
        "benchmark": "int8_accuracy",
        "model": "demo shapes model (aligned paste)",
        "scenes": args.scenes,
        "calibration_scenes": args.calib,
        "agreement_fp32_detections_matched": round(matched / max(total, 1), 4),
        "fp32_detections": total,
        "coco": {k: {"bbox_AP": v["bbox"]["AP"], "segm_AP": v["segm"]["AP"], "segm_AP50": v["segm"]["AP50"]} for k, v in figures.items()},
        "ms_per_scene_including_eval": {k: round(v, 1) for k, v in latency.items()},
    }
    write_results(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

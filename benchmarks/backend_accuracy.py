#!/usr/bin/env python3
"""Backends and precisions against ONNX Runtime FP32 on the demo model's held-out scenes:
detection agreement and COCO AP, the same model directory for all.

    python benchmarks/backend_accuracy.py [--model-dir demo/model] [--scenes 300]
        [--configs openvino:fp32 openvino:bf16]

Each config is BACKEND:PRECISION; one this machine cannot run (bf16 without BF16
instructions) is recorded with the reason. Agreement: of the reference's detections scoring
>= 0.5, the fraction the config also returns with the same class and box IoU >= 0.9 (issue
15's BF16 criteria: >= 97%, box AP and mask AP each within 0.01). Writes
benchmarks/results/backend_accuracy.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.int8_accuracy import agreement  # noqa: E402
from benchmarks.machine import write_results  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "demo" / "model")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--configs", nargs="+", default=["openvino:fp32", "openvino:bf16"])
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "backend_accuracy.json")
    args = parser.parse_args(argv)

    from demo.evaluate import engine_predictor, evaluate, held_out_scenes
    from engine import Engine
    from engine.errors import BackendUnavailableError

    scenes = held_out_scenes(args.scenes)
    images = [scene.image for scene in scenes]

    def figures(engine) -> dict:
        coco = evaluate(engine_predictor(engine), scenes)
        return {"backend": engine.backend_name, "precision": engine.precision,
                "graphs": {g: f"{getattr(engine.backend, 'runtime_of', lambda _: 'onnxruntime')(g)} "
                              f"{getattr(engine.backend, 'precisions', {}).get(g, engine.precision)}"
                           for g in ("dense", "box_head", "mask_head")},
                "bbox_AP": round(coco["bbox"]["AP"], 4), "segm_AP": round(coco["segm"]["AP"], 4),
                "median_ms": round(coco["median_ms"], 1)}

    reference = Engine.load(args.model_dir, backend="onnxruntime-cpu")
    rows = {"onnxruntime:fp32": figures(reference)}
    for config in args.configs:
        backend, precision = config.split(":")
        try:
            engine = Engine.load(args.model_dir, backend=backend, precision=precision)
        except BackendUnavailableError as exc:
            rows[config] = {"unavailable": str(exc)}
            print(f"{config}: {exc}", file=sys.stderr)
            continue
        row = figures(engine)
        matched, total = agreement(reference, engine, images)
        row.update({"agreement_with_reference": round(matched / max(total, 1), 4), "reference_detections": total,
                    "bbox_AP_minus_reference": round(row["bbox_AP"] - rows["onnxruntime:fp32"]["bbox_AP"], 4),
                    "segm_AP_minus_reference": round(row["segm_AP"] - rows["onnxruntime:fp32"]["segm_AP"], 4)})
        rows[config] = row
        print(f"{config}: {row}", file=sys.stderr)
    write_results({"benchmark": "backend_accuracy", "model_dir": str(args.model_dir), "scenes": args.scenes,
                   "reference": "onnxruntime:fp32", "results": rows}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Backends and precisions against ONNX Runtime FP32 on the demo model's held-out scenes:
detection agreement and COCO AP, the same model directory for all; with --r50, the same
agreement for the seeded random-weight R50 on scikit-image photos.

    python benchmarks/backend_accuracy.py [--model-dir demo/model] [--scenes 300] [--r50]
        [--configs openvino:fp32 openvino:bf16 openvino:bf16:box_head=openvino/bf16 ...]

Each config is BACKEND:PRECISION, optionally followed by :GRAPH=RUNTIME/PRECISION,... to
override the openvino backend's plan for that precision (engine.backends.openvino_plans.PLANS),
and pooling=graph among them for the heads' own RoiAlign instead of the native one (then
GRAPH_POOLING_PLANS): e.g. openvino:bf16:pooling=graph,mask_head=openvino/bf16 runs the
mask head's RoiAlign in BF16 too. A config this machine cannot run (bf16 without BF16
instructions) is recorded with the reason. Agreement: of the reference's detections scoring >= 0.5, the fraction the config also
returns with the same class and box IoU >= 0.9 (the BF16 accuracy criteria: >= 97%, box AP
and mask AP each within 0.01). Writes benchmarks/results/backend_accuracy.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.compare_torchvision import CALIBRATION_PHOTOS, graph_runtimes  # noqa: E402
from benchmarks.int8_accuracy import R50_MEASURED_PHOTOS  # noqa: E402
from benchmarks.machine import write_results  # noqa: E402
from harness.agreement import engine_agreement  # noqa: E402

# the plans (openvino_plans.PLANS: every graph BF16, pooled natively in FP32), BF16 in the dense
# graph only, then without the native RoIAlign: the plan for that case, and the mask head's
# RoiAlign in BF16 on OpenVINO
DEFAULT_CONFIGS = ["openvino:fp32", "openvino:bf16", "openvino:bf16:box_head=openvino/fp32,mask_head=openvino/fp32",
                   "openvino:bf16:pooling=graph", "openvino:bf16:pooling=graph,mask_head=openvino/bf16"]


def load_config(model_dir, config: str):
    """An Engine for BACKEND:PRECISION[:GRAPH=RUNTIME/PRECISION,...] (see the module docstring)."""
    from engine import Engine
    from engine.backends.openvino_cpu import OpenVinoCpuBackend
    from engine.model_directory.directory import ModelDir

    backend, precision, *overrides = config.split(":")
    if not overrides:
        return Engine.load(model_dir, backend=backend, precision=precision)
    if backend != "openvino":
        raise ValueError(f"{config}: plan overrides are for the openvino backend")
    items = dict(item.split("=") for item in overrides[0].split(","))
    pooling = items.pop("pooling", None)
    plan = {graph: tuple(value.split("/")) for graph, value in items.items()}
    directory = ModelDir.open(Path(model_dir))
    return Engine(directory, OpenVinoCpuBackend(directory, precision=precision, plan=plan, pooling=pooling))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "demo" / "model")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    parser.add_argument("--r50", action="store_true", help="also: agreement on the random-weight R50 (skimage photos)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "backend_accuracy.json")
    args = parser.parse_args(argv)

    from demo.evaluate import engine_predictor, evaluate, held_out_scenes
    from engine import Engine
    from engine.errors import BackendUnavailableError

    scenes = held_out_scenes(args.scenes)
    images = [scene.image for scene in scenes]

    def figures(engine) -> dict:
        coco = evaluate(engine_predictor(engine), scenes)
        return {"backend": engine.backend_name, "precision": engine.precision, "graphs": graph_runtimes(engine.backend),
                "bbox_AP": round(coco["bbox"]["AP"], 4), "segm_AP": round(coco["segm"]["AP"], 4),
                "median_ms": round(coco["median_ms"], 1)}

    def runnable(model_dir, config):
        try:
            return load_config(model_dir, config)
        except BackendUnavailableError as exc:
            print(f"{config}: {exc}", file=sys.stderr)
            return {"unavailable": str(exc)}

    reference = Engine.load(args.model_dir, backend="onnxruntime-cpu")
    rows = {"onnxruntime:fp32": figures(reference)}
    for config in args.configs:
        engine = rows[config] = runnable(args.model_dir, config)
        if isinstance(engine, dict):
            continue
        row = figures(engine)
        matched, total = engine_agreement(reference, engine, images)
        row.update({"agreement_with_reference": round(matched / max(total, 1), 4), "reference_detections": total,
                    "bbox_AP_minus_reference": round(row["bbox_AP"] - rows["onnxruntime:fp32"]["bbox_AP"], 4),
                    "segm_AP_minus_reference": round(row["segm_AP"] - rows["onnxruntime:fp32"]["segm_AP"], 4)})
        rows[config] = row
        print(f"{config}: {row}", file=sys.stderr)
    report = {"benchmark": "backend_accuracy", "model_dir": str(args.model_dir), "scenes": args.scenes,
              "reference": "onnxruntime:fp32", "results": rows}

    if args.r50:
        from harness.model_dirs import random_r50_model_dir
        from harness.photos import skimage_photo

        r50_dir = random_r50_model_dir("backend-accuracy-")
        photos = list(CALIBRATION_PHOTOS) + list(R50_MEASURED_PHOTOS)
        r50_images = [skimage_photo(name) for name in photos]
        r50_reference = Engine.load(r50_dir, backend="onnxruntime-cpu")
        r50_rows = {}
        for config in args.configs:
            engine = r50_rows[config] = runnable(r50_dir, config)
            if isinstance(engine, dict):
                continue
            matched, total = engine_agreement(r50_reference, engine, r50_images)
            r50_rows[config] = {"graphs": graph_runtimes(engine.backend), "reference_detections": total, "matched": matched,
                                "agreement_with_reference": round(matched / max(total, 1), 4)}
            print(f"R50 {config}: {r50_rows[config]}", file=sys.stderr)
        report["random_r50"] = {"arch": "maskrcnn_resnet50_fpn", "weights": "seeded random (seed 0)",
                                "photos": photos, "reference": "onnxruntime:fp32", "results": r50_rows}
    write_results(report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

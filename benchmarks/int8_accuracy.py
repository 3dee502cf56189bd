#!/usr/bin/env python3
"""INT8 against FP32 on the demo model's held-out scenes: detection agreement, COCO AP and
latency, both engines from the same checkpoint and export path.

    python benchmarks/int8_accuracy.py --model-dir demo/model [--scenes 300] [--calib 16] [--weight-bits 7|8]
    python benchmarks/int8_accuracy.py --checkpoint CKPT [--scenes 300] [--calib 16]
    python benchmarks/int8_accuracy.py --random-r50 [--arch maskrcnn_resnet50_fpn ...]

--model-dir quantizes an FP32 demo model directory (the committed one: no checkpoint
needed); --checkpoint exports a demo.shapes_model state_dict first. The INT8 directory runs
on each CPU backend (onnxruntime-cpu, and openvino where it can run), each against the FP32
directory on ONNX Runtime. Agreement: of the FP32 engine's detections scoring >= 0.5, the
fraction that the INT8 engine also returns with the same class and box IoU >= 0.9.
Calibration uses training-range scenes (never the held-out ones). Run it with
ONEDNN_MAX_CPU_ISA=AVX2 to see OpenVINO as on a CPU without VNNI (engine.int8_arithmetic). Writes
benchmarks/results/int8_accuracy.json.

--random-r50 measures the same agreement for the seeded random-weight R50 models on
scikit-image photos (calibrated on four, measured on the others), written to
benchmarks/results/int8_agreement_random_r50.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.model_directory.named import ARCHS  # noqa: E402

from benchmarks.compare_torchvision import CALIBRATION_PHOTOS, graph_runtimes  # noqa: E402
from benchmarks.machine import write_results  # noqa: E402
from harness.agreement import engine_agreement  # noqa: E402
from harness.photos import skimage_photo  # noqa: E402
from harness.timing import timed  # noqa: E402

R50_MEASURED_PHOTOS = ("coffee", "immunohistochemistry", "hubble_deep_field", "camera", "coins", "page")


def random_r50_agreement(archs, output: Path) -> None:
    """INT8 vs FP32 agreement for seeded random-weight R50 models on real photos."""
    from engine import Engine
    from exporter import export
    from exporter.quantize import export_int8
    from exporter.weights import coco_class_names, random_model

    work = Path(tempfile.mkdtemp(prefix="int8-r50-"))
    calibration = [skimage_photo(n) for n in CALIBRATION_PHOTOS]
    measured = [skimage_photo(n) for n in R50_MEASURED_PHOTOS]
    rows = []
    for arch in archs:
        model = random_model(arch, seed=0)
        export(model, work / arch / "fp32", coco_class_names(), arch=arch, quiet=True)
        export_int8(model, work / arch / "int8", coco_class_names(), calibration, arch=arch, quiet=True)
        matched, total = engine_agreement(Engine.load(work / arch / "fp32"), Engine.load(work / arch / "int8"), measured)
        rows.append({"arch": arch, "weights": "seeded random (seed 0)", "fp32_detections": total,
                     "matched": matched, "agreement": round(matched / max(total, 1), 4)})
        print(f"{arch}: {matched}/{total} FP32 detections matched by INT8", file=sys.stderr)
    write_results({"benchmark": "int8_agreement_random_r50", "calibration_photos": list(CALIBRATION_PHOTOS),
                   "measured_photos": list(R50_MEASURED_PHOTOS), "results": rows}, output)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="an FP32 demo model directory to quantize (e.g. demo/model)")
    parser.add_argument("--checkpoint", type=Path, help="demo.shapes_model state_dict")
    parser.add_argument("--random-r50", action="store_true", help="measure the random-weight R50 models instead")
    parser.add_argument("--arch", action="append", help="with --random-r50 (default: v1 and v2)")
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--weight-bits", type=int, choices=(7, 8), default=None,
                        help="INT8 weight range (default: the exporter's, exporter.quantize.WEIGHT_BITS)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    results = ROOT / "benchmarks" / "results"
    if args.random_r50:
        archs = args.arch or list(ARCHS)
        random_r50_agreement(archs, args.output or results / "int8_agreement_random_r50.json")
        return 0
    if (args.checkpoint is None) == (args.model_dir is None):
        parser.error("give one of --model-dir, --checkpoint (or --random-r50)")

    import shutil

    from demo.evaluate import engine_predictor, evaluate, held_out_scenes
    from demo.shapes import CLASS_NAMES, TRAIN_SEED_START, generate_scene
    from engine import Engine
    from engine.backends import available_backends
    from engine.int8_arithmetic import RUNTIMES, saturates
    from exporter.quantize import WEIGHT_BITS, quantize_graphs

    weight_bits = args.weight_bits or WEIGHT_BITS
    work = Path(tempfile.mkdtemp(prefix="int8-"))
    if args.model_dir is not None:
        fp32_dir = args.model_dir
    else:
        import torch

        from demo.shapes_model import build_shapes_model
        from exporter import export

        model = build_shapes_model()
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
        model.eval()
        fp32_dir = export(model, work / "fp32", CLASS_NAMES, mask_paste="aligned", quiet=True)
    calibration = [generate_scene(TRAIN_SEED_START + i).image for i in range(args.calib)]
    shutil.copytree(fp32_dir, work / "int8")
    quantize_graphs(Path(fp32_dir), work / "int8", calibration, quiet=True, weight_bits=weight_bits)
    engines = {"fp32 onnxruntime-cpu": Engine.load(fp32_dir, backend="onnxruntime-cpu"),
               "int8 onnxruntime-cpu": Engine.load(work / "int8", backend="onnxruntime-cpu")}
    if available_backends()["openvino"] is None:
        engines["int8 openvino"] = Engine.load(work / "int8", backend="openvino")
    scenes = held_out_scenes(args.scenes)

    figures, latency, agreements = {}, {}, {}
    for name, engine in engines.items():
        seconds, figures[name] = timed(evaluate, engine_predictor(engine), scenes)
        latency[name] = seconds / len(scenes) * 1000.0
        if name != "fp32 onnxruntime-cpu":
            matched, total = engine_agreement(engines["fp32 onnxruntime-cpu"], engine, [scene.image for scene in scenes])
            agreements[name] = {"matched": matched, "fp32_detections": total, "agreement": round(matched / max(total, 1), 4)}
        print(f"{name}: box AP {figures[name]['bbox']['AP']:.4f}, mask AP {figures[name]['segm']['AP']:.4f}, "
              f"{agreements.get(name, '')}", file=sys.stderr)
    report = {
        "benchmark": "int8_accuracy",
        "model": f"demo shapes model (aligned paste), from {args.model_dir or args.checkpoint}",
        "scenes": args.scenes,
        "calibration_scenes": args.calib,
        "weight_bits": weight_bits,
        # whether each runtime's INT8 products saturate here (engine.int8_arithmetic), and the
        # oneDNN instruction-set limit that can make OpenVINO's do so on a CPU with VNNI
        "int8_saturates": {runtime: saturates(runtime) for runtime in RUNTIMES},
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "agreement_with_fp32": agreements,
        "graphs": {name: graph_runtimes(e.backend) for name, e in engines.items()},
        "coco": {k: {"bbox_AP": v["bbox"]["AP"], "segm_AP": v["segm"]["AP"], "segm_AP50": v["segm"]["AP50"]} for k, v in figures.items()},
        "ms_per_scene_including_eval": {k: round(v, 1) for k, v in latency.items()},
    }
    write_results(report, args.output or results / "int8_accuracy.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

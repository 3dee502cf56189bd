#!/usr/bin/env python3
"""Latency of this engine against torchvision eager and ONNX Runtime and OpenVINO on
torchvision's whole exported graph: same weights, same photo, interleaved in one process,
each giving the same top-10 detections.

Engine rows: ONNX Runtime FP32, OpenVINO at each precision this CPU runs (FP32, BF16 where
it has BF16 instructions), again without the native RoIAlign (the heads' own RoiAlign, as
where the package was built without a C compiler), and both CPU backends on the INT8 model
directory; the stage breakdown and `engine_graph_runtimes` say which runtime and precision
ran each graph.

    python benchmarks/compare_torchvision.py [--arch maskrcnn_resnet50_fpn] [--runs 7] [--threads 2] [--no-int8]

Writes benchmarks/results/compare_torchvision.json and prints a table. Needs the export
extra (torch, torchvision, onnx). Weights: seeded random (no COCO download here), which
makes the class scores spread so that the same post-processing work is done.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.model_directory.named import ARCHS  # noqa: E402

from benchmarks.arithmetic import MatmulProbe, graph_gflop  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from harness.agreement import box_iou  # noqa: E402
from harness.photos import benchmark_photo_jpeg, skimage_photo  # noqa: E402
from harness.timing import timed  # noqa: E402

CALIBRATION_PHOTOS = ("astronaut", "chelsea", "rocket", "motorcycle")  # the timed photo is coffee


def agreement(ref_boxes, ref_labels, boxes, labels) -> float:
    """Fraction of the reference top-10 matched (same class, IoU >= 0.99) by the other top-10."""
    if len(ref_boxes) == 0:
        return 1.0 if len(boxes) == 0 else 0.0
    if len(boxes) == 0:
        return 0.0
    ious = box_iou(ref_boxes.astype(np.float64), boxes.astype(np.float64))
    ious[ref_labels[:, None] != labels[None, :]] = 0
    return float((ious.max(axis=1) >= 0.99).mean())


def graph_runtimes(backend) -> dict:
    """Each graph's runtime and precision, e.g. {"dense": "openvino bf16", "box_head": "onnxruntime
    fp32"}; a head fed by the native RoIAlign says so: "openvino bf16, native RoIAlign"."""
    if hasattr(backend, "runtime_of"):
        native = getattr(backend, "pooling", "graph") == "native"
        return {g: f"{backend.runtime_of(g)} {p}" + (", native RoIAlign" if native and g != "dense" else "")
                for g, p in backend.precisions.items()}
    return {g: f"onnxruntime {backend.precision}" for g in ("dense", "box_head", "mask_head")}


def graph_pooling_engine(model_dir, precision: str, threads: int):
    """The openvino backend without the native RoIAlign (openvino_cpu.GRAPH_POOLING_PLANS)."""
    from engine import Engine
    from engine.backends.openvino_cpu import OpenVinoCpuBackend
    from engine.model_directory.directory import ModelDir

    directory = ModelDir.open(Path(model_dir))
    return Engine(directory, OpenVinoCpuBackend(directory, threads=threads, precision=precision, pooling="graph"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=ARCHS[0], choices=ARCHS)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-int8", action="store_true", help="skip the INT8 engine")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "compare_torchvision.json")
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    from engine import Engine
    from exporter import export
    from exporter.weights import coco_class_names, random_model

    from engine import decode_image
    from engine.render import encode_image, render_detections

    torch.set_num_threads(args.threads)
    # every method sees the same pixels: the photo as a client would upload it (JPEG q90), decoded
    photo_jpeg = benchmark_photo_jpeg()
    image = decode_image(photo_jpeg)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    model = random_model(args.arch, seed=0)  # box_score_thresh 0.05, 100 detections: torchvision's defaults

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    print("exporting this engine's model directory...", file=sys.stderr)
    export(model, work / "engine", coco_class_names(), arch=args.arch, quiet=True)
    from engine.backends import available_backends

    openvino_here = available_backends()["openvino"] is None
    engines = {"this engine, onnxruntime FP32": Engine.load(work / "engine", backend="onnxruntime-cpu", threads=args.threads)}
    if openvino_here:
        from engine.backends.openvino_cpu import cpu_precisions

        for precision in cpu_precisions():
            engines[f"this engine, openvino {precision.upper()}"] = Engine.load(
                work / "engine", backend="openvino", precision=precision, threads=args.threads)
        for precision in cpu_precisions():  # as it runs where the native RoIAlign was not built
            engines[f"this engine, openvino {precision.upper()}, heads' own RoiAlign"] = graph_pooling_engine(
                work / "engine", precision, args.threads)
    if not args.no_int8:
        from exporter.quantize import export_int8

        print("building the INT8 model directory...", file=sys.stderr)
        calib = [skimage_photo(n) for n in CALIBRATION_PHOTOS]
        export_int8(model, work / "int8", coco_class_names(), calib, arch=args.arch, quiet=True)
        engines["this engine, onnxruntime INT8"] = Engine.load(work / "int8", backend="onnxruntime-cpu", threads=args.threads)
        if openvino_here:
            engines["this engine, openvino INT8"] = Engine.load(work / "int8", backend="openvino", threads=args.threads)
    print("exporting torchvision's whole graph (legacy exporter, opset 17)...", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, ([tensor],), str(work / "whole.onnx"), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["boxes", "labels", "scores", "masks"],
                          dynamic_axes={"image": {1: "h", 2: "w"}})
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    whole = ort.InferenceSession(str(work / "whole.onnx"), options, providers=["CPUExecutionProvider"])

    whole_ov = None
    if openvino_here:  # the peer a CPU user would pick: OpenVINO on torchvision's graph, its default precision
        import openvino as ov

        core = ov.Core()
        whole_ov = core.compile_model(core.read_model(str(work / "whole.onnx")), "CPU", {
            "INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY"})
        whole_ov_request = whole_ov.create_infer_request()

    def run_whole_openvino():
        out = whole_ov_request.infer({"image": tensor.numpy()})
        boxes, labels = (out[whole_ov.output(name)] for name in ("boxes", "labels"))
        return boxes[:10], labels[:10]

    def run_torchvision():
        with torch.no_grad():
            out = model([tensor])[0]
        return out["boxes"][:10].numpy(), out["labels"][:10].numpy()

    def run_whole_onnx():
        boxes, labels, _, _ = whole.run(None, {"image": tensor.numpy()})
        return boxes[:10], labels[:10]

    stages = {name: [] for name in engines}

    def engine_runner(name):
        def run():
            # the whole service path: decode the uploaded JPEG, predict, draw and encode the answer
            decode_s, decoded = timed(decode_image, photo_jpeg)
            det = engines[name].predict(decoded, score_threshold=0.05, max_detections=10)
            encode_s, _ = timed(lambda: encode_image(render_detections(decoded, det), "jpeg"))
            timings = {"decode": decode_s * 1000.0, **det.timings, "encode": encode_s * 1000.0}
            stages[name].append(timings)
            return det.boxes, det.class_ids

        return run

    methods = {"torchvision eager": run_torchvision, "onnxruntime, whole torchvision graph": run_whole_onnx}
    if whole_ov is not None:
        from engine.backends.openvino_cpu import runtime_precision

        methods[f"openvino, whole torchvision graph ({runtime_precision(whole_ov).upper()})"] = run_whole_openvino
    # the engine rows include JPEG decode and segmented-JPEG encode; the reference rows do not
    methods.update({name: engine_runner(name) for name in engines})
    results = {name: fn() for name, fn in methods.items()}  # warm-up, and the top-10s to compare
    ref_boxes, ref_labels = results["torchvision eager"]
    times = {name: [] for name in methods}
    # the machine's matrix-multiply rates, timed in every round beside the methods, so they
    # are measured under the same conditions as the dense graphs they are compared with
    probe = MatmulProbe(args.threads)
    for run in range(args.runs):
        probe.time_once()
        for name, fn in methods.items():
            times[name].append(timed(fn)[0])
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{n.split(',')[0]} {times[n][-1]:.2f}s" for n in methods), file=sys.stderr)

    base = float(np.median(times["torchvision eager"]))
    rows = []
    for name in methods:
        t = np.asarray(times[name])
        rows.append({
            "method": name,
            "median_s": round(float(np.median(t)), 4),
            "p90_s": round(float(np.percentile(t, 90)), 4),
            "ratio_to_torchvision": round(float(np.median(t)) / base, 3),
            "top10_agreement_with_torchvision": agreement(ref_boxes, ref_labels, *results[name]),
        })
    stage_ms = {
        name: {k: round(float(np.median([s.get(k, 0.0) for s in runs[1:]])), 1) for k in runs[-1]}
        for name, runs in stages.items()
    }
    padded = (1, 3, 800, 1088)
    dense_gflop = graph_gflop(work / "engine" / "dense.onnx", padded)
    rates = probe.rates()
    achieved = {name: round(dense_gflop / (stage_ms[name]["dense"] / 1000.0), 1) for name in engines}
    report = {
        "benchmark": "compare_torchvision",
        "arch": args.arch,
        "image": "skimage coffee resized to 640x480, as JPEG q90 (network input 800x1066, padded 800x1088)",
        "threads": args.threads,
        "runs": args.runs,
        "weights": "seeded random (seed 0)",
        "results": rows,
        "engine_stage_median_ms": stage_ms,
        "engine_graph_runtimes": {name: graph_runtimes(e.backend) for name, e in engines.items()},
        "dense_graph_gflop": round(dense_gflop, 1),
        "dense_graph_achieved_gflops": achieved,
        "machine_matmul_gflops": rates,
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{args.arch}, {report['image']}, {args.threads} threads, {args.runs} runs on {report['machine']['cpu']}")
    print(f"{'method':40s} {'median':>8s} {'p90':>8s} {'ratio':>6s} {'top-10 agree':>12s}")
    for r in rows:
        print(f"{r['method']:40s} {r['median_s']:8.3f} {r['p90_s']:8.3f} {r['ratio_to_torchvision']:6.2f} {r['top10_agreement_with_torchvision']:12.2f}")
    for name in engines:
        print(f"{name} stages (median ms): {stage_ms[name]}; graphs: {report['engine_graph_runtimes'][name]}")
        print(f"  dense graph {dense_gflop:.0f} GFLOP at {achieved[name]} GFLOP/s")
    print(f"machine matmul GFLOP/s (ORT, {args.threads} threads): {rates}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

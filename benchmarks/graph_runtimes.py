#!/usr/bin/env python3
"""Each graph of the R50 model on each CPU runtime and precision, and where the box head's
time goes: the measurement behind engine.backends.openvino_plans.PLANS (which runtime runs
which graph) and behind the native RoIAlign (the box head on 1000 proposals).

    python benchmarks/graph_runtimes.py [--runs 5] [--threads 2] [--no-int8]

Configurations: ONNX Runtime FP32; OpenVINO at each precision this CPU runs, as the backend
runs it (the heads fed by the native RoIAlign) and with every graph's own RoiAlign; the INT8
model directory on ONNX Runtime and both ways on OpenVINO. Each runs `Engine.predict` on the
benchmark photo (640x480 coffee; network input 800x1066, padded 800x1088) with score
threshold 0.05 and 100 detections: the box head sees the RPN's 1000 proposals, the mask head
100 detections. Reported: median milliseconds per stage, then a per-operator profile of the
box head on the same inputs (ONNX Runtime's profiler, OpenVINO's PERF_COUNT), whole and as
the native RoIAlign plus the head cut after its RoiAlign. Seeded random
weights (no COCO download here). Writes benchmarks/results/graph_runtimes.json.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.compare_torchvision import CALIBRATION_PHOTOS, graph_runtimes  # noqa: E402
from benchmarks.machine import write_results  # noqa: E402
from harness.photos import benchmark_photo, skimage_photo  # noqa: E402
from harness.timing import median_s, timed  # noqa: E402

STAGES = ("dense", "box_head", "mask_head")


def engines(fp32_dir: Path, int8_dir: Path | None, threads: int):
    """(name, Engine) for every configuration measured."""
    from engine import Engine
    from engine.backends.openvino_cpu import OpenVinoCpuBackend, cpu_precisions

    def all_openvino(directory, precision):  # the heads' own RoiAlign, on OpenVINO too
        engine = Engine.load(directory, backend="onnxruntime-cpu", threads=threads)
        plan = {graph: ("openvino", precision) for graph in STAGES}
        engine.backend = OpenVinoCpuBackend(engine.model_dir, threads=threads, precision=precision, plan=plan,
                                            pooling="graph")
        return engine

    yield "onnxruntime FP32", Engine.load(fp32_dir, backend="onnxruntime-cpu", threads=threads)
    for precision in cpu_precisions():
        yield f"openvino {precision.upper()}, native RoIAlign", Engine.load(
            fp32_dir, backend="openvino", precision=precision, threads=threads)
        yield f"openvino {precision.upper()}, every graph with its own RoiAlign", all_openvino(fp32_dir, precision)
    if int8_dir is not None:
        yield "onnxruntime INT8", Engine.load(int8_dir, backend="onnxruntime-cpu", threads=threads)
        for precision in cpu_precisions():
            yield f"openvino INT8, rest {precision.upper()}, native RoIAlign", Engine.load(
                int8_dir, backend="openvino", precision=precision, threads=threads)
            yield f"openvino INT8, rest {precision.upper()}, every graph with its own RoiAlign", all_openvino(
                int8_dir, precision)


def stage_medians(engine, image, runs: int) -> dict:
    for _ in range(2):
        engine.predict(image, score_threshold=0.05, max_detections=100)
    timings = [engine.predict(image, score_threshold=0.05, max_detections=100).timings for _ in range(runs)]
    return {stage: round(float(np.median([t[stage] for t in timings])), 1) for stage in STAGES}


def box_head_feed(engine, image) -> dict:
    """The box head's inputs for `image`, as numpy: features 0-3 and the level-split RoIs."""
    from engine.roi_heads import split_by_level

    prepared = engine.transform(image)
    dense = engine.backend.run_dense(prepared.tensor)
    split = split_by_level(engine.rpn(dense, prepared), engine.config.box_head)
    feed = {f"feature_{i}": np.array(f.numpy() if hasattr(f, "numpy") else f) for i, f in enumerate(dense.features)}
    engine.backend.release(dense)
    feed.update({f"rois_{j}": np.ascontiguousarray(r, np.float32) for j, r in enumerate(split.rois)})
    return feed


def profile_onnxruntime(path: Path, feed: dict, threads: int, runs: int) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feed)
    seconds = []
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ort-profile-")) / "box_head")  # not in the cwd
    profiled = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    profiled.run(None, feed)
    for _ in range(runs):
        seconds.append(timed(session.run, None, feed)[0])
        profiled.run(None, feed)
    by_op = collections.Counter()
    for event in json.loads(Path(profiled.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"] / 1000.0 / (runs + 1)
    return {"median_ms": round(float(np.median(seconds)) * 1000.0, 1),
            "ms_by_op": {op: round(ms, 1) for op, ms in by_op.most_common(6)}}


def profile_openvino(graph, feed: dict, threads: int, runs: int, precision: str) -> dict:
    """graph: an ONNX path or an openvino.Model."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(graph)) if isinstance(graph, (str, Path)) else graph
    compiled = core.compile_model(model, "CPU", {
        "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision], "PERF_COUNT": True})
    request = compiled.create_infer_request()
    request.infer(feed)
    seconds, by_op = [], collections.Counter()
    for _ in range(runs):
        seconds.append(timed(request.infer, feed)[0])
        for info in request.profiling_info:
            by_op[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds() * 1000.0 / runs
    return {"median_ms": round(float(np.median(seconds)) * 1000.0, 1),
            "ms_by_op": {op: round(ms, 1) for op, ms in by_op.most_common(6)}}


def profile_native(model_dir: Path, feed: dict, threads: int, runs: int, precision: str) -> dict:
    """The box head as the openvino backend runs it with the native RoIAlign: the pooling
    (engine.roi_align, from the NHWC maps), then the graph cut after its RoiAlign on OpenVINO
    (openvino_cpu.native_head: channels-last input, uint8 for an INT8 directory)."""
    import openvino as ov

    from engine import roi_align
    from engine.backends.openvino_graphs import native_head
    from engine.model_directory.directory import ModelDir

    config = ModelDir.open(model_dir).config.box_head
    features = [np.ascontiguousarray(feed[f"feature_{i}"].transpose(0, 2, 3, 1)) for i in config.feature_indices]
    rois = [feed[f"rois_{j}"] for j in range(len(config.feature_indices))]
    channels = features[0].shape[-1]
    aligner = roi_align.RoIAligner(threads)
    graph, channels_last, quantize = native_head(ov.Core().read_model(str(model_dir / "box_head.onnx")), channels,
                                                 config.output_size)
    pooled = aligner.pool_levels(features, rois, config.scales, config.output_size, config.sampling_ratio,
                                 channels_last=channels_last, quantize=quantize)

    def pool():
        aligner.pool_levels(features, rois, config.scales, config.output_size, config.sampling_ratio, out=pooled,
                            channels_last=channels_last, quantize=quantize)

    pool_s, _ = median_s(pool, runs, warmup=1)
    head = profile_openvino(graph, {"pooled": pooled}, threads, runs, precision)
    pool_ms = round(pool_s * 1000.0, 1)
    return {"native_roi_align_ms": pool_ms, "pooled_input": f"{'channels-last' if channels_last else 'NCHW'} {pooled.dtype}",
            "cut_head": head, "median_ms": round(pool_ms + head["median_ms"], 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "graph_runtimes.json")
    args = parser.parse_args(argv)

    from engine.backends.openvino_cpu import cpu_precisions
    from exporter import export
    from exporter.quantize import export_int8
    from exporter.weights import coco_class_names, random_model

    model = random_model("maskrcnn_resnet50_fpn", seed=0)
    work = Path(tempfile.mkdtemp(prefix="graph-runtimes-"))
    print("exporting R50 (random weights)...", file=sys.stderr)
    export(model, work / "fp32", coco_class_names(), quiet=True)
    int8_dir = None
    if not args.no_int8:
        print("building the INT8 model directory...", file=sys.stderr)
        int8_dir = export_int8(model, work / "int8", coco_class_names(), [skimage_photo(n) for n in CALIBRATION_PHOTOS],
                               quiet=True)
    image = benchmark_photo()
    rows, feed = [], None
    for name, engine in engines(work / "fp32", int8_dir, args.threads):
        row = {"configuration": name, "graphs": graph_runtimes(engine.backend),
               "stage_median_ms": stage_medians(engine, image, args.runs)}
        rows.append(row)
        print(f"{name}: {row['stage_median_ms']} ({row['graphs']})", file=sys.stderr)
        if feed is None:
            feed = box_head_feed(engine, image)
    profiles = {"onnxruntime FP32": profile_onnxruntime(work / "fp32" / "box_head.onnx", feed, args.threads, args.runs)}
    for precision in cpu_precisions():
        profiles[f"openvino {precision.upper()}"] = profile_openvino(
            work / "fp32" / "box_head.onnx", feed, args.threads, args.runs, precision)
    if int8_dir is not None:
        profiles["onnxruntime INT8"] = profile_onnxruntime(int8_dir / "box_head.onnx", feed, args.threads, args.runs)
        for precision in cpu_precisions():
            profiles[f"openvino INT8, rest {precision.upper()}"] = profile_openvino(
                int8_dir / "box_head.onnx", feed, args.threads, args.runs, precision)
    for precision in cpu_precisions():
        profiles[f"openvino {precision.upper()}, native RoIAlign"] = profile_native(
            work / "fp32", feed, args.threads, args.runs, precision)
    if int8_dir is not None:
        for precision in cpu_precisions():
            profiles[f"openvino INT8, rest {precision.upper()}, native RoIAlign"] = profile_native(
                int8_dir, feed, args.threads, args.runs, precision)
    for name, profile in profiles.items():
        print(f"box head, {name}: {profile}", file=sys.stderr)
    write_results({
        "benchmark": "graph_runtimes", "arch": "maskrcnn_resnet50_fpn", "weights": "seeded random (seed 0)",
        "image": "skimage coffee resized to 640x480 (network input 800x1066, padded 800x1088)",
        "threads": args.threads, "runs": args.runs,
        "box_head_proposals": int(sum(feed[f"rois_{j}"].shape[0] for j in range(4))),
        "results": rows, "box_head_profile": profiles,
    }, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""GPU latency (p50/p99) and throughput of every GPU backend and precision that can run here,
with torchvision eager on the same GPU (FP32 and autocast FP16) as the reference.

    python benchmarks/gpu_benchmark.py [--model-dir DIR] [--runs 50] [--callers 4] [--precisions fp16,fp32]

One command on any CUDA machine: backends that cannot run are listed with the reason and
skipped. Without --model-dir it exports seeded random R50-FPN weights (needs torch), which
spreads the class scores so the same post-processing work is done as with trained weights.
Writes benchmarks/results/gpu_benchmark.json (machine, GPU and date stamped).

Each engine row is `Engine.predict` on the benchmark photo (640x480 -> 800x1066, padded
800x1088), score threshold 0.05 and up to 100 detections, torchvision's defaults: network,
numpy post-processing and mask paste. Throughput: --callers threads predicting at once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.model_directory.named import ARCHS  # noqa: E402

from benchmarks.machine import package_versions, write_results  # noqa: E402
from harness.photos import benchmark_photo  # noqa: E402
from harness.timing import repeat, summary_ms, timed  # noqa: E402

PACKAGES = ("tensorrt", "onnxruntime-gpu", "onnxruntime", "cuda-python", "cuda-bindings", "torch", "torchvision", "numpy")


def throughput(fn, callers: int, per_caller: int) -> dict:
    """Images per second with `callers` threads calling at once (each calls fn per_caller times)."""
    errors = []

    def work():
        try:
            for _ in range(per_caller):
                fn()
        except Exception as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(callers)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return {"callers": callers, "images_per_s": round(callers * per_caller / elapsed, 2)}


def top_agreement(ref: tuple, other: tuple, k: int = 10) -> float:
    """Fraction of the reference's top-k (boxes, labels) found in the other's top-k: same
    class, box IoU >= 0.9."""
    (rb, rl), (ob, ol) = (ref[0][:k], ref[1][:k]), (other[0][:k], other[1][:k])
    if len(rb) == 0 or len(ob) == 0:
        return float(len(rb) == len(ob))
    lt = np.maximum(rb[:, None, :2], ob[None, :, :2])
    rb_ = np.minimum(rb[:, None, 2:], ob[None, :, 2:])
    inter = np.prod(np.clip(rb_ - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    iou = inter / (area(rb)[:, None] + area(ob)[None, :] - inter)
    iou[rl[:, None] != ol[None, :]] = 0
    return round(float((iou.max(axis=1) >= 0.9).mean()), 3)


def torchvision_rows(args, image, model_dir_info) -> tuple[list, dict]:
    """torchvision eager on CUDA, FP32 and autocast FP16, same weights as the exported model."""
    try:
        import torch
    except ImportError:
        return [], {"torchvision eager (CUDA)": "torch is not installed"}
    if not torch.cuda.is_available():
        return [], {"torchvision eager (CUDA)": "torch has no CUDA here"}
    from exporter.weights import random_model

    if model_dir_info.get("source") != "random":
        return [], {"torchvision eager (CUDA)": "only compared for the random-weights model this script exports"}
    model = random_model(args.arch, seed=0).eval().cuda()
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0).cuda()
    rows, outputs = [], {}
    for label, amp in (("torchvision eager FP32 (CUDA)", False), ("torchvision eager AMP FP16 (CUDA)", True)):
        def run(amp=amp):
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                out = model([tensor])[0]
            torch.cuda.synchronize()
            return out["boxes"].float().cpu().numpy(), out["labels"].cpu().numpy()

        outputs[label] = run()
        rows.append({"method": label, "latency": summary_ms(repeat(run, args.runs, args.warmup)[0]),
                     "throughput": throughput(run, args.callers, args.per_caller)})
    return rows, outputs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="model directory (default: export random R50 weights)")
    parser.add_argument("--arch", default=ARCHS[0], choices=ARCHS)
    parser.add_argument("--precisions", default="fp16,fp32", help="TensorRT precisions to build and time")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--callers", type=int, default=4, help="concurrent callers for the throughput figure")
    parser.add_argument("--per-caller", type=int, default=10, help="calls per caller for the throughput figure")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_benchmark.json")
    args = parser.parse_args(argv)

    from engine import Engine, cuda_memory
    from engine.backends import available_backends

    reason = cuda_memory.device_reason()
    if reason:
        print(f"error: the GPU benchmark needs a CUDA device: {reason}", file=sys.stderr)
        return 2
    gpu = cuda_memory.device_info(0)
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    if args.model_dir:
        model_dir = args.model_dir
    else:
        from exporter import export
        from exporter.weights import coco_class_names, random_model

        print("exporting seeded random weights...", file=sys.stderr)
        model_dir = export(random_model(args.arch, seed=0), work / "model", coco_class_names(), arch=args.arch,
                           quiet=True, weights_info={"source": "random", "seed": 0, "trained": False})
    import json

    weights = json.loads((Path(model_dir) / "model.json").read_text()).get("weights", {})
    image = benchmark_photo()
    status = available_backends()
    skipped = {name: why for name, why in status.items() if why and name != "onnxruntime-cpu"}
    engines: dict[str, Engine] = {}
    builds = {}
    if status["onnxruntime-cuda"] is None:
        engines["onnxruntime-cuda FP32"] = Engine.load(model_dir, backend="onnxruntime-cuda")
    if status["tensorrt"] is None:
        from exporter.tensorrt_build import build_plans, writable_copy

        for precision in [p for p in args.precisions.split(",") if p]:
            target = writable_copy(model_dir, work / f"trt-{precision}")
            print(f"building TensorRT {precision} plans (minutes)...", file=sys.stderr)
            seconds, _ = timed(build_plans, target, precision, slots=max(1, min(args.callers, 4)), quiet=True)
            builds[precision] = round(seconds, 1)
            engines[f"tensorrt {precision.upper()}"] = Engine.load(target, backend="tensorrt")

    rows, outputs, stages = [], {}, {}
    for label, engine in engines.items():
        print(f"timing {label}...", file=sys.stderr)
        det = engine.predict(image, score_threshold=0.05)
        outputs[label] = (det.boxes, det.class_ids)
        runs_timings = []

        def run(engine=engine, runs_timings=runs_timings):
            runs_timings.append(engine.predict(image, score_threshold=0.05).timings)

        rows.append({"method": label, "detections": len(det),
                     "latency": summary_ms(repeat(run, args.runs, args.warmup)[0]),
                     "throughput": throughput(run, args.callers, args.per_caller)})
        stages[label] = {k: round(float(np.median([t[k] for t in runs_timings if k in t])), 2) for k in runs_timings[-1]}
    tv_rows, tv_outputs = torchvision_rows(args, image, weights)
    if isinstance(next(iter(tv_outputs.values()), None), str):
        skipped.update(tv_outputs)
        tv_outputs = {}
    rows.extend(tv_rows)
    outputs.update(tv_outputs)
    reference = outputs.get("torchvision eager FP32 (CUDA)")
    if reference is not None:
        for row in rows:
            row["top10_agreement_with_torchvision_fp32"] = top_agreement(reference, outputs[row["method"]])
    report = {
        "benchmark": "gpu_benchmark",
        "gpu": gpu,
        "arch": args.arch,
        "weights": weights,
        "image": "skimage coffee resized to 640x480 (network input 800x1066, padded 800x1088)",
        "score_threshold": 0.05,
        "results": rows,
        "engine_stage_median_ms": stages,
        "tensorrt_build_s": builds,
        "skipped": skipped,
        "gpu_packages": package_versions(PACKAGES),
    }
    write_results(report, args.output)
    print(f"\n{gpu['name']} (sm {gpu['compute_capability']}), {args.runs} runs, throughput with {args.callers} callers")
    print(f"{'method':40s} {'p50 ms':>8s} {'p99 ms':>8s} {'img/s':>8s}")
    for r in rows:
        print(f"{r['method']:40s} {r['latency']['p50_ms']:8.1f} {r['latency']['p99_ms']:8.1f} {r['throughput']['images_per_s']:8.1f}")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

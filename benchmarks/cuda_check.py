#!/usr/bin/env python3
"""What a CUDA machine *without* TensorRT or onnxruntime-gpu can verify: the engine's CUDA
buffer layer (allocate, pinned memory, async copies on a stream, free, named errors) and
torchvision eager on CUDA as the reference latency.

    python benchmarks/cuda_check.py [--runs 30]

Needs cuda-python (the buffer layer) and, for the reference, torch with CUDA and
torchvision. Writes benchmarks/results/gpu_cuda_check.json; exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import write_results  # noqa: E402
from harness.photos import benchmark_photo  # noqa: E402
from harness.timing import repeat, summary_ms  # noqa: E402


def buffer_checks() -> dict:
    """Round trips of several sizes through pinned host and device memory on one stream,
    with the copy bandwidth, plus the error path and the frees."""
    from engine import cuda_memory as cm

    results = {}
    with cm.Stream() as stream:
        for mib in (1, 16, 256):
            data = np.random.default_rng(mib).random(mib * (1 << 18), dtype=np.float32)
            with cm.DeviceBuffer(data.nbytes) as device, cm.PinnedBuffer(data.nbytes) as up, \
                    cm.PinnedBuffer(data.nbytes) as down:
                np.copyto(up.array(data.shape, np.float32), data)
                start = time.perf_counter()
                cm.copy_to_device(device, up, data.nbytes, stream)
                stream.synchronize()
                h2d = time.perf_counter() - start
                start = time.perf_counter()
                cm.copy_to_host(down, device, data.nbytes, stream)
                stream.synchronize()
                d2h = time.perf_counter() - start
                same = bool(np.array_equal(down.array(data.shape, np.float32), data))
            freed = device.ptr == 0 and up.ptr == 0 and down.ptr == 0
            results[f"{mib}MiB"] = {"round_trip_equal": same, "freed": freed,
                                    "h2d_GBps": round(data.nbytes / h2d / 1e9, 2), "d2h_GBps": round(data.nbytes / d2h / 1e9, 2)}
    try:
        cm.DeviceBuffer(1 << 60)
        results["oversized_allocation"] = "no error raised"
    except cm.CudaError as exc:
        results["oversized_allocation"] = exc.code
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_cuda_check.json")
    args = parser.parse_args(argv)
    from engine import cuda_memory
    from engine.backends import available_backends

    reason = cuda_memory.device_reason()
    if reason:
        print(f"error: needs a CUDA device: {reason}", file=sys.stderr)
        return 2
    report = {"benchmark": "gpu_cuda_check", "gpu": cuda_memory.device_info(0), "backends": available_backends()}
    report["buffers"] = buffers = buffer_checks()
    ok = all(v["round_trip_equal"] and v["freed"] for k, v in buffers.items() if k.endswith("MiB"))
    ok = ok and buffers["oversized_allocation"] == "cudaErrorMemoryAllocation"
    try:
        import torch

        from exporter.weights import random_model

        if not torch.cuda.is_available():
            raise ImportError("torch has no CUDA here")
        model = random_model("maskrcnn_resnet50_fpn", seed=0).eval().cuda()
        tensor = torch.from_numpy(benchmark_photo()).permute(2, 0, 1).float().div(255.0).cuda()
        for label, amp in (("fp32", False), ("amp_fp16", True)):
            def run(amp=amp):
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    model([tensor])
                torch.cuda.synchronize()

            report[f"torchvision_eager_cuda_{label}"] = summary_ms(repeat(run, args.runs, warmup=5)[0])
    except ImportError as exc:
        report["torchvision_eager_cuda"] = f"skipped: {exc}"
    report["all_buffer_checks_passed"] = ok
    write_results(report, args.output)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

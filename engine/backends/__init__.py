"""Inference backends: each runs the three graphs of a model directory.

Every backend implements `base.Backend`: `name`, `run_dense(images) -> DenseOutputs`,
`run_box_head(features, rois) -> (class_probs, box_deltas)`,
`run_mask_head(features, rois, class_ids) -> mask_probs` and `release(dense)`, which the
engine calls once it is done with a DenseOutputs (the GPU backends hand the request's
device buffers back to their pool there).

    tensorrt          TensorRT plans built on this GPU (build_engine.py --tensorrt)
    onnxruntime-cuda  ONNX Runtime's CUDAExecutionProvider on the ONNX graphs
    openvino          OpenVINO on the CPU, FP32 or BF16 (`precision`), every graph, the
                      heads fed by the native RoIAlign (engine.roi_align); where that was
                      not built, the heads on ONNX Runtime, which runs their RoiAlign faster
                      (openvino_cpu)
    onnxruntime-cpu   ONNX Runtime on the CPU, every graph

`auto` takes the first of these that can run here with the given model directory (with
precision bf16, the first that runs BF16: openvino). Without a precision each backend runs
its default here (`default_precision`): BF16 for openvino where the CPU has BF16
instructions (what runs in BF16 meets the BF16 accuracy criteria: see
openvino_plans.PLANS), FP32 everywhere else.
Importing this package never needs a GPU package.
"""

from __future__ import annotations

import logging

from ..errors import BackendUnavailableError

log = logging.getLogger(__name__)

# On the CPU openvino comes first: faster than ONNX Runtime alone on R50, the demo model
# the same within noise (benchmarks/results/FIGURES.md).
BACKENDS = ("tensorrt", "onnxruntime-cuda", "openvino", "onnxruntime-cpu")
AUTO_BACKEND = "auto"  # the first of BACKENDS that can run here
BACKEND_CHOICES = (AUTO_BACKEND, *BACKENDS)  # what a caller may ask for (--backend, $MASKRCNN_BACKEND)
PRECISIONS = ("fp32", "bf16")  # what a caller may ask for (--precision); only openvino runs bf16


def _tensorrt_reason(model_dir) -> str | None:
    from .. import cuda_memory

    try:
        import tensorrt
    except ImportError:
        return "tensorrt is not installed (pip install 'maskrcnn-serve[gpu]', or an NVIDIA TensorRT image)"
    except Exception as exc:  # a broken install (missing libnvinfer) raises OSError and friends
        return f"tensorrt cannot be imported: {exc}"
    reason = cuda_memory.device_reason()
    if reason:
        return reason
    if model_dir is None:
        return None
    section = model_dir.tensorrt
    if section is None:
        return "the model directory has no TensorRT plans (build them here: python build_engine.py --tensorrt --fp16 --output DIR)"
    from ..model_directory.tensorrt_plans import incompatibility

    try:
        device = cuda_memory.device_info(0)
    except cuda_memory.CudaError as exc:
        return str(exc)
    return incompatibility(section, tensorrt.__version__, device)


def _onnxruntime_cuda_reason() -> str | None:
    from .. import cuda_memory

    try:
        import onnxruntime
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc})"
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu instead of onnxruntime)"
    # get_available_providers() lists CUDA whenever onnxruntime-gpu is installed, even without
    # a GPU or its libraries; ask the CUDA runtime itself.
    return cuda_memory.device_reason()


def available_backends(model_dir=None) -> dict[str, str | None]:
    """Each backend name -> None if it can run here, else the reason it cannot.

    model_dir: a ModelDir (or a path to one); with it, `tensorrt` also needs plans built for
    this TensorRT and GPU. Without it, `tensorrt` only needs TensorRT and a GPU.
    """
    if model_dir is not None and not hasattr(model_dir, "config"):
        from ..model_directory.directory import ModelDir

        model_dir = ModelDir.open(model_dir, verify_checksums=False)
    status: dict[str, str | None] = {
        "tensorrt": _tensorrt_reason(model_dir),
        "onnxruntime-cuda": _onnxruntime_cuda_reason(),
    }
    try:
        import onnxruntime  # noqa: F401

        status["onnxruntime-cpu"] = None
    except ImportError as exc:
        status["onnxruntime-cpu"] = f"onnxruntime is not installed ({exc})"
    status["openvino"] = _openvino_reason() or status["onnxruntime-cpu"]  # its heads run on onnxruntime
    return {name: status[name] for name in BACKENDS}


def _openvino_reason() -> str | None:
    try:
        import openvino  # noqa: F401
    except ImportError as exc:
        return f"openvino is not installed ({exc}; pip install openvino)"
    except Exception as exc:  # a broken install raises RuntimeError and friends
        return f"openvino cannot be imported: {exc}"
    from .openvino_cpu import shared_core

    if "CPU" not in shared_core().available_devices:
        return "OpenVINO sees no CPU device"
    return None


def backend_precisions(name: str) -> list[str]:
    """The precisions `name` can run here (asked for with `precision`): ["fp32"], and for
    openvino also "bf16" where the CPU has BF16 instructions. An INT8 model directory runs
    its INT8 graphs on any of them."""
    if name == "openvino" and _openvino_reason() is None:
        from .openvino_cpu import cpu_precisions

        return cpu_precisions()
    return ["fp32"]


def default_precision(name: str, model_dir=None) -> str:
    """What `name` runs when no precision is asked for: "bf16" for openvino on a CPU with BF16
    instructions (its fastest configuration that meets the accuracy criteria; measured in
    benchmarks/backend_accuracy.py), else "fp32". An INT8 model directory (a ModelDir)
    gets "fp32": its float layers between the INT8 ones ran slower under BF16."""
    if model_dir is not None and model_dir.config.quantization is not None:
        return "fp32"
    return "bf16" if "bf16" in backend_precisions(name) else "fp32"


def choose_backend(status: dict[str, str | None]) -> str:
    """The first backend of BACKENDS that `status` (from available_backends) says can run."""
    for name in BACKENDS:
        if name in status and status[name] is None:
            return name
    raise BackendUnavailableError("no inference backend can run here: " + "; ".join(f"{k}: {v}" for k, v in status.items()))


def create_backend(name: str, model_dir, threads: int | None = None, cuda_tf32: bool = False,
                   precision: str | None = None):
    """The backend `name` (one of BACKEND_CHOICES; "auto" picks the best available) for a
    checked ModelDir.

    threads: CPU threads (None: every usable core); cuda_tf32: TF32 convolutions on
    onnxruntime-cuda (off by default: TF32 moves boxes past the parity tolerances);
    precision: None (the backend's default here: `default_precision`) or one of PRECISIONS;
    "bf16" needs openvino on a CPU with BF16 instructions (auto then picks openvino)."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    status = available_backends(model_dir)
    if name == AUTO_BACKEND:
        if precision == "bf16":
            name = "openvino"
        else:
            name = choose_backend(status)
        passed = [f"{b}: {status[b]}" for b in BACKENDS[: BACKENDS.index(name)] if b in status]
        if model_dir.tensorrt is not None and status["tensorrt"] is not None:
            # plans exist but cannot run here: worth a warning, not just an info line
            log.warning("TensorRT plans in %s not used: %s", model_dir.path, status["tensorrt"])
        log.info("backend auto: %s%s", name, (" (skipped " + "; ".join(passed) + ")") if passed else "")
    if name not in status:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if status[name] is not None:
        raise BackendUnavailableError(f"backend {name} is unavailable: {status[name]}")
    if precision not in (None, "fp32") and name != "openvino":
        raise BackendUnavailableError(f"precision {precision} needs the openvino backend, not {name}")
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(model_dir)
    if name == "onnxruntime-cuda":
        from .onnxruntime_cuda import OnnxRuntimeCudaBackend

        return OnnxRuntimeCudaBackend(model_dir, threads=threads, tf32=cuda_tf32)
    if name == "openvino":
        from .openvino_cpu import OpenVinoCpuBackend

        return OpenVinoCpuBackend(model_dir, threads=threads, precision=precision or default_precision(name, model_dir))
    from .onnxruntime_cpu import OnnxRuntimeCpuBackend

    return OnnxRuntimeCpuBackend(model_dir, threads=threads)

"""OpenVINO on the CPU: the model directory's ONNX graphs compiled for this processor, at
FP32 or (where the CPU has BF16 instructions) BF16; an INT8 model directory's QDQ graphs run
as INT8 either way.

Feature maps stay in the dense graph's output tensors, read as numpy views (share_outputs),
until `release`; the heads take them without copies (share_inputs), and a head that runs on
ONNX Runtime instead (`head_runtimes`) wraps the same memory in OrtValues. Each call takes
an infer request from a per-graph pool, so concurrent `predict` calls never share one.
"""

from __future__ import annotations

import logging
import queue

import numpy as np

from ..errors import BackendUnavailableError, ModelDirError
from .base import GRAPHS, Backend, DenseOutputs, default_threads, rpn_output_names
from .chunking import run_in_row_passes
from .onnxruntime_cpu import OnnxRuntimeCpuBackend, cpu_session

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")  # what `precision` may ask for
_OV_TYPES = {"fp32": "f32", "bf16": "bf16"}
RUNTIMES = ("openvino", "onnxruntime")  # what each graph may run on (ONNX Runtime: FP32 only)
# Which runtime runs each graph, and at what precision, for each precision asked for: the
# fastest that meets issue 15's accuracy criteria, by measurement (README, "CPU: OpenVINO and
# ONNX Runtime"; benchmarks/graph_runtimes.py and benchmarks/backend_accuracy.py):
# - fp32 (2-core AMD EPYC AVX2, and 2-core Xeon with AMX): the dense graph is faster on
#   OpenVINO, the box head on ONNX Runtime (its RoiAlign: 157 against 219 ms for 1000
#   proposals), the mask head the same within noise on both.
# - bf16 (2-core Xeon with AMX-BF16; demo model, 300 held-out scenes, against ONNX Runtime
#   FP32): only the dense graph runs BF16 (0.62 s against 1.78 s at FP32 for R50), which
#   keeps 99.4% of detections, box AP -0.0005, mask AP -0.0002. The mask head stays FP32:
#   in BF16 it is twice as fast but mask AP fell 0.013 (the logits are thresholded at 0.5
#   at 28x28 and pasted up, so their rounding shows). The box head stays FP32 on ONNX
#   Runtime: slower in BF16 on OpenVINO (494 against 292 ms; OpenVINO's BF16 RoiAlign alone
#   380 ms) and less accurate (every graph BF16: box AP -0.008, 98.2% agreement).
PLANS = {
    "fp32": {"dense": ("openvino", "fp32"), "box_head": ("onnxruntime", "fp32"), "mask_head": ("onnxruntime", "fp32")},
    "bf16": {"dense": ("openvino", "bf16"), "box_head": ("onnxruntime", "fp32"), "mask_head": ("onnxruntime", "fp32")},
}
# INT8 model directories (same Xeon, benchmarks/graph_runtimes.py, R50): OpenVINO runs the
# quantized dense graph in 375 ms against ONNX Runtime's 677, the mask head in 208 against
# 392; the box head is RoiAlign-bound (float in both; 200-270 ms) and stays on ONNX Runtime.
# The float parts between the INT8 layers run FP32 by default: a BF16 hint made them slower
# (dense 462 ms, OpenVINO's BF16 RoiAlign 383 ms).
QUANTIZED_PLANS = {
    precision: {"dense": ("openvino", precision), "box_head": ("onnxruntime", "fp32"), "mask_head": ("openvino", precision)}
    for precision in PRECISIONS
}


def cpu_precisions(core=None) -> list[str]:
    """The precisions OpenVINO can run on this CPU: fp32, and bf16 where the processor has
    BF16 instructions (AVX-512 BF16 or AMX; OpenVINO's OPTIMIZATION_CAPABILITIES)."""
    import openvino as ov

    core = core or ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return ["fp32"] + (["bf16"] if "BF16" in capabilities else [])


def runtime_precision(compiled) -> str:
    """The precision the compiled graph's convolutions and matrix products actually run in,
    read from the runtime model (not the hint that was asked for): "bf16", "fp32", "int8",
    or a "+"-joined mix."""
    seen = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if "layerType" in info and info["layerType"].astype(str) in ("Convolution", "Deconvolution", "FullyConnected", "MatMul"):
            seen.add(info["runtimePrecision"].astype(str).lower())
    names = {"f32": "fp32", "bf16": "bf16", "i8": "int8", "u8": "int8", "f16": "fp16"}
    found = sorted({names.get(p, p) for p in seen})
    return "+".join(found) if found else "fp32"


class _Features(list):
    """The dense graph's feature maps (numpy views of its infer request's output tensors) and
    the request holding them, given back to the pool at release."""

    request = None


class OpenVinoCpuBackend(Backend):
    name = "openvino"
    # the mask head takes at most this many detections at a time, as on OnnxRuntimeCpuBackend
    # (why 100: there), so its memory is bounded by what warm-up reached
    MASK_HEAD_ROWS_PER_RUN = OnnxRuntimeCpuBackend.MASK_HEAD_ROWS_PER_RUN

    def __init__(self, model_dir, threads: int | None = None, precision: str = "fp32",
                 plan: dict[str, tuple[str, str]] | None = None):
        """precision: "fp32" or "bf16" (BackendUnavailableError where this CPU lacks BF16);
        it selects PLANS[precision] (QUANTIZED_PLANS for an INT8 model directory). plan:
        {graph: (runtime, precision)} over that, for measuring other configurations (runtime
        one of RUNTIMES; ONNX Runtime runs FP32 only; the dense graph on OpenVINO)."""
        import openvino as ov

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        quantized = model_dir.config.quantization is not None
        self.plan = {**(QUANTIZED_PLANS if quantized else PLANS)[precision], **(plan or {})}
        for graph, (runtime, graph_precision) in self.plan.items():
            if graph not in GRAPHS or runtime not in RUNTIMES or graph_precision not in PRECISIONS or (
                    runtime == "onnxruntime" and graph_precision != "fp32"):
                raise ValueError(f"plan: {graph}=({runtime!r}, {graph_precision!r}); graphs are {', '.join(GRAPHS)}, "
                                 f"runtimes {', '.join(RUNTIMES)} and precisions {', '.join(PRECISIONS)} "
                                 "(onnxruntime: fp32)")
        if self.plan["dense"][0] != "openvino":
            raise ValueError("plan: the dense graph runs on openvino here (backend onnxruntime-cpu runs it on ONNX Runtime)")
        core = ov.Core()
        supported = cpu_precisions(core)
        if any(p not in supported for _, p in self.plan.values()):
            raise BackendUnavailableError(
                f"this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no BF16 instructions "
                f"(AVX-512 BF16 or AMX); OpenVINO supports {', '.join(supported)} here")
        self.threads = threads or default_threads()
        self.compiled, self.precisions, self._ort_sessions = {}, {}, {}
        for key in GRAPHS:
            path = model_dir.graph_path(key)
            runtime, graph_precision = self.plan[key]
            if runtime == "onnxruntime":
                self._ort_sessions[key] = cpu_session(path, self.threads)
                self.precisions[key] = "fp32+int8" if quantized else "fp32"
                continue
            config = {
                "INFERENCE_NUM_THREADS": self.threads,
                "NUM_STREAMS": 1,  # one inference at a time uses every thread; concurrency is the server's
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": _OV_TYPES[graph_precision],
            }
            try:
                self.compiled[key] = core.compile_model(core.read_model(str(path)), "CPU", config)
            except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
                raise ModelDirError(f"{path} cannot be compiled by OpenVINO: {exc}") from None
            self.precisions[key] = runtime_precision(self.compiled[key])
        self._pools = {key: queue.SimpleQueue() for key in self.compiled}
        self.feature_names = list(model_dir.config.features)
        outputs = [name for out in self.compiled["dense"].outputs for name in list(out.get_names())[:1]]
        self._rpn_logits, self._rpn_deltas = rpn_output_names(outputs)
        self.precision = self._overall_precision()
        log.info("openvino %s on the CPU with %d threads: %s", ov.__version__, self.threads,
                 ", ".join(f"{k} {self.runtime_of(k)} {v}" for k, v in self.precisions.items()))

    def _overall_precision(self) -> str:
        found = sorted({p for value in self.precisions.values() for p in value.split("+")})
        return "+".join(found)

    def runtime_of(self, graph: str) -> str:
        """"openvino" or "onnxruntime": what runs `graph`."""
        return "onnxruntime" if graph in self._ort_sessions else "openvino"

    def _acquire(self, key: str):
        try:
            return self._pools[key].get_nowait()
        except queue.Empty:
            return self.compiled[key].create_infer_request()

    def _infer(self, key: str, feed: dict) -> dict:
        """One run of an OpenVINO head graph; its outputs copied out, its request pooled again."""
        request = self._acquire(key)
        try:
            request.infer(feed, share_inputs=True, share_outputs=False)
            return {out.get_any_name(): request.get_tensor(out).data.copy() for out in self.compiled[key].outputs}
        finally:
            self._pools[key].put(request)

    def run_dense(self, images: np.ndarray) -> DenseOutputs:
        request = self._acquire("dense")
        try:
            request.infer({"images": np.ascontiguousarray(images)}, share_inputs=True, share_outputs=True)
        except Exception:
            self._pools["dense"].put(request)
            raise
        features = _Features(request.get_tensor(name).data for name in self.feature_names)
        features.request = request
        return DenseOutputs(
            features=features,
            rpn_logits=[request.get_tensor(name).data for name in self._rpn_logits],
            rpn_deltas=[request.get_tensor(name).data for name in self._rpn_deltas],
        )

    def release(self, dense: DenseOutputs) -> None:
        """The dense request goes back to its pool: its output tensors (the feature maps) may
        be overwritten by the next call from here on."""
        request, dense.features.request = dense.features.request, None
        if request is not None:
            self._pools["dense"].put(request)

    def _head_feed(self, features, rois) -> dict:
        feed = dict(zip(self.feature_names, features))
        feed.update({f"rois_{j}": np.ascontiguousarray(r, np.float32) for j, r in enumerate(rois)})
        return feed

    def _run_head(self, key: str, features, rois, extra: dict, outputs: list[str]) -> list[np.ndarray]:
        feed = {**self._head_feed(features, rois), **extra}
        if key in self._ort_sessions:  # OrtValues over the same memory: no copy of the feature maps
            import onnxruntime as ort

            values = {k: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}
            return [v.numpy() for v in self._ort_sessions[key].run_with_ort_values(outputs, values)]
        result = self._infer(key, feed)
        return [result[name] for name in outputs]

    def run_box_head(self, features, rois: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """rois: per pooled level (Rj, 4) float32 -> class_probs (R, C), box_deltas (R, 4C)."""
        probs, deltas = self._run_head("box_head", features, rois, {}, ["class_probs", "box_deltas"])
        return probs, deltas

    def run_mask_head(self, features, rois: list[np.ndarray], class_ids: np.ndarray) -> np.ndarray:
        """rois per level + class_ids (R,) int64 in level order -> mask_probs (R, M, M)."""
        def run(chunk, ids):
            return tuple(self._run_head("mask_head", features, chunk, {"class_ids": ids}, ["mask_probs"]))

        (probs,) = run_in_row_passes(rois, self.MASK_HEAD_ROWS_PER_RUN, run, class_ids.astype(np.int64))
        return probs

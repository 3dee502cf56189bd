"""OpenVINO on the CPU: the model directory's ONNX graphs compiled for this processor, at
FP32 or (where the CPU has BF16 instructions) BF16; an INT8 model directory's QDQ graphs run
as INT8 either way.

Feature maps stay in the dense graph's output tensors, read as numpy views (share_outputs),
until `release`. Where the native RoIAlign is built (engine.roi_align; `pooling="native"`,
the default then), the dense graph writes them channels-last (NHWC, at no cost in OpenVINO),
the RoIs are pooled natively into the head's infer-request tensor, and both heads run on
OpenVINO cut at their pooled input (openvino_graphs.pooled_head: the graph's own RoiAlign
nodes dropped). The box head takes its input channels-last, fc6's weight columns permuted to
match (channels_last_head), and in an INT8 directory already quantized to uint8
(quantized_input_head). Otherwise (`pooling="graph"`) the heads take the NCHW maps with
their RoiAlign, without copies (share_inputs), and a head that runs on ONNX Runtime wraps
the same memory in OrtValues. Which runtime runs each graph, at what precision, is the plan
(openvino_plans). Each call takes an infer request from a per-graph pool, so concurrent
`predict` calls never share one.
"""

from __future__ import annotations

import functools
import logging
import queue

import numpy as np

from .. import int8_arithmetic
from ..errors import BackendUnavailableError, ModelDirError
from . import PRECISIONS
from .base import GRAPHS, Backend, DenseOutputs, default_threads, rpn_output_names
from .chunking import run_in_row_passes
from .onnxruntime_common import CPU_MASK_HEAD_ROWS_PER_RUN, cpu_session
from .openvino_graphs import native_head, seven_bit_weights
from .openvino_plans import POOLINGS, check_plan, plan_for

log = logging.getLogger(__name__)

_OV_TYPES = {"fp32": "f32", "bf16": "bf16"}


@functools.lru_cache(maxsize=1)
def shared_core():
    """One openvino.Core for the process: creating one loads its plugins (each Engine.load
    asked for three: the availability check, the precisions, the backend)."""
    import openvino as ov

    return ov.Core()


def cpu_precisions(core=None) -> list[str]:
    """The precisions OpenVINO can run on this CPU: fp32, and bf16 where the processor has
    BF16 instructions (AVX-512 BF16 or AMX; OpenVINO's OPTIMIZATION_CAPABILITIES)."""
    core = core or shared_core()
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
    # the mask head takes at most this many detections at a time, as on onnxruntime-cpu (why:
    # onnxruntime_common), so its memory is bounded by what warm-up reached
    MASK_HEAD_ROWS_PER_RUN = CPU_MASK_HEAD_ROWS_PER_RUN

    def __init__(self, model_dir, threads: int | None = None, precision: str = "fp32",
                 plan: dict[str, tuple[str, str]] | None = None, pooling: str | None = None):
        """precision: "fp32" or "bf16" (BackendUnavailableError where this CPU lacks BF16);
        it selects the plan (openvino_plans.plan_for: PLANS[precision], QUANTIZED_PLANS for an
        INT8 model directory, the GRAPH_POOLING_ ones under pooling="graph"). pooling: "native"
        (engine.roi_align; the default where it is built) or "graph". plan: {graph: (runtime,
        precision)} over that, for measuring other configurations (openvino_plans.check_plan
        says what may be asked)."""
        import openvino as ov

        from .. import roi_align

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.pooling = pooling or ("native" if roi_align.available() else "graph")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if self.pooling == "native" and not roi_align.available():
            raise BackendUnavailableError("pooling native: the native RoIAlign is not built (engine.roi_align)")
        quantized = model_dir.config.quantization is not None
        native = self.pooling == "native"
        self.plan = {**plan_for(precision, quantized, self.pooling), **(plan or {})}
        check_plan(self.plan, self.pooling)
        core = shared_core()
        supported = cpu_precisions(core)
        if any(p not in supported for _, p in self.plan.values()):
            raise BackendUnavailableError(
                f"this CPU ({core.get_property('CPU', 'FULL_DEVICE_NAME')}) has no BF16 instructions "
                f"(AVX-512 BF16 or AMX); OpenVINO supports {', '.join(supported)} here")
        self.threads = threads or default_threads()
        self.feature_names = list(model_dir.config.features)
        # each head's RoIAlign settings (levels, scales, output size); _pools holds infer requests
        self.head_configs = {"box_head": model_dir.config.box_head, "mask_head": model_dir.config.mask_head}
        self.aligner = roi_align.RoIAligner(self.threads) if native else None
        # An INT8 dense graph computes its feature maps NHWC but OpenVINO writes NHWC outputs
        # through a generic Transpose (slower than NCHW outputs for R50, though NCHW is itself
        # a reorder from NHWC): there the maps come out NCHW and the native code transposes
        # them, which costs less. A float graph writes NHWC at no cost.
        self.transpose_features = native and quantized
        self._channels_last_buffers: dict[int, dict[str, np.ndarray]] = {}  # dense request -> map -> buffer
        # head -> the shape of its pooled input after R: (C, PH, PW), or channels-last (PH, PW, C)
        self.pooled_shapes: dict[str, tuple[int, int, int]] = {}
        self.channels_last: dict[str, bool] = {}
        self.quantize: dict[str, tuple[float, float] | None] = {}  # head -> its uint8 input's range
        # On a CPU whose INT8 kernels saturate 8-bit weight products (engine.int8_arithmetic),
        # the graphs OpenVINO runs get 7-bit weights (seven_bit_weights); requantized: graph ->
        # (tensors rewritten, 8-bit ones of another form left)
        self.int8_saturates = quantized and int8_arithmetic.saturates("openvino")
        self.requantized: dict[str, tuple[int, int]] = {}
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
                self.compiled[key] = core.compile_model(self._read(core, key, path), "CPU", config)
            except ModelDirError:
                raise
            except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
                raise ModelDirError(f"{path} cannot be compiled by OpenVINO: {exc}") from None
            self.precisions[key] = runtime_precision(self.compiled[key])
        self._pools = {key: queue.SimpleQueue() for key in self.compiled}
        outputs = [name for out in self.compiled["dense"].outputs for name in list(out.get_names())[:1]]
        self._rpn_logits, self._rpn_deltas = rpn_output_names(outputs)
        self.precision = self._overall_precision()
        log.info("openvino %s on the CPU with %d threads, RoIAlign %s: %s%s", ov.__version__, self.threads, self.pooling,
                 ", ".join(f"{k} {self.runtime_of(k)} {v}" for k, v in self.precisions.items()),
                 f"; {self.int8_weights}" if quantized else "")
        # graphs left with 8-bit weights where products saturate: on ONNX Runtime (pooling="graph"
        # plans), or of a form seven_bit_weights does not rewrite
        wrong = {k for k, (_, left) in self.requantized.items() if left}
        if self._ort_sessions and int8_arithmetic.eight_bit_wrong_here(model_dir.config.quantization, "onnxruntime"):
            wrong |= set(self._ort_sessions)
        if wrong:
            log.warning("INT8 products saturate on this CPU and %s keep 8-bit weights: their results are not the "
                        "model's; rebuild the directory with build_engine.py --int8 (7-bit weights)",
                        ", ".join(sorted(wrong)))

    @property
    def int8_weights(self) -> str:
        """How an INT8 directory's weights run here, for the log line: exact, or where this CPU
        saturates 8-bit products, how many weight tensors were requantized to 7 bits."""
        if not self.int8_saturates:
            return "INT8 exact here"
        done = sum(n for n, _ in self.requantized.values())
        if not done:
            return "INT8 products saturate here; the weights are 7-bit: exact"
        return f"INT8 products saturate here: {done} 8-bit weight tensors requantized to 7 bits at load"

    def _read(self, core, key: str, path):
        """The graph as OpenVINO compiles it: as exported under pooling="graph"; under "native"
        the dense graph writes its feature maps NHWC (a float graph) and the heads are as
        native_head makes them."""
        import openvino as ov

        model = core.read_model(str(path))
        if self.int8_saturates:
            self.requantized[key] = seven_bit_weights(model)
        if self.pooling == "graph" or (key == "dense" and self.transpose_features):
            return model
        if key == "dense":
            # Layout conversion of the outputs: OpenVINO's CPU plugin computes in blocked
            # layouts and reorders its outputs anyway, so NHWC costs what NCHW does (but for
            # an INT8 graph: transpose_features).
            ppp = ov.preprocess.PrePostProcessor(model)
            for name in self.feature_names:
                ppp.output(name).model().set_layout(ov.Layout("NCHW"))
                ppp.output(name).tensor().set_layout(ov.Layout("NHWC"))
            return ppp.build()
        channels = model.input(self.feature_names[0]).get_partial_shape()[1].get_length()
        head, self.channels_last[key], self.quantize[key] = native_head(model, channels, self.head_configs[key].output_size)
        self.pooled_shapes[key] = tuple(d.get_length() for d in list(head.input("pooled").get_partial_shape())[1:])
        return head

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
        if self.transpose_features:
            buffers = self._channels_last_buffers.setdefault(id(request), {})
            features = _Features(self._channels_last(request.get_tensor(name).data, buffers, name)
                                 for name in self.feature_names)
        else:
            features = _Features(request.get_tensor(name).data for name in self.feature_names)
        features.request = request
        return DenseOutputs(
            features=features,
            rpn_logits=[request.get_tensor(name).data for name in self._rpn_logits],
            rpn_deltas=[request.get_tensor(name).data for name in self._rpn_deltas],
        )

    def _channels_last(self, feature: np.ndarray, buffers: dict, name: str) -> np.ndarray:
        """The NCHW map `feature` copied channels-last into this dense request's own buffer
        for it, grown when a larger input needs it and kept (a fresh array per call would
        cost page faults)."""
        size = int(np.prod(feature.shape))
        if name not in buffers or buffers[name].size < size:
            buffers[name] = np.empty(size, np.float32)
        return self.aligner.channels_last(feature, buffers[name])

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

    def _run_pooled(self, key: str, features, rois: list[np.ndarray], extra: dict) -> dict:
        """One run of head `key` ("box_head" or "mask_head") cut at its pooled input: the RoIs
        pooled natively from the NHWC maps straight into the infer request's own input tensor
        ((R, PH, PW, C) for a head that takes it channels-last, else (R, C, PH, PW)), which the
        request keeps between calls (a fresh array per call, R x C x PH x PW floats, cost more
        in page faults than the pooling itself); outputs copied out."""
        config = self.head_configs[key]
        request = self._acquire(key)
        try:
            pooled = request.get_tensor("pooled")
            pooled.shape = [sum(int(r.shape[0]) for r in rois), *self.pooled_shapes[key]]
            self.aligner.pool_levels([features[i] for i in config.feature_indices], rois, config.scales,
                                     config.output_size, config.sampling_ratio, config.aligned, out=pooled.data,
                                     channels_last=self.channels_last[key], quantize=self.quantize[key])
            request.infer(extra, share_inputs=True, share_outputs=False)
            return {out.get_any_name(): request.get_tensor(out).data.copy() for out in self.compiled[key].outputs}
        finally:
            self._pools[key].put(request)

    def run_box_head(self, features, rois: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """rois: per pooled level (Rj, 4) float32 -> class_probs (R, C), box_deltas (R, 4C)."""
        if self.pooling == "native":
            result = self._run_pooled("box_head", features, rois, {})
            return result["class_probs"], result["box_deltas"]
        probs, deltas = self._run_head("box_head", features, rois, {}, ["class_probs", "box_deltas"])
        return probs, deltas

    def run_mask_head(self, features, rois: list[np.ndarray], class_ids: np.ndarray) -> np.ndarray:
        """rois per level + class_ids (R,) int64 in level order -> mask_probs (R, M, M)."""
        def run(chunk, ids):
            if self.pooling == "native":
                return (self._run_pooled("mask_head", features, chunk, {"class_ids": ids})["mask_probs"],)
            return tuple(self._run_head("mask_head", features, chunk, {"class_ids": ids}, ["mask_probs"]))

        (probs,) = run_in_row_passes(rois, self.MASK_HEAD_ROWS_PER_RUN, run, class_ids.astype(np.int64))
        return probs

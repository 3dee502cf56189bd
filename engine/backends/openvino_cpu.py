"""OpenVINO on the CPU: the model directory's ONNX graphs compiled for this processor, at
FP32 or (where the CPU has BF16 instructions) BF16; an INT8 model directory's QDQ graphs run
as INT8 either way.

Feature maps stay in the dense graph's output tensors, read as numpy views (share_outputs),
until `release`. Where the native RoIAlign is built (engine.roi_align; `pooling="native"`,
the default then), the dense graph writes them channels-last (NHWC, at no cost in OpenVINO),
the RoIs are pooled natively into the head's infer-request tensor, and both heads run on
OpenVINO cut at their pooled input (`pooled_head`: the graph's own RoiAlign nodes dropped).
The box head takes its input channels-last, fc6's weight columns permuted to match
(`channels_last_head`), and in an INT8 directory already quantized to uint8
(`quantized_input_head`). Otherwise (`pooling="graph"`) the heads take the NCHW maps with
their RoiAlign, without copies (share_inputs), and a head that runs on ONNX Runtime wraps
the same memory in OrtValues. Each call takes an infer request from a per-graph pool, so
concurrent `predict` calls never share one.
"""

from __future__ import annotations

import functools
import logging
import queue

import numpy as np

from .. import int8_arithmetic
from ..errors import BackendUnavailableError, ModelDirError
from .base import GRAPHS, Backend, DenseOutputs, default_threads, rpn_output_names
from .chunking import run_in_row_passes
from .onnxruntime_cpu import OnnxRuntimeCpuBackend, cpu_session

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")  # what `precision` may ask for
_OV_TYPES = {"fp32": "f32", "bf16": "bf16"}
RUNTIMES = ("openvino", "onnxruntime")  # what each graph may run on (ONNX Runtime: FP32 only)
POOLINGS = ("native", "graph")  # engine.roi_align, or the head graphs' own RoiAlign

# Which runtime runs each graph, and at what precision, for each precision asked for: the
# fastest that meets the BF16 accuracy criteria (benchmarks/backend_accuracy.py), by
# measurement (benchmarks/graph_runtimes.py and benchmarks/backend_accuracy.py; the figures
# behind each choice below are in benchmarks/results/FIGURES.md).
#
# With the native RoIAlign (pooling="native", wherever the package was built with a C
# compiler) every graph runs on OpenVINO, the heads cut after their RoiAlign (ONNX Runtime
# cannot run a cut graph without the onnx package at serving time): the box head ran faster
# there than ONNX Runtime's whole box head, both heads faster in BF16 than in FP32, the
# native pooling a small part of each. Under bf16 every graph runs BF16: with the pooling
# in FP32 the demo model (held-out scenes, against ONNX Runtime FP32) stays within the
# accuracy criteria. (With the graphs' own RoiAlign, OpenVINO ran it in BF16 too, RoI
# coordinates included, and mask AP fell past them: GRAPH_POOLING_PLANS keeps the heads
# FP32.)
PLANS = {precision: {graph: ("openvino", precision) for graph in GRAPHS} for precision in PRECISIONS}
# INT8 model directories: every graph on OpenVINO, FP32 between the INT8 layers by default
# (engine.backends.default_precision); the box head's fc6 in INT8 is most of its time.
QUANTIZED_PLANS = PLANS

# Without the native RoIAlign (pooling="graph"), as measured on a Xeon with AMX:
# - fp32: the dense graph is faster on OpenVINO, the box head on ONNX Runtime (its RoiAlign
#   is the faster one for the RPN's proposals), the mask head the same within noise on both.
# - bf16: only the dense graph runs BF16 (far faster than at FP32 for R50, within the
#   accuracy criteria). The heads' RoiAlign in BF16 cost mask AP past them and the box
#   head ran slower on OpenVINO, so they stay FP32 on ONNX Runtime.
GRAPH_POOLING_PLANS = {
    "fp32": {"dense": ("openvino", "fp32"), "box_head": ("onnxruntime", "fp32"), "mask_head": ("onnxruntime", "fp32")},
    "bf16": {"dense": ("openvino", "bf16"), "box_head": ("onnxruntime", "fp32"), "mask_head": ("onnxruntime", "fp32")},
}
# INT8 directories, same Xeon: OpenVINO runs the quantized dense graph and the mask head
# faster than ONNX Runtime; the box head is RoiAlign-bound (float in both) and stays on ONNX
# Runtime.
GRAPH_POOLING_QUANTIZED_PLANS = {
    precision: {"dense": ("openvino", precision), "box_head": ("onnxruntime", "fp32"), "mask_head": ("openvino", precision)}
    for precision in PRECISIONS
}


def _pooled_parameter(shape, element_type):
    """A Parameter "pooled" (its tensor named so too) of `shape`, R (the first) dynamic: the
    input the native RoIAlign fills."""
    import openvino as ov

    parameter = ov.opset13.parameter(ov.PartialShape([-1, *shape[1:]]), element_type, name="pooled")
    parameter.output(0).get_tensor().set_names({"pooled"})
    return parameter


def _with_pooled_input(model, parameter):
    """`model` rebuilt with `parameter` (now wired in) as its "pooled" input, in place of the
    one it had."""
    import openvino as ov

    others = [p for p in model.get_parameters() if p.get_friendly_name() != "pooled"]
    return ov.Model(model.get_results(), [parameter] + others, model.get_friendly_name())


def pooled_head(model, pooled_shape):
    """The head graph `model` (an openvino.Model) cut at its pooled RoI features: the Concat
    of its per-level ROIAlign outputs (or the one ROIAlign) becomes a Parameter "pooled" of
    pooled_shape (R, C, PH, PW, R dynamic), and the RoiAlign nodes and their rois_<j> and
    feature inputs fall away. Other inputs (the mask head's class_ids) stay."""
    import openvino as ov

    aligns = [op for op in model.get_ordered_ops() if op.get_type_name() == "ROIAlign"]
    if not aligns:
        raise ModelDirError(f"{model.get_friendly_name()}: no ROIAlign node to cut the head graph at")
    consumers = {t.get_node().get_friendly_name(): t.get_node() for a in aligns for t in a.output(0).get_target_inputs()}
    if len(aligns) == 1:
        cut = aligns[0]
    elif len(consumers) == 1 and next(iter(consumers.values())).get_type_name() == "Concat":
        cut = next(iter(consumers.values()))
    else:
        raise ModelDirError(f"the head graph's ROIAlign outputs feed {sorted(consumers)}, not one Concat")
    pooled = _pooled_parameter(pooled_shape, ov.Type.f32)
    cut.output(0).replace(pooled.output(0))
    # the parameters the results still depend on (the dropped RoiAlign nodes still hold their
    # feature and rois_<j> inputs, so "has a consumer" would keep those)
    reached, stack = set(), [r for r in model.get_results()]
    while stack:
        node = stack.pop()
        if node.get_instance_id() in reached:
            continue
        reached.add(node.get_instance_id())
        stack.extend(i.get_source_output().get_node() for i in node.inputs())
    kept = [p for p in model.get_parameters() if p.get_instance_id() in reached]
    return ov.Model(model.get_results(), [pooled] + kept, model.get_friendly_name())


# What may lie between a head's flatten and its first fully connected layer (an INT8
# directory's quantize/dequantize of the activations, with scalar parameters), and in that
# layer's weights (their dequantization, per output channel).
_ACTIVATION_OPS = {"FakeQuantize", "Convert", "Subtract", "Multiply"}
_WEIGHT_OPS = {"Constant", "Convert", "Subtract", "Multiply", "Reshape"}


def channels_last_head(model):
    """The cut head `model` (pooled_head's) taking its pooled features channels-last,
    (R, PH, PW, C), where it flattens them straight into a fully connected layer (the box
    head's fc6): the flatten then orders them (ph, pw, c), and the layer's weight columns are
    permuted to match, so the native RoIAlign writes its bins without a transpose (a large
    share of its time) and no Transpose runs in the graph. None where the graph
    is not of that form (the mask head's convolutions take NCHW)."""
    import openvino as ov

    pooled = next(p for p in model.get_parameters() if p.get_friendly_name() == "pooled")
    c, ph, pw = (d.get_length() for d in list(pooled.get_partial_shape())[1:])
    k = c * ph * pw
    (flatten,) = [t.get_node() for t in pooled.output(0).get_target_inputs()] or [None]
    if flatten is None or flatten.get_type_name() != "Reshape" or flatten.get_output_partial_shape(0).rank.get_length() != 2:
        return None
    node = flatten
    while True:  # forward to the fully connected layer
        consumers = [t for t in node.output(0).get_target_inputs()]
        if len(consumers) != 1:
            return None
        target, index = consumers[0].get_node(), consumers[0].get_index()
        if target.get_type_name() == "MatMul":
            if index != 0 or target.get_attributes()["transpose_a"]:
                return None
            matmul = target
            break
        others = [i for j, i in enumerate(target.inputs()) if j != index]
        if target.get_type_name() not in _ACTIVATION_OPS or any(
                not i.get_partial_shape().is_static or int(np.prod(list(i.get_shape()))) != 1 for i in others):
            return None
        node = target
    axis = 1 if matmul.get_attributes()["transpose_b"] else 0  # the input-feature axis of the weights
    constants, stack, seen = [], [matmul.input(1).get_source_output().get_node()], set()
    while stack:  # back through the weights' dequantization to the constants holding columns
        weight = stack.pop()
        if weight.get_instance_id() in seen:
            continue
        seen.add(weight.get_instance_id())
        if weight.get_type_name() not in _WEIGHT_OPS:
            return None
        shape = list(weight.get_output_partial_shape(0).to_shape()) if weight.get_output_partial_shape(0).is_static else None
        if shape is None:
            return None
        if weight.get_type_name() == "Constant":
            if len(shape) == 2 and shape[axis] == k and shape[1 - axis] != k:
                constants.append(weight)
            elif k in shape:
                return None
        elif weight.get_type_name() == "Reshape" and k in shape:
            return None
        stack.extend(i.get_source_output().get_node() for i in weight.inputs())
    if not constants:
        return None
    # new column b * C + ch (bin b, channel ch) is old column ch * PH * PW + b
    order = np.arange(k).reshape(c, ph * pw).T.reshape(-1)
    for constant in constants:
        permuted = ov.opset13.constant(np.take(constant.get_data(), order, axis=axis))
        permuted.set_friendly_name(constant.get_friendly_name())
        constant.output(0).replace(permuted.output(0))
    channels_last = _pooled_parameter((None, ph, pw, c), ov.Type.f32)
    flatten.input(0).replace_source_output(channels_last.output(0))
    return _with_pooled_input(model, channels_last)


def quantized_input_head(model):
    """The channels-last head `model` (channels_last_head's) taking its pooled features as
    uint8 where an INT8 directory quantizes them first thing (flatten -> FakeQuantize to 256
    levels -> Convert to u8): the native RoIAlign quantizes as it writes (a quarter of the
    bytes), and the graph's FakeQuantize over 12.5 M values (for 1000 RoIs) goes.
    Returns (model, (low, high)), the FakeQuantize's input range, or None where the graph
    is not of that form."""
    import openvino as ov

    pooled = next(p for p in model.get_parameters() if p.get_friendly_name() == "pooled")
    (flatten,) = [t.get_node() for t in pooled.output(0).get_target_inputs()]
    (fq,) = [t.get_node() for t in flatten.output(0).get_target_inputs()] or [None]
    if fq is None or fq.get_type_name() != "FakeQuantize" or fq.get_attributes()["levels"] != 256:
        return None
    bounds = [fq.input(i).get_source_output().get_node() for i in range(1, 5)]
    if any(b.get_type_name() != "Constant" or b.get_data().size != 1 for b in bounds):
        return None
    low, high, out_low, out_high = (float(b.get_data().reshape(-1)[0]) for b in bounds)
    consumers = [t.get_node() for t in fq.output(0).get_target_inputs()]
    if (out_low, out_high) != (0.0, 255.0) or not high > low or len(consumers) != 1 or (
            consumers[0].get_type_name() != "Convert" or consumers[0].get_output_element_type(0) != ov.Type.u8):
        return None
    quantized = _pooled_parameter(list(pooled.get_partial_shape()), ov.Type.u8)
    reshape = ov.opset13.reshape(quantized, flatten.input(1).get_source_output(), flatten.get_attributes()["special_zero"])
    consumers[0].output(0).replace(reshape.output(0))
    return _with_pooled_input(model, quantized), (low, high)


def _single_consumer(node):
    """(node, input index) of `node`'s only consumer, or (None, None)."""
    targets = list(node.output(0).get_target_inputs())
    return (targets[0].get_node(), targets[0].get_index()) if len(targets) == 1 else (None, None)


def _constant_behind(node):
    """The Constant that `node` (a Constant, or a Reshape/Convert chain from one, each used
    only on this path) is, or None."""
    while node.get_type_name() in ("Reshape", "Convert", "Unsqueeze"):
        if _single_consumer(node)[0] is None:
            return None
        node = node.input(0).get_source_output().get_node()
    return node if node.get_type_name() == "Constant" and _single_consumer(node)[0] is not None else None


def seven_bit_weights(model) -> tuple[int, int]:
    """Requantize `model`'s 8-bit INT8 weights to 7 bits in place, for a CPU whose INT8 kernels
    saturate U8 x S8 pair sums (engine.int8_arithmetic): each S8 weight tensor with values
    beyond +-64 (Constant -> Convert -> [Subtract zero point] -> Multiply scale, the form
    OpenVINO reads an ONNX DequantizeLinear in) becomes round(w / 2) with its scale doubled.
    That adds at most half a weight step of rounding, where saturation was unbounded.
    Returns (requantized, left): tensors rewritten, and 8-bit ones of another form (a
    non-zero zero point, shared scales) left as they were."""
    import openvino as ov

    limit = int8_arithmetic.SEVEN_BIT_LIMIT
    requantized = left = 0
    for constant in [op for op in model.get_ordered_ops()
                     if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.i8]:
        weights = constant.get_data()
        if weights.size == 0 or int(np.abs(weights.astype(np.int16)).max()) <= limit:
            continue
        convert, _ = _single_consumer(constant)
        if convert is None or convert.get_type_name() != "Convert":
            continue  # not a weight's dequantization (a zero point is Convert -> Reshape, and small)
        node, index = _single_consumer(convert)
        if node is not None and node.get_type_name() == "Subtract" and index == 0:
            zero_point = _constant_behind(node.input(1).get_source_output().get_node())
            if zero_point is None or np.any(zero_point.get_data()):
                left += 1
                continue
            node, index = _single_consumer(node)
        scale = _constant_behind(node.input(1 - index).get_source_output().get_node()) if (
            node is not None and node.get_type_name() == "Multiply") else None
        if scale is None or scale.get_output_element_type(0) != ov.Type.f32:
            left += 1
            continue
        halved = np.clip(np.round(weights.astype(np.float32) / 2), -limit, limit).astype(np.int8)
        for old, data in ((constant, halved), (scale, scale.get_data() * np.float32(2))):
            new = ov.opset13.constant(data)
            new.set_friendly_name(old.get_friendly_name())
            old.output(0).replace(new.output(0))
        requantized += 1
    return requantized, left


def native_head(model, channels: int, output_size):
    """The head graph `model` as the backend runs it with the native RoIAlign: cut at its
    pooled input (pooled_head), channels-last where it flattens that into a fully connected
    layer (channels_last_head), uint8 where that layer is INT8 (quantized_input_head).
    Returns (model, channels_last, quantize: (low, high) or None)."""
    head = pooled_head(model, (None, channels, *output_size))
    channels_last = channels_last_head(head)
    if channels_last is None:
        return head, False, None
    quantized = quantized_input_head(channels_last)
    if quantized is None:
        return channels_last, True, None
    return quantized[0], True, quantized[1]


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
    # the mask head takes at most this many detections at a time, as on OnnxRuntimeCpuBackend
    # (why 100: there), so its memory is bounded by what warm-up reached
    MASK_HEAD_ROWS_PER_RUN = OnnxRuntimeCpuBackend.MASK_HEAD_ROWS_PER_RUN

    def __init__(self, model_dir, threads: int | None = None, precision: str = "fp32",
                 plan: dict[str, tuple[str, str]] | None = None, pooling: str | None = None):
        """precision: "fp32" or "bf16" (BackendUnavailableError where this CPU lacks BF16);
        it selects PLANS[precision] (QUANTIZED_PLANS for an INT8 model directory; the
        GRAPH_POOLING_ ones under pooling="graph"). pooling: "native" (engine.roi_align; the
        default where it is built) or "graph". plan: {graph: (runtime, precision)} over that,
        for measuring other configurations (runtime one of RUNTIMES; ONNX Runtime runs FP32
        only, and only under pooling="graph"; the dense graph on OpenVINO)."""
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
        plans = (QUANTIZED_PLANS if native else GRAPH_POOLING_QUANTIZED_PLANS) if quantized else (
            PLANS if native else GRAPH_POOLING_PLANS)
        self.plan = {**plans[precision], **(plan or {})}
        for graph, (runtime, graph_precision) in self.plan.items():
            if graph not in GRAPHS or runtime not in RUNTIMES or graph_precision not in PRECISIONS or (
                    runtime == "onnxruntime" and graph_precision != "fp32"):
                raise ValueError(f"plan: {graph}=({runtime!r}, {graph_precision!r}); graphs are {', '.join(GRAPHS)}, "
                                 f"runtimes {', '.join(RUNTIMES)} and precisions {', '.join(PRECISIONS)} "
                                 "(onnxruntime: fp32)")
        if self.plan["dense"][0] != "openvino":
            raise ValueError("plan: the dense graph runs on openvino here (backend onnxruntime-cpu runs it on ONNX Runtime)")
        if native and any(runtime != "openvino" for runtime, _ in self.plan.values()):
            raise ValueError("plan: under pooling native every graph runs on openvino (the heads are cut at their "
                             "pooled input; ONNX Runtime runs the uncut graphs: pooling graph)")
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
        request keeps between calls (a fresh 50 MB array per call cost more in page faults
        than the pooling itself); outputs copied out."""
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

"""Whether a runtime's INT8 kernels add up U8 x S8 products exactly on this CPU.

x86 CPUs without VNNI (AVX2-only ones, and AVX-512 ones before Cascade Lake) multiply U8
activations by S8 weights with VPMADDUBSW: it adds each two neighbouring products into an
int16 and saturates at +-32767 before the int32 accumulation. ONNX Runtime's MLAS (its
quantization guide says so) and OpenVINO's oneDNN both use it there for their U8S8 Conv,
Gemm and MatMul kernels; with VNNI (VPDPBUSD) or AMX the products reach int32 directly.

An INT8 model directory's activations are U8 (0..255, zero point anywhere in it: FPN maps
sit around 128) and its weights S8. With 8-bit weights (-127..127) one pair can reach
2 * 255 * 127 = 64770, and on such a CPU the layer's result then depends on which input
columns sit next to each other: OpenVINO's box head gave different class probabilities
with fc6's columns permuted than without, both far from the exact ones. With 7-bit weights
(-64..64, what build_engine.py --int8 writes: exporter.quantize.WEIGHT_BITS) a pair is at
most 2 * 255 * 64 = 32640, exact everywhere.

`saturates(runtime)` finds out by running the probe graph (PROBE_FILE, a QDQ Gemm and a
QDQ 1x1 Conv whose products must saturate there) rather than by reading CPU flags, so it
also sees what a runtime was told to use (oneDNN's ONEDNN_MAX_CPU_ISA, which the tests use
to stand in for an AVX2-only CPU).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

PROBE_FILE = Path(__file__).resolve().parent / "int8_probe.onnx"
RUNTIMES = ("onnxruntime", "openvino")
SEVEN_BIT_LIMIT = 64  # |weight| <= this: no U8 x S8 pair overflows an int16
_ROWS, _INPUTS, _OUTPUTS = 32, 256, 4  # Gemm (rows, inputs) -> outputs; the Conv: inputs -> outputs channels
_SIDE = 4  # the Conv's input is (1, _INPUTS, _SIDE, _SIDE)


def probe_weights() -> np.ndarray:
    """(outputs, inputs) int8: +127 and -127 rows, whose pairs with 255 inputs overflow an
    int16 (2 * 255 * 127), and rows of mixed signs that do not."""
    weights = np.full((_OUTPUTS, _INPUTS), 127, np.int8)
    weights[1] = -127
    weights[2, 0::2], weights[2, 1::2] = 127, -127  # each pair cancels: exact either way
    weights[3] = np.resize(np.arange(-64, 65, dtype=np.int8), _INPUTS)  # 7-bit: exact either way
    return weights


def probe_inputs() -> dict[str, np.ndarray]:
    """Activations of 255 (the top of U8 with scale 1, zero point 0)."""
    return {"rows": np.full((_ROWS, _INPUTS), 255.0, np.float32),
            "image": np.full((1, _INPUTS, _SIDE, _SIDE), 255.0, np.float32)}


def expected_outputs() -> dict[str, np.ndarray]:
    """What exact integer arithmetic gives for probe_inputs()."""
    sums = 255.0 * probe_weights().astype(np.float64).sum(axis=1)
    return {"gemm": np.broadcast_to(sums, (_ROWS, _OUTPUTS)),
            "conv": np.broadcast_to(sums[None, :, None, None], (1, _OUTPUTS, _SIDE, _SIDE))}


def build_probe() -> bytes:
    """The probe graph as ONNX bytes (needs the onnx package; PROBE_FILE holds its output):
    rows (R, 256) -> QDQ -> Gemm with QDQ per-channel weights -> gemm (R, 4); image
    (1, 256, 4, 4) -> QDQ -> 1x1 Conv, the same weights -> conv (1, 4, 4, 4). The same
    pattern build_engine.py --int8 writes, so each runtime fuses it into its integer kernels."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = probe_weights()
    ones, zeros = np.ones(_OUTPUTS, np.float32), np.zeros(_OUTPUTS, np.int8)
    initializers = [
        numpy_helper.from_array(np.float32(1.0), "x_scale"), numpy_helper.from_array(np.uint8(0), "x_zero"),
        numpy_helper.from_array(weights, "w"), numpy_helper.from_array(weights.reshape(_OUTPUTS, _INPUTS, 1, 1), "wc"),
        numpy_helper.from_array(ones, "w_scale"), numpy_helper.from_array(zeros, "w_zero"),
        numpy_helper.from_array(ones, "wc_scale"), numpy_helper.from_array(zeros, "wc_zero"),  # private, as exported
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["rows", "x_scale", "x_zero"], ["rows_q"]),
        helper.make_node("DequantizeLinear", ["rows_q", "x_scale", "x_zero"], ["rows_dq"]),
        helper.make_node("DequantizeLinear", ["w", "w_scale", "w_zero"], ["w_dq"], axis=0),
        helper.make_node("Gemm", ["rows_dq", "w_dq"], ["gemm"], transB=1),
        helper.make_node("QuantizeLinear", ["image", "x_scale", "x_zero"], ["image_q"]),
        helper.make_node("DequantizeLinear", ["image_q", "x_scale", "x_zero"], ["image_dq"]),
        helper.make_node("DequantizeLinear", ["wc", "wc_scale", "wc_zero"], ["wc_dq"], axis=0),
        helper.make_node("Conv", ["image_dq", "wc_dq"], ["conv"]),
    ]
    graph = helper.make_graph(
        nodes, "int8_probe",
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["R", _INPUTS]),
         helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, _INPUTS, _SIDE, _SIDE])],
        [helper.make_tensor_value_info("gemm", TensorProto.FLOAT, ["R", _OUTPUTS]),
         helper.make_tensor_value_info("conv", TensorProto.FLOAT, [1, _OUTPUTS, _SIDE, _SIDE])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="maskrcnn-serve")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run_probe(runtime: str) -> dict[str, np.ndarray]:
    """The probe graph's outputs on `runtime` ("onnxruntime" or "openvino"), one thread, FP32
    between the INT8 layers (as the backends run INT8 directories)."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(PROBE_FILE), options, providers=["CPUExecutionProvider"])
        return dict(zip(("gemm", "conv"), session.run(["gemm", "conv"], probe_inputs())))
    if runtime == "openvino":
        from .backends.openvino_cpu import shared_core

        core = shared_core()
        compiled = core.compile_model(core.read_model(str(PROBE_FILE)), "CPU",
                                      {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(probe_inputs())
        return {name: result[compiled.output(name)] for name in ("gemm", "conv")}
    raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


@functools.lru_cache(maxsize=None)
def saturates(runtime: str) -> bool:
    """True where `runtime`'s INT8 kernels on this CPU clip U8 x S8 pair sums to an int16, so
    8-bit weights give wrong results; False where they compute exactly."""
    expected, got = expected_outputs(), run_probe(runtime)
    return not all(np.allclose(got[name], expected[name], rtol=1e-6, atol=0) for name in expected)


def describe(runtime: str) -> str:
    """One line for logs and `python -m engine backends`."""
    if saturates(runtime):
        return ("U8 x S8 products saturate here (no VNNI): 8-bit weights give wrong results, 7-bit ones "
                "(build_engine.py --int8) exact ones")
    return "exact here"


def eight_bit_wrong_here(quantization, runtime: str) -> bool:
    """Whether an INT8 directory (its model.json `quantization` section, None for a float one)
    has 8-bit weights that `runtime`'s products saturate on here, left as they are."""
    return quantization is not None and quantization.weight_bits > 7 and saturates(runtime)

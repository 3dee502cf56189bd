"""engine.int8_arithmetic: whether each CPU runtime's INT8 products are exact here, checked on
this CPU, on oneDNN told to use AVX2 only (OpenVINO), and on an emulated AVX2-only CPU
(qemu-user's Haswell model: both runtimes read its CPUID). The seven_bit_weights rewrite
makes 8-bit weights exact where products saturate."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import int8_arithmetic
from harness.proc import cpu_flags

ROOT = Path(__file__).resolve().parents[1]
# instruction sets with which U8 x S8 products reach int32 without an int16 step
EXACT_FEATURES = {"avx512_vnni", "avx_vnni", "amx_int8"}
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2"}  # oneDNN (OpenVINO's CPU kernels) without VNNI or AVX-512


def exact_here(runtime: str, environ=os.environ) -> bool:
    """Whether `runtime`'s INT8 products should be exact on this CPU: it has VNNI or AMX, and
    for OpenVINO no ONEDNN_MAX_CPU_ISA keeps oneDNN below its VNNI kernels (so the whole
    suite can run as on a CPU without VNNI: ONEDNN_MAX_CPU_ISA=AVX2 ./test.sh)."""
    limit = environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    limited = runtime == "openvino" and limit in {"SSE41", "AVX", "AVX2", "AVX512_CORE"}
    return bool(cpu_flags() & EXACT_FEATURES) and not limited


def run_python(code: str, env_extra: dict, prefix: list[str] = (), timeout: float = 300) -> str:
    result = subprocess.run([*prefix, sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env_extra},
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_committed_probe_is_what_build_probe_writes():
    pytest.importorskip("onnx")
    assert int8_arithmetic.PROBE_FILE.read_bytes() == int8_arithmetic.build_probe()


@pytest.mark.parametrize("runtime", int8_arithmetic.RUNTIMES)
def test_probe_agrees_with_this_cpus_instruction_sets(runtime):
    exact = exact_here(runtime)
    assert int8_arithmetic.saturates(runtime) is (not exact), (runtime, sorted(cpu_flags() & EXACT_FEATURES))
    outputs, expected = int8_arithmetic.run_probe(runtime), int8_arithmetic.expected_outputs()
    if exact:
        for name in expected:
            np.testing.assert_array_equal(outputs[name], expected[name].astype(np.float32))


def test_the_probe_tells_saturating_openvino_from_exact():
    """oneDNN limited to AVX2 saturates: the probe's +-127 rows come out as 128 pairs of
    +-32767 (or -32768), its 7-bit row exact. ONNX Runtime does not read ONEDNN_MAX_CPU_ISA."""
    code = ("from engine import int8_arithmetic as m; import numpy as np; g = m.run_probe('openvino')['gemm'][0]; "
            "print(m.saturates('openvino'), m.saturates('onnxruntime'), ' '.join(str(int(v)) for v in g))")
    saturates, ort, *row = run_python(code, AVX2_ONLY).split()
    assert (saturates, ort) == ("True", str(not exact_here("onnxruntime")))
    exact = int8_arithmetic.expected_outputs()["gemm"][0]
    assert [int(v) for v in row[:2]] == [128 * 32767, -128 * 32768] and int(row[3]) == exact[3]


def test_seven_bit_weights_are_exact_where_products_saturate():
    """The probe graph with its weights requantized by seven_bit_weights computes, on oneDNN
    limited to AVX2, exactly what integer arithmetic gives for round(w / 2) * 2."""
    code = """
import numpy as np
from engine import int8_arithmetic as m
from engine.backends.openvino_cpu import shared_core
from engine.backends.openvino_graphs import seven_bit_weights
core = shared_core()
model = core.read_model(str(m.PROBE_FILE))
print(*seven_bit_weights(model))
compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
result = compiled(m.probe_inputs())
halved = np.clip(np.round(m.probe_weights().astype(np.float64) / 2), -64, 64)
expected = 255.0 * 2 * halved.sum(axis=1)
for name in ("gemm", "conv"):
    got = result[compiled.output(name)]
    got = got if name == "gemm" else got[0, :, 0, 0][None]
    assert np.array_equal(got[0], expected.astype(np.float32)), (name, got[0], expected)
print("exact")
"""
    requantized, left, verdict = run_python(code, AVX2_ONLY).split()
    assert (requantized, left, verdict) == ("2", "0", "exact")  # the Gemm's and the Conv's weights


def test_both_runtimes_saturate_on_an_emulated_avx2_only_cpu():
    """qemu-user's Haswell: AVX2 and FMA, no AVX-512, no VNNI, in the CPUID both runtimes read
    to pick their kernels. .ci/run installs qemu-user."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        if os.environ.get("CI"):
            pytest.fail("qemu-x86_64 is missing (apt-get install qemu-user): CI checks INT8 on an emulated AVX2 CPU")
        pytest.skip("qemu-x86_64 not installed (apt-get install qemu-user)")
    code = ("from engine import int8_arithmetic as m; "
            "print(m.saturates('onnxruntime'), m.saturates('openvino'))")
    assert run_python(code, {}, prefix=[qemu, "-cpu", "Haswell"]).split() == ["True", "True"]

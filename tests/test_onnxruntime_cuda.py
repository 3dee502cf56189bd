"""engine/backends/onnxruntime_cuda.py: its IOBinding flow, bound to CPU memory so it runs anywhere."""

from __future__ import annotations

import numpy as np

from engine import Engine
from engine.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend
from engine.backends.onnxruntime_cuda import OnnxRuntimeCudaBackend
from engine.model_directory.directory import ModelDir
from helpers import match_detections, photo


class IOBindingOnCpu(OnnxRuntimeCudaBackend):
    """The onnxruntime-cuda backend with its device outputs bound to the CPU: the same
    IOBinding flow (features as OrtValues fed from one session to the next)."""

    name = "iobinding-cpu"
    device_type = "cpu"
    provider = "CPUExecutionProvider"

    def _providers(self, device_id, tf32=False):
        return ["CPUExecutionProvider"]


def test_iobinding_flow_matches_the_cpu_backend(small_model_dir):
    directory = ModelDir.open(small_model_dir)
    cpu = Engine(directory, OnnxRuntimeCpuBackend(directory))
    bound = Engine(directory, IOBindingOnCpu(directory))
    for name in ("astronaut", "motorcycle"):
        image = photo(name)
        a, b = cpu.predict(image, score_threshold=0.05), bound.predict(image, score_threshold=0.05)
        assert len(a) > 0
        pairs, fraction = match_detections({"boxes": a.boxes, "scores": a.scores, "labels": a.class_ids}, b)
        assert fraction == 1.0
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)

"""engine.backends.base: the Backend contract, and what every backend shares."""

from __future__ import annotations

import numpy as np
import pytest

from engine.backends.base import FILLER_BOX, Backend, DenseOutputs, default_threads, rpn_output_names
from engine.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend
from engine.backends.onnxruntime_cuda import OnnxRuntimeCudaBackend
from engine.backends.tensorrt import TensorRTBackend
from engine.roi_heads import split_by_level
from engine.model_directory.config import RoIPoolConfig


@pytest.mark.parametrize("cls", [OnnxRuntimeCpuBackend, OnnxRuntimeCudaBackend, TensorRTBackend])
def test_every_backend_implements_the_contract(cls):
    assert issubclass(cls, Backend) and isinstance(cls.name, str)
    assert not getattr(cls, "__abstractmethods__", None)


def test_the_quantizers_recording_wrapper_is_a_backend_too():
    from exporter.quantize import _RecordingBackend

    assert issubclass(_RecordingBackend, Backend) and not _RecordingBackend.__abstractmethods__


def test_a_backend_without_release_cannot_be_made():
    class NoRelease(Backend):
        name = "partial"

        def run_dense(self, images):
            return DenseOutputs([], [], [])

        def run_box_head(self, features, rois):
            return np.zeros((1, 2)), np.zeros((1, 8))

        def run_mask_head(self, features, rois, class_ids):
            return np.zeros((1, 28, 28))

    with pytest.raises(TypeError, match="release"):
        NoRelease()


def test_rpn_output_names_are_in_level_order():
    names = [f"rpn_deltas_{i}" for i in (10, 2, 0, 1)] + ["feature_0"] + [f"rpn_logits_{i}" for i in (1, 10, 0, 2)]
    logits, deltas = rpn_output_names(iter(names))
    assert logits == ["rpn_logits_0", "rpn_logits_1", "rpn_logits_2", "rpn_logits_10"]
    assert deltas == ["rpn_deltas_0", "rpn_deltas_1", "rpn_deltas_2", "rpn_deltas_10"]
    with pytest.raises(ValueError, match="lack matching"):
        rpn_output_names(["rpn_logits_0", "rpn_logits_1", "rpn_deltas_0"])


def test_empty_levels_get_the_shared_read_only_filler_box():
    pool = RoIPoolConfig(featmap_names=("0", "1"), feature_indices=(0, 1), scales=(0.25, 0.125), output_size=(7, 7),
                         sampling_ratio=2, canonical_scale=224, canonical_level=4)
    split = split_by_level(np.array([[0, 0, 10, 10]], np.float32), pool)  # a small box: level 0 only
    assert split.rois[1] is FILLER_BOX and split.order.tolist() == [0, -1]
    with pytest.raises(ValueError):
        FILLER_BOX[0, 0] = 5.0


def test_default_threads_are_the_usable_cores_whatever_the_environment(monkeypatch):
    import os

    monkeypatch.setenv("MASKRCNN_THREADS", "3")  # the server's setting (server.config), not the engine's
    assert default_threads() == len(os.sched_getaffinity(0))

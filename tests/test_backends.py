"""engine/backends/__init__.py: every backend listed with its reason, `auto`'s order and logs, the
TensorRT reason (plans against this GPU and TensorRT), `python -m engine backends`.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import types

import pytest

from engine import BackendUnavailableError
from engine import backends as backends_module
from engine import cuda_memory
from engine.backends import BACKENDS, available_backends, choose_backend, create_backend
from engine.model_directory.directory import ModelDir
from helpers import DEMO, ROOT, model_dir_with_plans


def test_every_backend_is_listed_with_a_reason_when_unavailable():
    status = available_backends()
    assert tuple(status) == BACKENDS
    assert status["onnxruntime-cpu"] is None
    for name, reason in status.items():
        assert reason is None or (isinstance(reason, str) and reason.strip()), name
    if cuda_memory.device_reason() is not None:  # a CPU-only machine: both GPU paths say so
        assert status["tensorrt"] and status["onnxruntime-cuda"]


def test_auto_takes_tensorrt_then_onnxruntime_cuda_then_openvino_then_onnxruntime_cpu():
    assert choose_backend({"tensorrt": None, "onnxruntime-cuda": None, "openvino": None, "onnxruntime-cpu": None}) == "tensorrt"
    assert choose_backend({"tensorrt": "no plans", "onnxruntime-cuda": None, "openvino": None,
                           "onnxruntime-cpu": None}) == "onnxruntime-cuda"
    assert choose_backend({"tensorrt": "x", "onnxruntime-cuda": "y", "openvino": None, "onnxruntime-cpu": None}) == "openvino"
    assert choose_backend({"tensorrt": "x", "onnxruntime-cuda": "y", "openvino": "w", "onnxruntime-cpu": None}) == "onnxruntime-cpu"
    with pytest.raises(BackendUnavailableError, match="tensorrt: x; onnxruntime-cuda: y; onnxruntime-cpu: z"):
        choose_backend({"tensorrt": "x", "onnxruntime-cuda": "y", "onnxruntime-cpu": "z"})


def test_auto_logs_its_choice_and_warns_when_plans_cannot_run(tmp_path, monkeypatch, caplog):
    directory = ModelDir.open(model_dir_with_plans(tmp_path))
    monkeypatch.setattr(backends_module, "available_backends", lambda model_dir=None: {
        "tensorrt": "plans were built for another GPU", "onnxruntime-cuda": "no CUDA device", "onnxruntime-cpu": None})
    with caplog.at_level(logging.INFO, logger="engine.backends"):
        backend = create_backend("auto", directory)
    assert backend.name == "onnxruntime-cpu"
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "engine.backends"]
    assert any(level == "WARNING" and "another GPU" in text for level, text in messages), messages
    assert any(level == "INFO" and "backend auto: onnxruntime-cpu" in text and "no CUDA device" in text
               for level, text in messages), messages
    with pytest.raises(BackendUnavailableError, match="backend tensorrt is unavailable: plans were built for another GPU"):
        create_backend("tensorrt", directory)
    with pytest.raises(BackendUnavailableError, match="unknown backend"):
        create_backend("cuda", directory)


def test_tensorrt_reason_checks_plans_against_this_gpu_and_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.8.0.43"))
    monkeypatch.setattr(cuda_memory, "device_reason", lambda: None)
    device = {"name": "NVIDIA A10G", "compute_capability": "8.6", "total_memory_bytes": 1}
    monkeypatch.setattr(cuda_memory, "device_info", lambda index=0: device)
    assert "no TensorRT plans" in backends_module._tensorrt_reason(ModelDir.open(DEMO))
    assert backends_module._tensorrt_reason(None) is None  # no model dir: TensorRT and a GPU suffice
    directory = ModelDir.open(model_dir_with_plans(tmp_path))
    assert backends_module._tensorrt_reason(directory) is None
    device["name"] = "NVIDIA A10"  # same architecture, other board: TensorRT accepts the plan
    assert backends_module._tensorrt_reason(directory) is None
    device["compute_capability"] = "8.9"
    assert "sm 8.6" in backends_module._tensorrt_reason(directory) and "rebuild" in backends_module._tensorrt_reason(directory)
    device["compute_capability"] = "8.6"
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.9.0.34"))
    assert "TensorRT 10.9.0.34" in backends_module._tensorrt_reason(directory)


def test_engine_backends_command_lists_every_backend_and_the_auto_choice():
    result = subprocess.run([sys.executable, "-m", "engine", "backends", "--model-dir", str(DEMO)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[:len(BACKENDS)]] == list(BACKENDS)
    assert lines[-1].startswith("auto picks ") and lines[-1].split()[2] in BACKENDS
    if cuda_memory.device_reason() is not None:
        cpu = "openvino" if available_backends()["openvino"] is None else "onnxruntime-cpu"
        assert "unavailable:" in lines[0] and "unavailable:" in lines[1] and lines[-1].split()[2] == cpu

"""GPU backend plumbing that runs anywhere: backend listing and `auto` order, the TensorRT
section of model.json, profile shapes from the resize rule, chunked head runs, the IOBinding
flow of the onnxruntime-cuda backend (bound to CPU memory here), the engine's release hook,
the CUDA layer's errors, and `build_engine.py --tensorrt` failing cleanly without a GPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from conftest import match_detections, photo
from engine import BackendUnavailableError, Engine, ModelDirError
from engine import backends as backends_module
from engine import cuda_memory
from engine.backends import BACKENDS, available_backends, choose_backend, create_backend
from engine.backends.chunking import run_in_chunks
from engine.backends.onnxruntime_cpu import OnnxRuntimeCpuBackend
from engine.backends.onnxruntime_cuda import OnnxRuntimeCudaBackend
from engine.model_dir import ModelDir, sha256_of
from engine.tensorrt_plans import dense_range, feature_strides, incompatibility, merge_shape, profile_shapes

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo" / "model"


def _r50_config():
    """The demo model's config with R50's resize rule and RPN top-n (the same four pooled levels)."""
    demo = ModelDir.open(DEMO, verify_checksums=False).config
    assert demo.features == ("feature_0", "feature_1", "feature_2", "feature_3")
    assert demo.box_head.scales == demo.mask_head.scales == (0.25, 0.125, 0.0625, 0.03125)
    return demo.replace(transform=dataclasses.replace(demo.transform, min_size=800, max_size=1333, size_divisible=32),
                        rpn=dataclasses.replace(demo.rpn, post_nms_top_n=1000))


R50_CONFIG = _r50_config()


# -- listing and auto ----------------------------------------------------------------------


def test_every_backend_is_listed_with_a_reason_when_unavailable():
    status = available_backends()
    assert tuple(status) == BACKENDS
    assert status["onnxruntime-cpu"] is None
    for name, reason in status.items():
        assert reason is None or (isinstance(reason, str) and reason.strip()), name
    if cuda_memory.device_reason() is not None:  # a CPU-only machine: both GPU paths say so
        assert status["tensorrt"] and status["onnxruntime-cuda"]


def test_auto_takes_tensorrt_then_onnxruntime_cuda_then_cpu():
    assert choose_backend({"tensorrt": None, "onnxruntime-cuda": None, "onnxruntime-cpu": None}) == "tensorrt"
    assert choose_backend({"tensorrt": "no plans", "onnxruntime-cuda": None, "onnxruntime-cpu": None}) == "onnxruntime-cuda"
    assert choose_backend({"tensorrt": "x", "onnxruntime-cuda": "y", "onnxruntime-cpu": None}) == "onnxruntime-cpu"
    with pytest.raises(BackendUnavailableError, match="tensorrt: x; onnxruntime-cuda: y; onnxruntime-cpu: z"):
        choose_backend({"tensorrt": "x", "onnxruntime-cuda": "y", "onnxruntime-cpu": "z"})


def _with_plans(tmp_path, source=DEMO, **overrides) -> Path:
    """A copy of `source` with fake plan files and a well-formed "tensorrt" section."""
    target = tmp_path / "with-plans"
    shutil.copytree(source, target)
    plans = {}
    for graph in ("dense", "box_head", "mask_head"):
        (target / f"{graph}.fp16.plan").write_bytes(b"not really a plan " + graph.encode())
        plans[graph] = {"file": f"{graph}.fp16.plan", "sha256": sha256_of(target / f"{graph}.fp16.plan")}
    section = {"precision": "fp16", "tensorrt_version": "10.8.0.43", "gpu_name": "NVIDIA A10G",
               "compute_capability": "8.6", "profiles_per_plan": 2, "plans": plans, "profiles": {}}
    section.update(overrides)
    config = json.loads((target / "model.json").read_text())
    config["tensorrt"] = section
    (target / "model.json").write_text(json.dumps(config))
    return target


def test_auto_logs_its_choice_and_warns_when_plans_cannot_run(tmp_path, monkeypatch, caplog):
    directory = ModelDir.open(_with_plans(tmp_path))
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
    directory = ModelDir.open(_with_plans(tmp_path))
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
    assert [line.split()[0] for line in lines[:3]] == list(BACKENDS)
    assert lines[-1].startswith("auto picks ") and lines[-1].split()[2] in BACKENDS
    if cuda_memory.device_reason() is not None:
        assert "unavailable:" in lines[0] and "unavailable:" in lines[1] and lines[-1].split()[2] == "onnxruntime-cpu"


# -- model.json "tensorrt" -----------------------------------------------------------------


def test_tensorrt_section_is_validated(tmp_path):
    assert ModelDir.open(_with_plans(tmp_path / "ok")).tensorrt.precision == "fp16"
    with pytest.raises(ModelDirError, match="tensorrt.precision"):
        ModelDir.open(_with_plans(tmp_path / "p", precision="fp8"))
    with pytest.raises(ModelDirError, match="tensorrt.gpu_name"):
        ModelDir.open(_with_plans(tmp_path / "g", gpu_name=""))
    with pytest.raises(ModelDirError, match=r"tensorrt\.plans\.box_head is missing"):
        ModelDir.open(_with_plans(tmp_path / "m", plans={"dense": {"file": "dense.fp16.plan"}}))
    broken = _with_plans(tmp_path / "corrupt")
    (broken / "box_head.fp16.plan").write_bytes(b"changed")
    with pytest.raises(ModelDirError, match="box_head.fp16.plan is corrupt"):
        ModelDir.open(broken)
    (broken / "box_head.fp16.plan").unlink()
    with pytest.raises(ModelDirError, match="box_head.fp16.plan is missing"):
        ModelDir.open(broken)


def test_incompatibility_names_what_differs(tmp_path):
    section = dataclasses.replace(ModelDir.open(_with_plans(tmp_path)).tensorrt, tensorrt_version="10.8.0.43",
                                  gpu_name="Tesla T4", compute_capability="7.5")
    assert incompatibility(section, "10.8.0.43", {"name": "Tesla T4", "compute_capability": "7.5"}) is None
    assert "TensorRT 10.8.0.43" in incompatibility(section, "10.3.0.26", {"name": "Tesla T4", "compute_capability": "7.5"})
    reason = incompatibility(section, "10.8.0.43", {"name": "NVIDIA L4", "compute_capability": "8.9"})
    assert "NVIDIA L4" in reason and "Tesla T4" in reason


def test_writable_copy_links_the_graphs_and_follows_a_new_model(tmp_path):
    from exporter.tensorrt_build import writable_copy

    source = tmp_path / "ro"
    shutil.copytree(DEMO, source)
    copy = writable_copy(source, tmp_path / "cache")
    assert (copy / "dense.onnx").is_symlink() and not (copy / "model.json").is_symlink()
    assert ModelDir.open(copy).config.graphs == ModelDir.open(source).config.graphs
    (copy / "marker").write_text("plans would be here")
    assert (writable_copy(source, copy) / "marker").exists()  # same graphs: kept
    config = json.loads((source / "model.json").read_text())
    config["graphs"]["dense"]["sha256"] = sha256_of(source / "box_head.onnx")
    shutil.copyfile(source / "box_head.onnx", source / "dense.onnx")
    (source / "model.json").write_text(json.dumps(config))
    assert not (writable_copy(source, copy) / "marker").exists()  # another model: rebuilt


# -- profiles --------------------------------------------------------------------------------


def test_dense_profile_covers_every_photo_of_the_resize_rule():
    low, opt, high = dense_range(R50_CONFIG.transform)
    assert low == (1, 3, 32, 32) and opt == (1, 3, 800, 1088) and high == (1, 3, 1344, 1344)
    from engine.preprocess import resized_size

    for h, w in [(480, 640), (640, 480), (1, 4000), (4000, 1), (1333, 1333), (10000, 7000), (17, 23)]:
        rh, rw = resized_size(h, w, 800, 1333)
        ph, pw = -(-max(rh, 1) // 32) * 32, -(-max(rw, 1) // 32) * 32
        assert low[2] <= ph <= high[2] and low[3] <= pw <= high[3], (h, w)


def test_head_profiles_follow_the_dense_profile_and_the_rpn():
    shapes = profile_shapes(R50_CONFIG)
    assert feature_strides(R50_CONFIG) == {"feature_0": 4, "feature_1": 8, "feature_2": 16, "feature_3": 32}
    assert shapes["box_head"]["feature_0"] == [[1, -1, 8, 8], [1, -1, 200, 272], [1, -1, 336, 336]]
    assert shapes["box_head"]["feature_3"][2] == [1, -1, 42, 42]
    assert shapes["box_head"]["rois_2"] == [[1, 4], [250, 4], [1000, 4]]
    assert shapes["mask_head"]["rois_0"][2] == [100, 4] and shapes["mask_head"]["class_ids"] == [[4], [32], [400]]
    assert merge_shape([1, -1, 8, 8], (1, 256, -1, -1)) == (1, 256, 8, 8)
    with pytest.raises(ValueError):
        merge_shape([1, -1, 8, 8], (1, -1, -1, -1))


@pytest.mark.parametrize("size", [(240, 320), (37, 53), (900, 200), (320, 320)])
def test_profiles_contain_the_feature_shapes_the_graphs_really_make(size):
    """Run the real dense graph (CPU) and check each feature map's shape against the profile."""
    directory = ModelDir.open(DEMO)
    backend = OnnxRuntimeCpuBackend(directory, threads=1)
    config = directory.config
    from engine.preprocess import preprocess

    t = config.transform
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    tensor = preprocess(image, t.image_mean, t.image_std, t.min_size, t.max_size, t.size_divisible).tensor
    low, _, high = dense_range(t)
    assert all(lo <= s <= hi for s, lo, hi in zip(tensor.shape, low, high))
    dense = backend.run_dense(tensor)
    shapes = profile_shapes(config)["box_head"]
    strides = feature_strides(config)
    for name, value in zip(config.features, dense.features):
        shape = value.shape()
        mn, _, mx = shapes[name]
        assert all(a <= s <= b for s, a, b in zip(shape[2:], mn[2:], mx[2:])), (name, shape)
        assert shape[2:] == [tensor.shape[2] // strides[name], tensor.shape[3] // strides[name]]


# -- chunked head runs --------------------------------------------------------------------


def test_run_in_chunks_restores_the_level_order_of_a_single_run():
    def run(rois, ids):  # echo each row's box and class, like a head would per row
        return np.concatenate(rois), ids.copy()

    rng = np.random.default_rng(0)
    rois = [rng.random((n, 4)).astype(np.float32) for n in (7, 1, 3, 12)]
    ids = np.arange(23, dtype=np.int64)
    boxes, out_ids = run_in_chunks(rois, [2, 2, 5, 3], run, ids)
    np.testing.assert_array_equal(boxes, np.concatenate(rois))
    np.testing.assert_array_equal(out_ids, ids)
    calls = []
    run_in_chunks(rois, [100] * 4, lambda r, i: calls.append(1) or (np.concatenate(r), i), ids)
    assert calls == [1]  # within the limits: one plain run


def test_chunked_heads_give_the_same_detections(demo_model_dir):
    engine = Engine.load(demo_model_dir, backend="onnxruntime-cpu")
    image = photo("coffee")
    whole = engine.predict(image, score_threshold=0.05)
    backend = engine.backend
    box, mask = backend.run_box_head, backend.run_mask_head
    backend.run_box_head = lambda f, r: run_in_chunks(r, [3] * len(r), lambda c, _: box(f, c))
    backend.run_mask_head = lambda f, r, ids: run_in_chunks(r, [2] * len(r), lambda c, i: (mask(f, c, i),), ids)[0]
    chunked = engine.predict(image, score_threshold=0.05)
    assert len(whole) > 5 and len(chunked) == len(whole)
    np.testing.assert_allclose(chunked.boxes, whole.boxes, atol=1e-3)
    assert (chunked.masks != whole.masks).mean() < 1e-4


# -- the onnxruntime-cuda flow, bound to CPU memory --------------------------------------------


class IOBindingOnCpu(OnnxRuntimeCudaBackend):
    """The onnxruntime-cuda backend with its device outputs bound to the CPU: the same
    IOBinding flow (features as OrtValues fed from one session to the next)."""

    name = "iobinding-cpu"
    device_type = "cpu"
    provider = "CPUExecutionProvider"

    def _providers(self, device_id):
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


# -- the engine's release hook -----------------------------------------------------------------


def test_engine_releases_the_dense_outputs_once_on_every_path(small_model_dir):
    directory = ModelDir.open(small_model_dir)

    class Spy(OnnxRuntimeCpuBackend):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.released, self.fail = [], False

        def release(self, dense):
            self.released.append(dense)

        def run_mask_head(self, *a):
            if self.fail:
                raise RuntimeError("simulated mask head failure")
            return super().run_mask_head(*a)

    spy = Spy(directory)
    engine = Engine(directory, spy)
    engine.predict(photo("astronaut"), score_threshold=0.05)
    assert len(spy.released) == 1
    engine.predict(photo("astronaut"), score_threshold=1.0)  # no detections: early return
    assert len(spy.released) == 2
    spy.fail = True
    with pytest.raises(RuntimeError, match="simulated"):
        engine.predict(photo("astronaut"), score_threshold=0.05)
    assert len(spy.released) == 3


# -- the CUDA layer without a GPU ---------------------------------------------------------------


def test_cuda_errors_are_named():
    if cuda_memory.cudart is None:
        pytest.skip("cuda-python is not installed here")
    err = cuda_memory.cudart.cudaError_t.cudaErrorMemoryAllocation
    with pytest.raises(cuda_memory.CudaError, match="cudaMalloc failed: cudaErrorMemoryAllocation") as info:
        cuda_memory.check((err, None), "cudaMalloc")
    assert info.value.code == "cudaErrorMemoryAllocation" and isinstance(info.value, RuntimeError)
    success = cuda_memory.cudart.cudaError_t.cudaSuccess
    assert cuda_memory.check((success, 7), "x") == 7 and cuda_memory.check((success,), "x") is None
    assert cuda_memory.check((success, 1, 2), "x") == (1, 2)


def test_no_cuda_device_gives_a_reason_and_allocation_fails_cleanly():
    reason = cuda_memory.device_reason()
    if reason is None:
        pytest.skip("this machine has a CUDA device (tests/test_gpu_backends.py covers it)")
    assert "cuda" in reason.lower()
    with pytest.raises(cuda_memory.CudaError):
        cuda_memory.DeviceBuffer(1024)


def test_build_engine_tensorrt_without_gpu_fails_with_one_line(tmp_path):
    from exporter.tensorrt_build import environment_reason

    if environment_reason() is None:
        pytest.skip("TensorRT and a GPU are here: the failure path is not reachable")
    for extra in ([], ["--from-model-dir", str(DEMO)], ["--fp32"]):
        result = subprocess.run([sys.executable, "build_engine.py", "--tensorrt", *extra, "--output", str(tmp_path / "t")],
                                cwd=ROOT, capture_output=True, text=True)
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: --tensorrt needs TensorRT and an NVIDIA GPU: "), result.stderr
        assert "Traceback" not in result.stderr and not (tmp_path / "t").exists()
    result = subprocess.run([sys.executable, "build_engine.py", "--fp16", "--output", str(tmp_path / "t")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "go with --tensorrt" in result.stderr

"""GPU backends against the CPU backend, on a CUDA machine; skipped (with the reason) elsewhere.

    python -m pytest -q tests/test_gpu_backends.py -rs      # one command on any CUDA machine

- the CUDA buffer layer (allocate, pinned memory, async copies on a stream, free): needs
  only a CUDA device and cuda-python;
- onnxruntime-cuda vs onnxruntime-cpu, FP32: the CPU parity criteria (>= 98% of detections
  matched both ways with the same class and box IoU >= 0.99, scores within 1e-3, mean mask
  IoU >= 0.98);
- TensorRT FP32 plans: the same criteria; TensorRT FP16 plans: >= 95% of detections matched
  with box IoU >= 0.9 and mask IoU >= 0.9 (both ways; a detection within 0.02 of the score
  threshold may be missing on the other side, since FP16 can move it across);
- several threads predicting at once give the sequential results (slots / IOBindings).

The TensorRT plans are built here (minutes) into writable copies of the seeded random R50
model directory.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from helpers import mask_iou, match_detections, photo
from engine import Engine, cuda_memory
from engine.backends import available_backends

STATUS = available_backends()
CUDA_REASON = cuda_memory.device_reason()
needs_cuda = pytest.mark.skipif(CUDA_REASON is not None, reason=f"no CUDA here: {CUDA_REASON}")
needs_ort_cuda = pytest.mark.skipif(STATUS["onnxruntime-cuda"] is not None,
                                    reason=f"onnxruntime-cuda unavailable: {STATUS['onnxruntime-cuda']}")
needs_tensorrt = pytest.mark.skipif(STATUS["tensorrt"] is not None, reason=f"tensorrt unavailable: {STATUS['tensorrt']}")
ARCH = "maskrcnn_resnet50_fpn"
CASES = (("astronaut", 0.5, 100), ("coffee", 0.3, 100), ("chelsea", 0.05, 300))


def as_ref(det) -> dict:
    return {"boxes": det.boxes, "scores": det.scores, "labels": det.class_ids, "masks": det.masks}


def assert_fp32_parity(ref, det) -> None:
    """tests/test_parity.py's criteria, the CPU backend as the reference."""
    pairs, fraction = match_detections(as_ref(ref), det)
    assert fraction >= 0.98, f"only {fraction:.3f} of {len(ref)} cpu / {len(det)} gpu detections matched"
    if pairs:
        assert max(abs(float(ref.scores[i]) - float(det.scores[j])) for i, j in pairs) <= 1e-3
        assert np.mean([mask_iou(ref.masks[i], det.masks[j]) for i, j in pairs]) >= 0.98


def fp16_agreement(ref_low, det_low, threshold: float, margin: float = 0.02) -> float:
    """Fraction of detections scoring >= threshold + margin on either side that the other
    side (run at threshold - margin) has with the same class, box IoU >= 0.9, mask IoU >= 0.9."""
    def matched(a, b) -> tuple[int, int]:
        required = a.scores >= threshold + margin
        pairs, _ = match_detections(as_ref(a), b, iou_min=0.9)
        good = sum(1 for i, j in pairs if required[i] and mask_iou(a.masks[i], b.masks[j]) >= 0.9)
        return good, int(required.sum())

    good_a, need_a = matched(ref_low, det_low)
    good_b, need_b = matched(det_low, ref_low)
    return 1.0 if need_a + need_b == 0 else (good_a + good_b) / (need_a + need_b)


@pytest.fixture(scope="module")
def cpu_engine(r50_model_dirs):
    return Engine.load(r50_model_dirs(ARCH), backend="onnxruntime-cpu")


@pytest.fixture(scope="module")
def plans(r50_model_dirs, tmp_path_factory):
    """Model directories with TensorRT plans built here: {"fp32": dir, "fp16": dir}."""
    from exporter.tensorrt_build import build_plans, writable_copy

    cache = {}

    def get(precision):
        if precision not in cache:
            target = writable_copy(r50_model_dirs(ARCH), tmp_path_factory.mktemp("plans") / precision)
            build_plans(target, precision, slots=2)
            cache[precision] = target
        return cache[precision]

    return get


# -- the CUDA buffer layer ---------------------------------------------------------------------


@needs_cuda
def test_cuda_buffers_round_trip_on_a_stream():
    data = np.arange(1 << 20, dtype=np.float32)
    with cuda_memory.Stream() as stream, cuda_memory.DeviceBuffer(data.nbytes) as device, \
            cuda_memory.PinnedBuffer(data.nbytes) as up, cuda_memory.PinnedBuffer(data.nbytes) as down:
        np.copyto(up.array(data.shape, np.float32), data)
        cuda_memory.copy_to_device(device, up, data.nbytes, stream)
        cuda_memory.copy_to_host(down, device, data.nbytes, stream)
        stream.synchronize()
        np.testing.assert_array_equal(down.array(data.shape, np.float32), data)
        with pytest.raises(ValueError, match="overruns"):
            cuda_memory.copy_to_host(down, device, data.nbytes + 4, stream)
    assert device.ptr == 0 and up.ptr == 0  # freed on leaving the block
    device.close()  # closing twice is harmless


@needs_cuda
def test_cuda_allocation_failure_is_a_named_error():
    with pytest.raises(cuda_memory.CudaError, match="cudaErrorMemoryAllocation"):
        cuda_memory.DeviceBuffer(1 << 60)
    info = cuda_memory.device_info(0)
    assert info["name"] and "." in info["compute_capability"]


# -- onnxruntime-cuda ----------------------------------------------------------------------------


@needs_ort_cuda
def test_onnxruntime_cuda_fp32_matches_the_cpu(cpu_engine, r50_model_dirs):
    gpu = Engine.load(r50_model_dirs(ARCH), backend="onnxruntime-cuda")
    total = 0
    for name, threshold, max_det in CASES:
        ref = cpu_engine.predict(photo(name), score_threshold=threshold, max_detections=max_det)
        det = gpu.predict(photo(name), score_threshold=threshold, max_detections=max_det)
        assert_fp32_parity(ref, det)
        total += len(det)
    assert total > 20


# -- TensorRT ---------------------------------------------------------------------------------------


@needs_tensorrt
def test_tensorrt_fp32_matches_the_cpu(cpu_engine, plans):
    gpu = Engine.load(plans("fp32"), backend="tensorrt")
    for name, threshold, max_det in CASES:  # chelsea at 0.05 / 300: mask head runs in chunks
        ref = cpu_engine.predict(photo(name), score_threshold=threshold, max_detections=max_det)
        det = gpu.predict(photo(name), score_threshold=threshold, max_detections=max_det)
        assert_fp32_parity(ref, det)


@needs_tensorrt
def test_tensorrt_fp16_matches_the_cpu(cpu_engine, plans):
    gpu = Engine.load(plans("fp16"), backend="tensorrt")
    assert gpu.backend.precision == "fp16"
    margin = 0.02
    for name, threshold, _ in CASES:
        ref = cpu_engine.predict(photo(name), score_threshold=threshold - margin)
        det = gpu.predict(photo(name), score_threshold=threshold - margin)
        agreement = fp16_agreement(ref, det, threshold, margin)
        assert agreement >= 0.95, f"{name}: only {agreement:.3f} of detections agree (cpu {len(ref)}, fp16 {len(det)})"


@needs_tensorrt
def test_tensorrt_takes_any_photo_size(plans):
    import cv2

    gpu = Engine.load(plans("fp16"), backend="tensorrt")
    for h, w in [(37, 53), (1200, 300), (2000, 1500), (480, 640)]:
        image = np.ascontiguousarray(cv2.resize(photo("coffee"), (w, h)))
        det = gpu.predict(image, score_threshold=0.3)
        assert det.masks.shape[1:] == (h, w)


# -- concurrency ---------------------------------------------------------------------------------------


def _concurrent_equals_sequential(engine, threads: int = 4) -> None:
    names = ("astronaut", "coffee", "chelsea", "motorcycle")
    sequential = {n: engine.predict(photo(n), score_threshold=0.3) for n in names}
    results, errors = {}, []

    def work(k):
        try:
            for n in names[k:] + names[:k]:
                results[(k, n)] = engine.predict(photo(n), score_threshold=0.3)
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors
    for (k, n), det in results.items():
        _, fraction = match_detections(as_ref(sequential[n]), det)
        assert fraction >= 0.98, f"thread {k}, {n}: {fraction:.3f} matched"


@needs_tensorrt
def test_tensorrt_concurrent_requests_do_not_mix(plans):
    engine = Engine.load(plans("fp16"), backend="tensorrt")
    _concurrent_equals_sequential(engine)
    assert engine.backend._free.qsize() == len(engine.backend._slots)  # every slot came back


@needs_ort_cuda
def test_onnxruntime_cuda_concurrent_requests_do_not_mix(r50_model_dirs):
    _concurrent_equals_sequential(Engine.load(r50_model_dirs(ARCH), backend="onnxruntime-cuda"))

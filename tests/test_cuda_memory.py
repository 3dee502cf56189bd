"""engine/cuda_memory.py without a GPU: CUDA errors are named, allocation fails cleanly."""

from __future__ import annotations

import pytest

from engine import cuda_memory


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

"""CUDA memory for the GPU backends, through cuda-python's runtime API (no torch, no pycuda).

    check(result)          every CUDA call goes through it: cuda-python returns (error, *values);
                           a non-success error becomes a CudaError that names it
    DeviceBuffer(nbytes)   cudaMalloc'd memory, freed by close(), `with` or garbage collection
    PinnedBuffer(nbytes)   page-locked host memory (cudaMallocHost), viewable as a numpy array,
                           so host<->device copies can be truly asynchronous
    Stream()               a non-blocking CUDA stream; copies and TensorRT executions queue on it
    copy_to_device / copy_to_host   async copies on a stream (pinned host memory on the host side)

Importing this module never fails: without cuda-python, `cudart` is None and
`device_reason()` says why no CUDA device can be used.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from .errors import EngineError

try:  # cuda-python >= 12.6 layout
    from cuda.bindings import runtime as cudart
except ImportError:  # pragma: no cover - older cuda-python, or none
    try:
        from cuda import cudart  # cuda-python < 12.6
    except ImportError:
        cudart = None


class CudaError(EngineError, RuntimeError):
    """A CUDA runtime call failed; `code` is the cudaError_t name, e.g. cudaErrorMemoryAllocation."""

    def __init__(self, call: str, code: str, message: str):
        super().__init__(f"{call} failed: {code} ({message})")
        self.call = call
        self.code = code


def _error_text(err) -> tuple[str, str]:
    name = getattr(err, "name", None) or str(err)
    try:
        _, text = cudart.cudaGetErrorString(err)
        message = text.decode() if isinstance(text, bytes) else str(text)
    except Exception:  # a driver-API CUresult, or the runtime itself is broken
        message = "no description"
    return name, message


def check(result, call: str = "CUDA call"):
    """Unpack a cuda-python result tuple (error, *values).

    Raises CudaError naming the error unless it is cudaSuccess; returns None, the single
    value, or the tuple of values.
    """
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if int(err) != 0:  # cudaSuccess (and CUDA_SUCCESS) are 0
        raise CudaError(call, *_error_text(err))
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _require() -> None:
    if cudart is None:
        raise CudaError("import cuda.bindings.runtime", "ImportError", "cuda-python is not installed")


_probe_lock = threading.Lock()
_probe_result: list = []


def device_reason() -> str | None:
    """None when a CUDA device can be used here, else why not (cached: probing is cheap but
    not free, and the answer does not change while the process runs)."""
    with _probe_lock:
        if not _probe_result:
            if cudart is None:
                reason = "cuda-python is not installed (pip install cuda-python)"
            else:
                try:
                    count = check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
                    reason = None if count > 0 else "no CUDA device (cudaGetDeviceCount: 0)"
                except CudaError as exc:
                    reason = f"no CUDA device (cudaGetDeviceCount: {exc.code})"
            _probe_result.append(reason)
        return _probe_result[0]


def device_info(device: int = 0) -> dict:
    """{"name", "compute_capability" "M.m", "total_memory_bytes"} of a CUDA device."""
    _require()
    props = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    return {
        "name": str(name).strip(),
        "compute_capability": f"{props.major}.{props.minor}",
        "total_memory_bytes": int(props.totalGlobalMem),
    }


class _Owned:
    """Frees its CUDA allocation exactly once: close(), `with`, or garbage collection."""

    ptr: int = 0
    nbytes: int = 0

    def _free(self, ptr: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        ptr, self.ptr = self.ptr, 0
        if ptr and cudart is not None:
            self._free(ptr)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # at interpreter exit CUDA may already be torn down
            pass


class DeviceBuffer(_Owned):
    """`nbytes` of device memory; `ptr` is its address (an int, what TensorRT binds)."""

    def __init__(self, nbytes: int):
        _require()
        self.nbytes = max(int(nbytes), 1)  # cudaMalloc(0) returns no usable address
        self.ptr = int(check(cudart.cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    def _free(self, ptr: int) -> None:
        check(cudart.cudaFree(ptr), "cudaFree")


class PinnedBuffer(_Owned):
    """`nbytes` of page-locked host memory; `array(shape, dtype)` views its start as numpy."""

    def __init__(self, nbytes: int):
        _require()
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(cudart.cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})"))
        self._bytes = (ctypes.c_ubyte * self.nbytes).from_address(self.ptr)

    def array(self, shape, dtype) -> np.ndarray:
        """A numpy view of the first prod(shape) elements (valid while the buffer is open)."""
        if not self.ptr:
            raise ValueError("pinned buffer is closed")
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"{tuple(shape)} {dtype} needs {count * dtype.itemsize} bytes; buffer has {self.nbytes}")
        return np.frombuffer(self._bytes, dtype=dtype, count=count).reshape(shape)

    def _free(self, ptr: int) -> None:
        self._bytes = None
        check(cudart.cudaFreeHost(ptr), "cudaFreeHost")


class Stream(_Owned):
    """A non-blocking CUDA stream (does not serialise with the legacy default stream);
    destroyed by close(), `with` or garbage collection like the buffers."""

    def __init__(self):
        _require()
        self._stream = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        self.ptr = int(self._stream)

    @property
    def handle(self) -> int:
        """The cudaStream_t as an int, what TensorRT's execute_async_v3 takes (0 once closed)."""
        return self.ptr

    @property
    def raw(self):
        """The cuda-python cudaStream_t object."""
        if not self.ptr:
            raise ValueError("stream is closed")
        return self._stream

    def synchronize(self) -> None:
        check(cudart.cudaStreamSynchronize(self.raw), "cudaStreamSynchronize")

    def _free(self, ptr: int) -> None:
        stream, self._stream = self._stream, None
        check(cudart.cudaStreamDestroy(stream), "cudaStreamDestroy")


def copy_to_device(dst: DeviceBuffer, src: PinnedBuffer, nbytes: int, stream: Stream) -> None:
    """Queue a host-to-device copy of the first `nbytes` on `stream` (returns at once)."""
    _check_size(nbytes, dst, src)
    check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                                 stream.raw), "cudaMemcpyAsync(host to device)")


def copy_to_host(dst: PinnedBuffer, src: DeviceBuffer, nbytes: int, stream: Stream) -> None:
    """Queue a device-to-host copy of the first `nbytes` on `stream`; read `dst` only after
    `stream.synchronize()`."""
    _check_size(nbytes, dst, src)
    check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost,
                                 stream.raw), "cudaMemcpyAsync(device to host)")


def _check_size(nbytes: int, *buffers) -> None:
    for buffer in buffers:
        if not buffer.ptr:
            raise ValueError(f"{type(buffer).__name__} is closed")
        if nbytes > buffer.nbytes:
            raise ValueError(f"copy of {nbytes} bytes overruns a {buffer.nbytes}-byte {type(buffer).__name__}")

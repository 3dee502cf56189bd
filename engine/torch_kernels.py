"""torch's CPU results where ties decide which boxes survive: torch.topk's and torch.sort's
order among equal values, and torch.sigmoid's float32 rounding (engine/native/torch_kernels.cpp
says why each matters and how it is reproduced).

    topk_indices(values, k)    -> int64 (k,)  torch.topk(values, k).indices
    sort_descending(values)    -> int64 (n,)  torch.sort(values, descending=True).indices
    sigmoid(values)            -> float32     torch.sigmoid(values)

values: 1-D float32. A C++ library built when the package is installed (setup.py; optional,
like the native RoIAlign). Without it `available()` is False and the same functions fall
back to numpy: equal values then keep index order and about one sigmoid in six differs in
the last bit, so a model whose scores tie can keep a different one of two overlapping boxes.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from . import native
from .environment import ATEN_CPU_CAPABILITY

_LIBRARY = "_torch_kernels"  # setup.py's Extension("engine._torch_kernels")
_FLOATS = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_INDICES = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")

# ATen runs SLEEF's expf on blocks of two vector registers: 2 x 16 floats with its AVX-512
# kernels, 2 x 8 with AVX2; its default kernels call std::exp throughout (block 0).
_SIGMOID_BLOCKS = {"avx512": 32, "avx2": 16, "default": 0}
_AVX512_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}  # what ATen's AVX-512 kernels need


@lru_cache(maxsize=1)
def _library():
    library = native.load(_LIBRARY)
    if library is None:
        return None
    i64 = ctypes.c_int64
    library.topk_order.argtypes = [_FLOATS, i64, i64, _INDICES]
    library.sort_descending_order.argtypes = [_FLOATS, i64, _INDICES]
    library.sigmoid.argtypes = [_FLOATS, i64, i64, _FLOATS]
    for function in (library.topk_order, library.sort_descending_order, library.sigmoid):
        function.restype = None
    return library


def available() -> bool:
    """Whether the native library was built with this install."""
    return _library() is not None


@lru_cache(maxsize=1)
def aten_cpu_capability() -> str:
    """The kernel family torch picks on this CPU: "avx512", "avx2" or "default"
    (ATEN_CPU_CAPABILITY overrides it, as it does for torch)."""
    forced = os.environ.get(ATEN_CPU_CAPABILITY, "").lower()
    if forced in _SIGMOID_BLOCKS:
        return forced
    try:
        flags = set()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return "avx2"
    if _AVX512_FLAGS <= flags:
        return "avx512"
    return "avx2" if {"avx2", "fma"} <= flags else "default"


def topk_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first, equal values in torch.topk's order."""
    values = np.ascontiguousarray(values, np.float32)
    k = min(int(k), values.shape[0])
    library = _library()
    if library is None:  # a full stable sort: argpartition would pick among values tied at the k-th arbitrarily
        return np.argsort(-values, kind="stable")[:k]
    out = np.empty(k, np.int64)
    library.topk_order(values, values.shape[0], k, out)
    return out


def sort_descending(values: np.ndarray) -> np.ndarray:
    """Indices that sort `values` largest first, equal values in torch.sort's order."""
    values = np.ascontiguousarray(values, np.float32)
    library = _library()
    if library is None:
        return np.argsort(-values, kind="stable")
    out = np.empty(values.shape[0], np.int64)
    library.sort_descending_order(values, values.shape[0], out)
    return out


def sigmoid(values: np.ndarray) -> np.ndarray:
    """torch.sigmoid of a 1-D float32 array, to the bit where the library is built."""
    values = np.ascontiguousarray(values, np.float32)
    library = _library()
    if library is None:
        return (np.float32(1) / (np.float32(1) + np.exp(-values))).astype(np.float32)
    out = np.empty_like(values)
    library.sigmoid(values, values.shape[0], _SIGMOID_BLOCKS[aten_cpu_capability()], out)
    return out

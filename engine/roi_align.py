"""RoIAlign in native code, for the CPU backends: torchvision's roi_align (multi-level, as
MultiScaleRoIAlign pools once the engine has assigned each RoI its level) at memory speed.

The head graphs' own RoiAlign (ONNX Runtime's and OpenVINO's) took most of the box head's
time for its 1000 proposals; this one computes the same numbers (within float rounding)
from channels-last (NHWC) feature maps, which OpenVINO's dense graph writes at no extra
cost, with vector instructions, in a small fraction of that time (engine/native/roi_align.c
says how; the figures are in benchmarks/results/FIGURES.md). It is a C library built when
the package is installed (setup.py; optional: without a C compiler the install still
succeeds, `available()` is False, and the backends keep the graphs' own RoiAlign).

    pool_levels(features, rois, scales, output_size, sampling_ratio) -> (R, C, PH, PW) float32

features: per pooled level, (1, Hj, Wj, C) float32 (one image, NHWC); rois: per level (Rj, 4)
float32 (x1, y1, x2, y2) in image pixels; scales: feature pixels per image pixel. Rows come
back in level order (all of level 0, then level 1, ...), like torch.cat of each level's
roi_align.
"""

from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from . import native

_LIBRARY = "_roi_align"  # setup.py's Extension("engine._roi_align")
_FLOATS = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
_NCHW_F32, _NHWC_F32, _NHWC_U8 = 0, 1, 2  # roi_align.c's enum layout


@lru_cache(maxsize=1)
def _library_functions():
    """The built C library's (roi_align_nhwc, nchw_to_nhwc), or None where the install had no
    compiler."""
    library = native.load(_LIBRARY)
    if library is None:
        return None
    i64 = ctypes.c_int64
    pool = library.roi_align_nhwc
    pool.argtypes = [_FLOATS, i64, i64, i64, _FLOATS, ctypes.c_float, i64, i64, i64, ctypes.c_int,
                     ctypes.c_int, ctypes.c_float, ctypes.c_float, i64, i64, ctypes.c_void_p]
    pool.restype = ctypes.c_int
    transpose = library.nchw_to_nhwc
    transpose.argtypes = [ctypes.c_void_p, i64, i64, i64, i64, ctypes.c_void_p]
    transpose.restype = None
    return pool, transpose



def available() -> bool:
    """Whether the native RoIAlign was built with this install."""
    return _library_functions() is not None


class RoIAligner:
    """Multi-level RoIAlign on `threads` threads, each taking a range of the RoIs (ctypes
    releases the GIL for the call). Safe to share between threads."""

    def __init__(self, threads: int = 1):
        if not available():
            raise RuntimeError("the native RoIAlign is not built (no C compiler when the package was installed)")
        self.threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self.threads - 1, "roi-align") if self.threads > 1 else None

    def pool_levels(self, features, rois, scales, output_size, sampling_ratio: int, aligned: bool = False,
                    out: np.ndarray | None = None, channels_last: bool = False,
                    quantize: tuple[float, float] | None = None) -> np.ndarray:
        """See the module docstring. output_size: (PH, PW). channels_last: the result is
        (R, PH, PW, C) instead, which saves a transpose (a third of the time) where the
        consumer takes it. quantize: (low, high), with channels_last: the result is uint8,
        each value quantized to 256 levels over [low, high] as OpenVINO's FakeQuantize does
        (round((x - low) * 255 / (high - low)), clamped), for a consumer whose first layer is
        INT8. out: where to write the result (C-contiguous, of that shape and dtype), e.g. a
        runtime's input tensor: a fresh array of that size per call costs page faults, which
        on a VM cost more than the pooling."""
        fn = _library_functions()[0]
        ph, pw = (int(s) for s in output_size)
        channels = {int(f.shape[-1]) for f in features}
        if len(channels) != 1 or any(f.ndim != 4 or f.shape[0] != 1 for f in features):
            raise ValueError(f"features must be (1, H, W, C) maps with one C, got {[f.shape for f in features]}")
        (c,) = channels
        counts = [int(r.shape[0]) for r in rois]
        if quantize is not None and not channels_last:
            raise ValueError("quantize needs channels_last")
        shape = (sum(counts), ph, pw, c) if channels_last else (sum(counts), c, ph, pw)
        dtype = np.dtype(np.uint8 if quantize is not None else np.float32)
        layout = (_NHWC_U8 if quantize is not None else _NHWC_F32) if channels_last else _NCHW_F32
        low, inv = 0.0, 0.0
        if quantize is not None:
            low, high = (float(v) for v in quantize)
            if not high > low:
                raise ValueError(f"quantize: (low, high) with high > low, got {quantize}")
            inv = 255.0 / (high - low)
        if out is None:
            out = np.empty(shape, dtype)
        elif out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous {dtype} array of shape {shape}, got {out.dtype} {out.shape}")
        # (feature, rois, scale, first output row, RoI range) per piece of work: each level's
        # RoIs cut into `threads` ranges, so both cores work on every level
        pieces, start = [], 0
        for feature, level_rois, scale, count in zip(features, rois, scales, counts):
            if count:
                feature = np.ascontiguousarray(feature, np.float32)
                level_rois = np.ascontiguousarray(level_rois, np.float32).reshape(count, 4)
                bounds = np.linspace(0, count, min(self.threads, count) + 1).astype(int)
                for thread, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
                    pieces.append((thread, feature, level_rois, float(scale), start, int(a), int(b)))
            start += count

        def run(thread):
            for owner, feature, level_rois, scale, first, a, b in pieces:
                if owner != thread:
                    continue
                _, h, w, _ = feature.shape
                target = out[first:]
                if fn(feature, h, w, c, level_rois, scale, ph, pw, int(sampling_ratio), int(aligned), layout, low, inv,
                      a, b, target.ctypes.data) != 0:
                    raise MemoryError("native RoIAlign: out of memory")

        self._on_every_thread(run)
        return out

    def channels_last(self, feature: np.ndarray, out: np.ndarray) -> np.ndarray:
        """feature (1, C, H, W) float32 (NCHW) copied channels-last into the start of `out`
        (a C-contiguous float32 buffer of at least C * H * W values): returns that (1, H, W, C)
        view. For maps a runtime can only write NCHW at no cost."""
        _, c, h, w = feature.shape
        feature = np.ascontiguousarray(feature, np.float32)
        if out.dtype != np.float32 or not out.flags.c_contiguous or out.size < c * h * w:
            raise ValueError(f"out must be a C-contiguous float32 buffer of at least {c * h * w} values")
        view = out.reshape(-1)[: c * h * w].reshape(1, h, w, c)
        bounds = np.linspace(0, h * w, self.threads + 1).astype(int)
        transpose = _library_functions()[1]

        def run(thread):
            transpose(feature.ctypes.data, c, h * w, int(bounds[thread]), int(bounds[thread + 1]), view.ctypes.data)

        self._on_every_thread(run)
        return view

    def _on_every_thread(self, run) -> None:
        """run(0) here and run(t) for t in 1..threads-1 on the pool, then wait for all."""
        futures = [self._pool.submit(run, t) for t in range(1, self.threads)] if self._pool else []
        run(0)
        for future in futures:
            future.result()

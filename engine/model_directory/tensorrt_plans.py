"""TensorRT plans in a model directory: their optimization-profile shapes, and whether they can
run here. Pure Python (no tensorrt import), so it is tested anywhere. model.json's section is
engine.model_directory.config.TensorRTConfig, checked at load.

model.json gains, once `build_engine.py --tensorrt` has run on a GPU:

    "tensorrt": {
      "precision": "fp16",                      fp32 | fp16 | int8
      "tensorrt_version": "10.8.0.43",
      "gpu_name": "NVIDIA A10G", "compute_capability": "8.6",
      "profiles_per_plan": 2,                   identical profiles: one per concurrent request
      "plans": {"dense": {"file": "dense.fp16.plan", "sha256": "..."}, "box_head": ..., "mask_head": ...},
      "profiles": {"dense": {"images": [[min], [opt], [max]]}, ...}    dynamic dims as built
    }

A plan only runs on the TensorRT version and GPU architecture (compute capability) it was
built with; `incompatibility()` says why a plan cannot be used here, and the `auto` backend
then falls back to onnxruntime-cuda with a logged warning.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ModelConfig, TensorRTConfig, TransformConfig

# Rows per pyramid level the mask head plan takes at most; more detections run in chunks.
MASK_ROWS_PER_LEVEL = 100


def _round_up(value: float, divisor: int) -> int:
    return int(math.ceil(value / divisor)) * divisor


def dense_range(transform: TransformConfig) -> tuple[tuple, tuple, tuple]:
    """(min, opt, max) shapes of the dense graph's `images` (1, 3, H, W) for any photo.

    The resize rule puts the short side at most at min_size and the long side at most at
    max_size, in either orientation, and padding rounds each side up to size_divisible, so
    H and W each lie in [size_divisible, roundup(max_size)] (a very elongated photo can have
    a 1-pixel short side). opt is a 4:3 landscape photo, the commonest: 800x1088 for R50.
    """
    d = transform.size_divisible
    low, high = d, _round_up(transform.max_size, d)
    short = transform.min_size
    opt_h = min(_round_up(short, d), high)
    opt_w = min(_round_up(min(int(short * 4 / 3), transform.max_size), d), high)
    return (1, 3, low, low), (1, 3, opt_h, opt_w), (1, 3, high, high)


def feature_strides(config: ModelConfig) -> dict[str, int]:
    """Stride of each pooled feature map (model.json "features" order), from the RoIAlign
    scales of the heads that pool it (scale 1/4 -> stride 4)."""
    strides: dict[str, int] = {}
    for pool in (config.box_head, config.mask_head):
        for index, scale in zip(pool.feature_indices, pool.scales):
            strides[config.features[index]] = int(round(1.0 / scale))
    missing = [n for n in config.features if n not in strides]
    if missing:
        raise ValueError(f"no RoIAlign scale for features {missing}")
    return strides


def _feature_dims(side: int, stride: int) -> int:
    # stride-2 convolutions with padding round up (ceil), and padded sides divide exactly
    return int(math.ceil(side / stride))


def profile_shapes(config: ModelConfig, mask_rows_per_level: int = MASK_ROWS_PER_LEVEL) -> dict[str, dict[str, list]]:
    """Optimization-profile shapes for every dynamic input of the three graphs.

    Returns {graph: {input: [min, opt, max]}}, each a list of dims; -1 marks a dim the
    builder takes from the ONNX graph (static, e.g. feature channels). Head inputs follow
    the dense profile: feature_<n> (1, C, H/s, W/s); rois_<j> (Rj, 4) with 1 <= Rj <= the RPN's
    post_nms_top_n (box head; every proposal may fall on one level) or mask_rows_per_level
    (mask head; the engine chunks larger requests); class_ids (sum Rj,).
    """
    lo, opt, hi = dense_range(config.transform)
    strides = feature_strides(config)
    features = {
        name: [[1, -1, _feature_dims(shape[2], s), _feature_dims(shape[3], s)] for shape in (lo, opt, hi)]
        for name, s in strides.items()
    }
    result = {"dense": {"images": [list(lo), list(opt), list(hi)]}}
    proposals = config.rpn.post_nms_top_n
    for graph, pool, rows in (("box_head", config.box_head, proposals), ("mask_head", config.mask_head, int(mask_rows_per_level))):
        levels = len(pool.scales)
        rows = max(rows, 1)
        opt_rows = max(1, -(-rows // levels)) if graph == "box_head" else max(1, min(rows, 8))
        shapes = {name: [list(d) for d in dims] for name, dims in features.items()}
        for j in range(levels):
            shapes[f"rois_{j}"] = [[1, 4], [opt_rows, 4], [rows, 4]]
        if graph == "mask_head":
            shapes["class_ids"] = [[levels], [levels * opt_rows], [levels * rows]]
        result[graph] = shapes
    return result


def merge_shape(ours: list, declared) -> tuple:
    """Our profile dims with -1 replaced by the graph's declared static dims."""
    declared = list(declared)
    if len(declared) != len(ours):
        raise ValueError(f"profile rank {len(ours)} differs from the graph's {declared}")
    merged = []
    for mine, theirs in zip(ours, declared):
        if mine == -1:
            if theirs is None or int(theirs) < 0:
                raise ValueError(f"dimension of {declared} is dynamic but the profile does not set it")
            mine = int(theirs)
        merged.append(int(mine))
    return tuple(merged)


def incompatibility(section: TensorRTConfig, tensorrt_version: str, device: dict) -> str | None:
    """Why plans described by `section` cannot run with this TensorRT on this GPU, or None.

    A plan is tied to the TensorRT version that built it and to the GPU architecture
    (compute capability); the GPU's marketing name may differ (same architecture, other
    memory size), which TensorRT accepts.
    """
    built = f"built with TensorRT {section.tensorrt_version} for {section.gpu_name} (sm {section.compute_capability})"
    if section.tensorrt_version != tensorrt_version:
        return f"the TensorRT plans were {built}, this is TensorRT {tensorrt_version}: rebuild them here"
    if section.compute_capability != device["compute_capability"]:
        return (f"the TensorRT plans were {built}, this GPU is {device['name']} (sm {device['compute_capability']}): "
                "rebuild them here")
    return None

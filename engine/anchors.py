"""RPN anchors, as torchvision's AnchorGenerator lays them out."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def base_anchors(sizes, aspect_ratios) -> np.ndarray:
    """Zero-centred anchors (A, 4) for one level: torchvision generate_anchors, rounded."""
    scales = np.asarray(sizes, np.float32)
    ratios = np.asarray(aspect_ratios, np.float32)
    h_ratios = np.sqrt(ratios)
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return np.round(np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)).astype(np.float32)


@lru_cache(maxsize=16)
def _level_anchors(grid_hw, padded_hw, sizes, aspect_ratios) -> np.ndarray:
    gh, gw = grid_hw
    stride_h, stride_w = padded_hw[0] // gh, padded_hw[1] // gw
    shift_x = np.arange(gw, dtype=np.float32) * np.float32(stride_w)
    shift_y = np.arange(gh, dtype=np.float32) * np.float32(stride_h)
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    anchors = (shifts[:, None, :] + base_anchors(sizes, aspect_ratios)[None, :, :]).reshape(-1, 4)
    anchors.setflags(write=False)  # cached and shared between requests
    return anchors


def level_anchors(grid_hw, padded_hw, sizes, aspect_ratios) -> np.ndarray:
    """Anchors (Hg * Wg * A, 4) of one level, ordered (y, x, anchor) like the RPN head output
    after torchvision's permute_and_flatten. Strides are padded size // grid size."""
    return _level_anchors(tuple(grid_hw), tuple(padded_hw), tuple(sizes), tuple(aspect_ratios))

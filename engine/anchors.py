"""RPN anchors, laid out as torchvision's AnchorGenerator or detectron2's DefaultAnchorGenerator
does it (model.json's rpn section says which conventions: see engine.model_directory.config.RpnConfig)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def base_anchors(sizes, aspect_ratios, order: str = "ratios_outer", rounded: bool = True) -> np.ndarray:
    """Zero-centred cell anchors (A, 4) of one level, x1, y1, x2, y2.

    "ratios_outer", rounded: torchvision's generate_anchors, in float32 (h = size * sqrt(ratio),
    w = size / sqrt(ratio), halves rounded to whole pixels), one ratio's sizes after another.
    "sizes_outer", not rounded: detectron2's generate_cell_anchors, in double precision then
    float32 (w = sqrt(size^2 / ratio), h = ratio * w), one size's ratios after another.
    """
    if order == "ratios_outer":
        scales = np.asarray(sizes, np.float32)
        ratios = np.asarray(aspect_ratios, np.float32)
        h_ratios = np.sqrt(ratios)
        w_ratios = np.float32(1) / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
        halves = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
    else:
        sizes_, ratios_ = np.meshgrid(np.asarray(sizes, np.float64), np.asarray(aspect_ratios, np.float64), indexing="ij")
        ws = np.sqrt(sizes_.ravel() ** 2.0 / ratios_.ravel())
        hs = ratios_.ravel() * ws
        halves = np.stack([-ws / 2.0, -hs / 2.0, ws / 2.0, hs / 2.0], axis=1)
    return (np.round(halves) if rounded else halves).astype(np.float32)


@lru_cache(maxsize=16)
def _level_anchors(grid_hw, padded_hw, sizes, aspect_ratios, order, rounded, offset, stride) -> np.ndarray:
    gh, gw = grid_hw
    stride_h, stride_w = (stride, stride) if stride else (padded_hw[0] // gh, padded_hw[1] // gw)
    shift_x = ((np.arange(gw, dtype=np.float64) + offset) * stride_w).astype(np.float32)
    shift_y = ((np.arange(gh, dtype=np.float64) + offset) * stride_h).astype(np.float32)
    sy, sx = np.meshgrid(shift_y, shift_x, indexing="ij")
    shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], axis=1)
    cells = base_anchors(sizes, aspect_ratios, order, rounded)
    anchors = (shifts[:, None, :] + cells[None, :, :]).reshape(-1, 4)
    anchors.setflags(write=False)  # cached and shared between requests
    return anchors


def level_anchors(grid_hw, padded_hw, sizes, aspect_ratios, order: str = "ratios_outer", rounded: bool = True,
                  offset: float = 0.0, stride: int | None = None) -> np.ndarray:
    """Anchors (Hg * Wg * A, 4) of one level, ordered (y, x, anchor) like the RPN head output
    after permute_and_flatten. Cell (y, x) is shifted by ((x + offset) * stride, (y + offset) *
    stride); without a stride, padded size // grid size per axis (torchvision's rule)."""
    return _level_anchors(tuple(grid_hw), tuple(padded_hw), tuple(sizes), tuple(aspect_ratios), order, bool(rounded),
                          float(offset), int(stride) if stride else None)

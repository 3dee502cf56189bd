"""Mask pasting in numpy/OpenCV: torchvision's paste_masks_in_image, then a 0.5 threshold."""

from __future__ import annotations

import cv2
import numpy as np


def expand_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """torchvision expand_boxes: scale each box about its centre (float32)."""
    scale = np.float32(scale)
    w_half = (boxes[:, 2] - boxes[:, 0]) * np.float32(0.5) * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * np.float32(0.5) * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * np.float32(0.5)
    y_c = (boxes[:, 3] + boxes[:, 1]) * np.float32(0.5)
    return np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)


def paste_masks(mask_probs: np.ndarray, boxes: np.ndarray, image_size, threshold: float = 0.5, padding: int = 1) -> np.ndarray:
    """Paste per-box mask probabilities into full-image boolean masks.

    Args:
        mask_probs: float32 (N, M, M) probabilities in each box's frame.
        boxes: float32 (N, 4) x1, y1, x2, y2 in the target image's pixels.
        image_size: (H, W) of the target image.
    Returns:
        bool (N, H, W): pasted probability > threshold.

    As torchvision: pad the M x M mask by one zero pixel, grow the box by (M + 2) / M,
    truncate it to integers, resize the padded mask bilinearly (half-pixel centres) to the
    box size + 1 and place the part inside the image.
    """
    n = mask_probs.shape[0]
    h, w = image_size
    out = np.zeros((n, h, w), bool)
    if n == 0:
        return out
    m = mask_probs.shape[-1]
    padded = np.pad(mask_probs.astype(np.float32, copy=False), ((0, 0), (padding, padding), (padding, padding)))
    int_boxes = expand_boxes(boxes.astype(np.float32), (m + 2 * padding) / m).astype(np.int64)
    for i, (bx0, by0, bx1, by1) in enumerate(int_boxes.tolist()):
        box_w = max(int(bx1 - bx0 + 1), 1)
        box_h = max(int(by1 - by0 + 1), 1)
        x0, x1 = max(bx0, 0), min(bx1 + 1, w)
        y0, y1 = max(by0, 0), min(by1 + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        resized = cv2.resize(padded[i], (box_w, box_h), interpolation=cv2.INTER_LINEAR)
        out[i, y0:y1, x0:x1] = resized[y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0] > threshold
    return out

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


def paste_masks_aligned(mask_probs: np.ndarray, boxes: np.ndarray, image_size, resize_factor, threshold: float = 0.5) -> np.ndarray:
    """Paste per-box masks with float boxes, in the frame torchvision trains them in.

    An opt-in alternative to `paste_masks` (model.json: mask_head.paste = "aligned"). It
    departs from torchvision's inference on purpose. torchvision cuts its mask *targets*
    with roi_align(aligned=False), so cell u of an M-cell mask over [x0, x1] learns the
    ground truth at x0 + (u + 0.5) * (x1 - x0) / M + 0.5 in the network's resized frame;
    its paste, though, truncates boxes to whole pixels. Mapping each cell back to exactly
    that position (one affine warp per mask, bilinear, zero outside) removes up to a pixel
    of error, which matters for small objects. (detectron2 pastes with float boxes too.)

    Args:
        mask_probs: float32 (N, M, M); boxes: float32 (N, 4) in the target image's pixels.
        image_size: (H, W) of the target image.
        resize_factor: (fy, fx) = target size / network-frame size, per axis.
    Returns:
        bool (N, H, W).
    """
    n = mask_probs.shape[0]
    h, w = image_size
    out = np.zeros((n, h, w), bool)
    if n == 0:
        return out
    m = mask_probs.shape[-1]
    fy, fx = (float(f) for f in resize_factor)
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(np.float64).tolist()):
        sx, sy = (x1 - x0) / m, (y1 - y0) / m
        # image pixel j (centre j + 0.5) <- cell u: j = sx * u + tx
        tx = x0 + 0.5 * sx + 0.5 * fx - 0.5
        ty = y0 + 0.5 * sy + 0.5 * fy - 0.5
        wx0, wy0 = max(int(np.floor(x0 - fx)) - 1, 0), max(int(np.floor(y0 - fy)) - 1, 0)
        wx1, wy1 = min(int(np.ceil(x1 + fx)) + 1, w), min(int(np.ceil(y1 + fy)) + 1, h)
        if wx0 >= wx1 or wy0 >= wy1 or sx <= 0 or sy <= 0:
            continue
        affine = np.array([[sx, 0.0, tx - wx0], [0.0, sy, ty - wy0]])
        window = cv2.warpAffine(
            mask_probs[i].astype(np.float32, copy=False), affine, (wx1 - wx0, wy1 - wy0),
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
        )
        out[i, wy0:wy1, wx0:wx1] = window > threshold
    return out


# model.json mask_head.paste -> how the engine pastes masks ("torchvision" is the default)
PASTE_MODES = ("torchvision", "aligned")

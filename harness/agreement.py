"""How far two engines' detections agree: the same class and overlapping boxes."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of boxes a (N, 4) and b (M, 4), (x1, y1, x2, y2)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def engine_agreement(reference_engine, engine, images) -> tuple[int, int]:
    """(matched, total): the reference engine's detections scoring >= 0.5 that `engine` also
    returns with the same class and box IoU >= 0.9, and how many reference detections there
    were (e.g. FP32 against INT8 or BF16 of the same model)."""
    matched = total = 0
    for image in images:
        a = reference_engine.predict(image, score_threshold=0.5)
        b = engine.predict(image, score_threshold=0.5)
        total += len(a)
        if len(a) and len(b):
            ious = box_iou(a.boxes.astype(np.float64), b.boxes.astype(np.float64))
            ious[a.class_ids[:, None] != b.class_ids[None, :]] = 0
            matched += int((ious.max(axis=1) >= 0.9).sum())
    return matched, total

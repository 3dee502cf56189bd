"""RoI-head post-processing in numpy: FPN level assignment and torchvision's
RoIHeads.postprocess_detections (detectron2's fast_rcnn_inference, with its conventions from
model.json: the background column last, no small-box filter, the level rule's epsilon).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .backends.base import FILLER_BOX
from .box_ops import batched_nms, clip_boxes, decode_boxes, remove_small_boxes
from .model_directory.config import BoxHeadConfig, RoIPoolConfig


def assign_levels(boxes: np.ndarray, pool: RoIPoolConfig) -> np.ndarray:
    """torchvision LevelMapper: index (0-based, into pool.scales) of the level for each box.

    level = floor(canonical_level + log2(sqrt(area) / canonical_scale) + level_epsilon), or
    floor(canonical_level + log2(sqrt(area) / canonical_scale + level_epsilon)) where
    pool.level_epsilon_in_log (detectron2's assign_boxes_to_levels), clamped to the pooled
    levels, whose numbers come from the RoIAlign scales (scale 1/4 -> level 2).
    """
    scales = pool.scales
    if len(scales) == 1:
        return np.zeros(boxes.shape[0], np.int64)
    k_min = int(-np.log2(np.float32(scales[0])))
    k_max = int(-np.log2(np.float32(scales[-1])))
    s = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    epsilon = np.float32(pool.level_epsilon)
    if pool.level_epsilon_in_log:
        target = np.floor(np.float32(pool.canonical_level) + np.log2(s / np.float32(pool.canonical_scale) + epsilon))
    else:
        target = np.floor(np.float32(pool.canonical_level) + np.log2(s / np.float32(pool.canonical_scale)) + epsilon)
    return (np.clip(target, k_min, k_max).astype(np.int64) - k_min).astype(np.int64)


@dataclass(frozen=True)
class LevelSplit:
    """RoIs grouped by pyramid level, as the head graphs take them.

    rois: one float32 (Rj, 4) array per level (a filler row where a level has none).
    order: for each row of the graphs' concatenated output, the caller's box index, or -1
        for a filler row.
    """

    rois: list[np.ndarray]
    order: np.ndarray

    def restore(self, outputs: np.ndarray) -> np.ndarray:
        """Rows of a graph output back in the caller's box order, filler rows dropped."""
        result = np.empty((int((self.order >= 0).sum()),) + outputs.shape[1:], outputs.dtype)
        valid = self.order >= 0
        result[self.order[valid]] = outputs[valid]
        return result


def split_by_level(boxes: np.ndarray, pool: RoIPoolConfig) -> LevelSplit:
    """`boxes` (N, 4) grouped by the pyramid level `pool` assigns them, as the head graphs take them."""
    levels = assign_levels(boxes, pool)
    rois, order = [], []
    for level in range(len(pool.scales)):
        members = np.flatnonzero(levels == level)
        if members.size:
            rois.append(np.ascontiguousarray(boxes[members], np.float32))
            order.append(members)
        else:
            rois.append(FILLER_BOX)
            order.append(np.array([-1], np.int64))
    return LevelSplit(rois=rois, order=np.concatenate(order).astype(np.int64))


def select_detections(
    class_probs: np.ndarray,
    box_deltas: np.ndarray,
    proposals: np.ndarray,
    resized_size,
    head: BoxHeadConfig,
    score_threshold: float,
    max_detections: int,
    class_ids=None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torchvision RoIHeads.postprocess_detections for one image.

    Args:
        class_probs: float32 (R, C) softmax scores; the background is column 0, or the last
            where head.background is "last".
        box_deltas: float32 (R, 4C) per-class regression, or (R, 4(C - 1)) for the
            foreground classes only where the background is last.
        proposals: float32 (R, 4) the RoIs, padded-image pixels.
        head: model.json's "box_head" section.
        class_ids: optional class indices to keep (applied before NMS, which is per class).
    Returns:
        boxes (N, 4) in resized-image pixels, scores (N,), class ids (N,) (indices into
        class_names, 0 the background), best first.

    Only (RoI, class) pairs above the threshold are decoded: decoding is elementwise, so
    this equals torchvision's decode-everything-then-filter.
    """
    background_last = head.background == "last"
    scores = class_probs[:, :-1] if background_last else class_probs[:, 1:]
    candidate = scores > np.float32(score_threshold)
    if class_ids is not None:
        allowed = np.zeros(scores.shape[1], bool)
        wanted = np.asarray(list(class_ids), np.int64) - 1
        allowed[wanted[(wanted >= 0) & (wanted < scores.shape[1])]] = True
        candidate &= allowed[None, :]
    roi_index, column = np.nonzero(candidate)
    labels = column + 1
    deltas = box_deltas.reshape(box_deltas.shape[0], -1, 4)[roi_index, column if background_last else labels]
    boxes = decode_boxes(deltas, proposals[roi_index], head.box_coder_weights, head.bbox_xform_clip)
    boxes = clip_boxes(boxes, resized_size)
    scores = scores[roi_index, column]

    if head.min_size > 0:
        keep = remove_small_boxes(boxes, head.min_size)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, head.nms_thresh)[:max_detections]
    return boxes[keep], scores[keep], labels[keep].astype(np.int64)

"""Box arithmetic and NMS in numpy, ported operation by operation from torchvision.

All boxes are float32 (N, 4) as (x1, y1, x2, y2) in pixels. The arithmetic is done in
float32 in torchvision's order so that results match it bit for bit wherever the
elementwise math library agrees (exp/log can differ in the last ulp).
"""

from __future__ import annotations

import numpy as np

from .torch_kernels import sort_descending

# torchvision.models.detection._utils: BoxCoder's default clamp of dw/dh before exp()
DEFAULT_BBOX_XFORM_CLIP = float(np.log(1000.0 / 16))


def decode_boxes(deltas: np.ndarray, boxes: np.ndarray, weights, bbox_xform_clip=DEFAULT_BBOX_XFORM_CLIP) -> np.ndarray:
    """torchvision BoxCoder.decode_single for one delta row per box.

    Args:
        deltas: float32 (N, 4) regression (dx, dy, dw, dh) before division by `weights`.
        boxes: float32 (N, 4) reference boxes (anchors or proposals).
        weights: (wx, wy, ww, wh).
    Returns:
        float32 (N, 4) decoded boxes.
    """
    deltas = np.asarray(deltas, np.float32)
    boxes = np.asarray(boxes, np.float32)
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + np.float32(0.5) * widths
    ctr_y = boxes[:, 1] + np.float32(0.5) * heights
    dx = deltas[:, 0] / wx
    dy = deltas[:, 1] / wy
    clip = np.float32(bbox_xform_clip)
    dw = np.minimum(deltas[:, 2] / ww, clip)
    dh = np.minimum(deltas[:, 3] / wh, clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = np.float32(0.5) * (np.exp(dw) * widths)
    half_h = np.float32(0.5) * (np.exp(dh) * heights)
    return np.stack(
        [pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=1
    ).astype(np.float32, copy=False)


def clip_boxes(boxes: np.ndarray, size_hw) -> np.ndarray:
    """torchvision clip_boxes_to_image: x to [0, W], y to [0, H] (a new array)."""
    h, w = size_hw
    out = np.empty_like(boxes)
    np.clip(boxes[:, 0::2], 0, w, out=out[:, 0::2])
    np.clip(boxes[:, 1::2], 0, h, out=out[:, 1::2])
    return out


def remove_small_boxes(boxes: np.ndarray, min_size: float, strict: bool = False) -> np.ndarray:
    """Indices of boxes whose width and height are both >= min_size (torchvision's
    remove_small_boxes), or both > min_size where `strict` (detectron2's Boxes.nonempty)."""
    min_size = np.float32(min_size)
    ws = boxes[:, 2] - boxes[:, 0]
    hs = boxes[:, 3] - boxes[:, 1]
    above = np.greater if strict else np.greater_equal
    return np.flatnonzero(above(ws, min_size) & above(hs, min_size))


def box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a), len(b)) in float32, as torchvision's NMS kernel computes it:
    inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1)),
    iou = inter / (area_a + area_b - inter). In place on two buffers (NMS calls it on
    1000 x 1000 blocks, where temporaries cost more than the arithmetic)."""
    inter = np.minimum(a[:, None, 2], b[None, :, 2])
    inter -= np.maximum(a[:, None, 0], b[None, :, 0])
    np.maximum(inter, np.float32(0), out=inter)
    height = np.minimum(a[:, None, 3], b[None, :, 3])
    height -= np.maximum(a[:, None, 1], b[None, :, 1])
    np.maximum(height, np.float32(0), out=height)
    inter *= height
    union = np.add(box_area(a)[:, None], box_area(b)[None, :], out=height)
    union -= inter
    inter /= union
    return inter


def _float32_floor(value: float) -> np.float32:
    """The largest float32 <= value: for any float32 x, x > value exactly when x > this."""
    f = np.float32(value)
    return np.nextafter(f, np.float32(-np.inf)) if float(f) > value else f


def _overlaps_above(ordered: np.ndarray, iou_threshold: float, block: int = 256) -> np.ndarray:
    """Boolean (n, n): IoU(i, j) > iou_threshold for j >= i (the lower triangle, which the
    greedy pass never reads, stays False). Computed in row blocks that stay in cache; each
    IoU is the same float32 arithmetic as box_iou."""
    n = ordered.shape[0]
    threshold = _float32_floor(iou_threshold)
    out = np.zeros((n, n), bool)
    for start in range(0, n, block):
        stop = min(n, start + block)
        np.greater(box_iou(ordered[start:stop], ordered[start:]), threshold, out=out[start:stop, start:])
    return out


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS like torchvision.ops.nms: indices kept, by decreasing score.

    A box is dropped when its IoU with a kept, higher-scoring box is > iou_threshold (the
    C++ kernel compares a float IoU with a double threshold; so does _overlaps_above). Equal
    scores keep their input order: the kernel sorts stably.
    """
    n = boxes.shape[0]
    if n == 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(-scores, kind="stable")
    overlaps = _overlaps_above(boxes[order], iou_threshold)
    suppressed = np.zeros(n, bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlaps[i]
    return order[np.asarray(keep, np.int64)]


def batched_nms(boxes: np.ndarray, scores: np.ndarray, idxs: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS independently per category, like torchvision.ops.batched_nms on the CPU.

    torchvision switches strategy on size, and the two can differ in the last bit of an
    IoU, so we switch the same way: above 4000 coordinates, NMS per category then a sort
    by score (torch.sort, whose order among equal scores engine.torch_kernels reproduces);
    otherwise one NMS over boxes offset per category.
    """
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.int64)
    if boxes.size > 4000:
        keep_mask = np.zeros(scores.shape[0], bool)
        for category in np.unique(idxs):
            members = np.flatnonzero(idxs == category)
            keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
        kept = np.flatnonzero(keep_mask)
        return kept[sort_descending(scores[kept])]
    max_coordinate = boxes.max()
    offsets = idxs.astype(np.float32) * (max_coordinate + np.float32(1))
    return nms(boxes + offsets[:, None], scores, iou_threshold)

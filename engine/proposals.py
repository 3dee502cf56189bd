"""RPN proposal selection in numpy: torchvision RegionProposalNetwork.filter_proposals, and
detectron2's find_top_rpn_proposals, which differs only in the conventions model.json's rpn
section names (anchors, ranking by the logit, the small-box rule).

Order of operations (eval): per level top-k objectness logits -> decode those anchors ->
sigmoid (torchvision) -> clip to the resized image -> drop small boxes -> drop
probabilities under score_thresh (>=) -> NMS per level -> keep the post_nms_top_n best. The
top-k order and the sigmoid are torch's own (engine.torch_kernels): equal scores are
common, and their order decides which of two overlapping proposals NMS keeps.
"""

from __future__ import annotations

import numpy as np

from .anchors import level_anchors
from .box_ops import batched_nms, clip_boxes, decode_boxes, remove_small_boxes
from .model_directory.config import RpnConfig
from .torch_kernels import sigmoid, topk_indices


def flatten_rpn_outputs(logits: np.ndarray, deltas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1, A, H, W) logits and (1, 4A, H, W) deltas -> (H*W*A,) and (H*W*A, 4), ordered like
    the anchors (torchvision's permute_and_flatten)."""
    _, a, h, w = logits.shape
    flat_logits = logits.reshape(a, h, w).transpose(1, 2, 0).reshape(-1)
    flat_deltas = deltas.reshape(a, 4, h, w).transpose(2, 3, 0, 1).reshape(-1, 4)
    return flat_logits, flat_deltas


def select_proposals(rpn_logits, rpn_deltas, padded_size, resized_size, rpn: RpnConfig) -> tuple[np.ndarray, np.ndarray]:
    """Proposals for the RoI heads.

    Args:
        rpn_logits, rpn_deltas: per level, the RPN head's raw outputs (1, A, H, W) / (1, 4A, H, W).
        padded_size: (Hp, Wp) of the network input, which sets the anchor strides.
        resized_size: (h, w) of the image inside the padding; proposals are clipped to it.
        rpn: model.json's "rpn" section.
    Returns:
        boxes float32 (P, 4) in padded-image pixels and their objectness scores (P,):
        probabilities, or logits where rpn.objectness is "logits".
    """
    boxes, scores, levels = [], [], []
    for level, (logits, deltas) in enumerate(zip(rpn_logits, rpn_deltas)):
        flat_logits, flat_deltas = flatten_rpn_outputs(logits, deltas)
        anchors = level_anchors(
            logits.shape[2:], padded_size, rpn.anchor_sizes[level], rpn.aspect_ratios[level], rpn.anchor_order,
            rpn.anchor_round, rpn.anchor_offset, rpn.anchor_strides[level] if rpn.anchor_strides else None,
        )
        top = topk_indices(flat_logits, min(rpn.pre_nms_top_n, flat_logits.shape[0]))
        boxes.append(decode_boxes(flat_deltas[top], anchors[top], rpn.box_coder_weights, rpn.bbox_xform_clip))
        scores.append(flat_logits[top])
        levels.append(np.full(top.shape[0], level, np.int64))
    boxes = clip_boxes(np.concatenate(boxes), resized_size)
    scores = np.concatenate(scores)
    levels = np.concatenate(levels)

    keep = remove_small_boxes(boxes, rpn.min_size, strict=rpn.min_size_rule == ">")
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    if rpn.objectness == "sigmoid":
        scores = sigmoid(scores)
        keep = np.flatnonzero(scores >= np.float32(rpn.score_thresh))
    elif rpn.score_thresh > 0:  # ranked by the logit, filtered by its probability
        keep = np.flatnonzero(sigmoid(scores) >= np.float32(rpn.score_thresh))
    else:
        keep = slice(None)
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    keep = batched_nms(boxes, scores, levels, rpn.nms_thresh)[: rpn.post_nms_top_n]
    return boxes[keep], scores[keep]

"""RPN proposal selection in numpy: torchvision RegionProposalNetwork.filter_proposals.

Order of operations (torchvision, eval): per level top-k objectness logits -> decode those
anchors -> sigmoid -> clip to the resized image -> drop boxes under min_size -> drop scores
under score_thresh (>=) -> NMS per level -> keep the post_nms_top_n best. The top-k order
and the sigmoid are torch's own (engine.torch_kernels): equal scores are common, and their
order decides which of two overlapping proposals NMS keeps.
"""

from __future__ import annotations

import numpy as np

from .anchors import level_anchors
from .box_ops import batched_nms, clip_boxes, decode_boxes, remove_small_boxes
from .model_config import RpnConfig
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
        boxes float32 (P, 4) in padded-image pixels and their objectness probabilities (P,).
    """
    boxes, scores, levels = [], [], []
    for level, (logits, deltas) in enumerate(zip(rpn_logits, rpn_deltas)):
        flat_logits, flat_deltas = flatten_rpn_outputs(logits, deltas)
        anchors = level_anchors(
            logits.shape[2:], padded_size, rpn.anchor_sizes[level], rpn.aspect_ratios[level]
        )
        top = topk_indices(flat_logits, min(rpn.pre_nms_top_n, flat_logits.shape[0]))
        boxes.append(decode_boxes(flat_deltas[top], anchors[top], rpn.box_coder_weights, rpn.bbox_xform_clip))
        scores.append(flat_logits[top])
        levels.append(np.full(top.shape[0], level, np.int64))
    boxes = clip_boxes(np.concatenate(boxes), resized_size)
    logits = np.concatenate(scores)
    probs = sigmoid(logits)
    levels = np.concatenate(levels)

    keep = remove_small_boxes(boxes, rpn.min_size)
    boxes, probs, levels = boxes[keep], probs[keep], levels[keep]
    keep = np.flatnonzero(probs >= np.float32(rpn.score_thresh))
    boxes, probs, levels = boxes[keep], probs[keep], levels[keep]
    keep = batched_nms(boxes, probs, levels, rpn.nms_thresh)[: rpn.post_nms_top_n]
    return boxes[keep], probs[keep]

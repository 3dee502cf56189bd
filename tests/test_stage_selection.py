"""The two selection stages against torchvision's own code, on the same inputs.

* engine.proposals.select_proposals vs RegionProposalNetwork (eval): the head's outputs
  flattened with concat_box_prediction_layers, decoded against AnchorGenerator's anchors,
  then filter_proposals.
* engine.roi_heads.select_detections vs RoIHeads.postprocess_detections.

Same proposals in the same order, same detections with the same labels; coordinates agree
to float32 rounding (numpy and torch may round exp() differently in the last bit).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.image_list import ImageList  # noqa: E402
from torchvision.models.detection.roi_heads import RoIHeads  # noqa: E402
from torchvision.models.detection.rpn import (  # noqa: E402
    RegionProposalNetwork, RPNHead, concat_box_prediction_layers)

from engine.roi_heads import select_detections  # noqa: E402
from engine.model_directory.config import BoxHeadConfig, RpnConfig  # noqa: E402
from engine.proposals import select_proposals  # noqa: E402

PADDED, RESIZED = (800, 1088), (800, 1066)
STRIDES = (4, 8, 16, 32, 64)
CLIP = math.log(1000.0 / 16)


def rpn_config(**overrides) -> RpnConfig:
    settings = dict(anchor_sizes=((32.0,), (64.0,), (128.0,), (256.0,), (512.0,)),
                    aspect_ratios=((0.5, 1.0, 2.0),) * 5, pre_nms_top_n=1000, post_nms_top_n=1000,
                    nms_thresh=0.7, score_thresh=0.0, min_size=1e-3, box_coder_weights=(1.0, 1.0, 1.0, 1.0),
                    bbox_xform_clip=CLIP)
    return RpnConfig(**{**settings, **overrides})


def torchvision_proposals(config: RpnConfig, logits: list[np.ndarray], deltas: list[np.ndarray]) -> np.ndarray:
    generator = AnchorGenerator(tuple(tuple(int(s) for s in sizes) for sizes in config.anchor_sizes),
                                config.aspect_ratios)
    top_n = {"training": config.pre_nms_top_n, "testing": config.pre_nms_top_n}
    post_n = {"training": config.post_nms_top_n, "testing": config.post_nms_top_n}
    rpn = RegionProposalNetwork(generator, RPNHead(1, 3), 0.7, 0.3, 256, 0.5, top_n, post_n,
                                config.nms_thresh, score_thresh=config.score_thresh).eval()
    rpn.min_size = config.min_size
    images = ImageList(torch.zeros(1, 3, *PADDED), [RESIZED])
    features = [torch.zeros(1, 1, *l.shape[2:]) for l in logits]
    objectness, box_deltas = [torch.from_numpy(l) for l in logits], [torch.from_numpy(d) for d in deltas]
    with torch.no_grad():
        anchors = generator(images, features)
        per_level = [o[0].numel() for o in objectness]
        objectness, box_deltas = concat_box_prediction_layers(objectness, box_deltas)
        proposals = rpn.box_coder.decode(box_deltas, anchors).view(1, -1, 4)
        boxes, _ = rpn.filter_proposals(proposals, objectness, images.image_sizes, per_level)
    return boxes[0].numpy()


def random_rpn_outputs(rng, anchors_per_cell: int = 3):
    """Random RPN head outputs whose objectness probabilities are all distinct in float32:
    tied scores are ordered arbitrarily by either NMS, which would test nothing."""
    grids = [(-(-PADDED[0] // s), -(-PADDED[1] // s)) for s in STRIDES]
    sizes = [anchors_per_cell * h * w for h, w in grids]
    ranks = rng.permutation(sum(sizes)).astype(np.float64)
    logits_flat = (-3.0 + 6.0 * ranks / ranks.size).astype(np.float32)  # sigmoid' >= 0.045 here: no ties
    starts = np.cumsum([0] + sizes)
    logits = [logits_flat[a:b].reshape(1, anchors_per_cell, h, w) for a, b, (h, w) in zip(starts, starts[1:], grids)]
    deltas = [rng.normal(0, 0.5, (1, 4 * anchors_per_cell, h, w)).astype(np.float32) for h, w in grids]
    return logits, deltas


@pytest.mark.parametrize("overrides", [{}, {"pre_nms_top_n": 300, "post_nms_top_n": 100},
                                       {"nms_thresh": 0.5, "score_thresh": 0.6}, {"min_size": 12.0}],
                         ids=["r50-eval", "small-top-n", "score-threshold", "min-size"])
def test_proposals_are_filter_proposals(overrides):
    config = rpn_config(**overrides)
    logits, deltas = random_rpn_outputs(np.random.default_rng(len(overrides)))
    expected = torchvision_proposals(config, logits, deltas)
    ours, probs = select_proposals(logits, deltas, PADDED, RESIZED, config)
    assert ours.shape == expected.shape and ours.shape[0] > 0
    assert np.all(np.diff(probs) <= 0)  # NMS per level, then best first across levels
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-3)


def box_head_config(**overrides) -> BoxHeadConfig:
    settings = dict(featmap_names=("0", "1", "2", "3"), feature_indices=(0, 1, 2, 3),
                    scales=(0.25, 0.125, 0.0625, 0.03125), output_size=(7, 7), sampling_ratio=2,
                    canonical_scale=224, canonical_level=4, box_coder_weights=(10.0, 10.0, 5.0, 5.0),
                    bbox_xform_clip=CLIP, score_thresh=0.05, nms_thresh=0.5, detections_per_img=100)
    return BoxHeadConfig(**{**settings, **overrides})


@pytest.mark.parametrize(("score_threshold", "max_detections", "classes"), [(0.05, 100, 91), (0.5, 100, 91),
                                                                           (0.3, 7, 4), (0.0, 1000, 2)])
def test_detections_are_postprocess_detections(score_threshold, max_detections, classes):
    rng = np.random.default_rng(classes + max_detections)
    rois = 1000
    xy = rng.uniform(0, 900, (rois, 2)).astype(np.float32)
    proposals = np.concatenate([xy, xy + rng.uniform(4, 300, (rois, 2)).astype(np.float32)], axis=1)
    logits = rng.normal(0, 3, (rois, classes)).astype(np.float32)
    deltas = rng.normal(0, 1, (rois, 4 * classes)).astype(np.float32)
    config = box_head_config()
    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, config.box_coder_weights, score_threshold,
                     config.nms_thresh, max_detections)
    with torch.no_grad():
        boxes, scores, labels = heads.postprocess_detections(
            torch.from_numpy(logits), torch.from_numpy(deltas), [torch.from_numpy(proposals)], [RESIZED])
    probs = torch.softmax(torch.from_numpy(logits), -1).numpy()  # the box head graph ends with the softmax
    ours = select_detections(probs, deltas, proposals, RESIZED, config, score_threshold, max_detections)
    assert len(ours[0]) == len(boxes[0]) > 0
    np.testing.assert_array_equal(ours[2], labels[0].numpy())
    np.testing.assert_allclose(ours[1], scores[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours[0], boxes[0].numpy(), rtol=0, atol=1e-3)

"""Each numpy port against the torchvision function it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from engine.anchors import level_anchors
from engine.box_ops import batched_nms, decode_boxes, nms
from engine.roi_heads import assign_levels
from engine.model_directory.config import RoIPoolConfig
from engine.masks import paste_masks
from engine.preprocess import preprocess, resized_size

torch = pytest.importorskip("torch")
import torchvision  # noqa: E402
from torchvision.models.detection import _utils as det_utils  # noqa: E402
from torchvision.models.detection.roi_heads import paste_masks_in_image  # noqa: E402


def random_boxes(rng, n, scale=200.0):
    xy = rng.uniform(0, scale, (n, 2)).astype(np.float32)
    wh = rng.uniform(1, scale / 3, (n, 2)).astype(np.float32)
    return np.concatenate([xy, xy + wh], axis=1)


@pytest.mark.parametrize("n,classes", [(50, 1), (300, 5), (999, 3), (1001, 4), (3000, 10)])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_batched_nms_keeps_the_same_indices_as_torchvision(n, classes, threshold):
    rng = np.random.default_rng(n * 7 + classes)
    boxes = random_boxes(rng, n)
    scores = rng.random(n).astype(np.float32)
    idxs = rng.integers(0, classes, n)
    expected = torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(idxs), threshold
    ).numpy()
    np.testing.assert_array_equal(batched_nms(boxes, scores, idxs, threshold), expected)


def test_nms_matches_torchvision_with_clustered_boxes():
    rng = np.random.default_rng(1)
    centres = random_boxes(rng, 20)
    boxes = (np.repeat(centres, 30, axis=0) + rng.normal(0, 3, (600, 4))).astype(np.float32)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = rng.random(600).astype(np.float32)
    expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.5).numpy()
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), expected)
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 0.5).shape == (0,)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_decoding_matches_box_coder(weights):
    rng = np.random.default_rng(2)
    anchors = random_boxes(rng, 500)
    deltas = rng.normal(0, 1, (500, 4)).astype(np.float32)
    deltas[:10, 2:] = 20.0  # beyond the log(1000/16) clamp
    coder = det_utils.BoxCoder(weights)
    expected = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(anchors)).numpy()
    np.testing.assert_allclose(decode_boxes(deltas, anchors, weights), expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("image_hw", [(480, 640), (123, 457), (600, 600)])
def test_mask_pasting_matches_torchvision(image_hw):
    rng = np.random.default_rng(3)
    h, w = image_hw
    boxes = random_boxes(rng, 40, scale=min(h, w))
    boxes[:5] -= 30
    boxes[5:8, 2:] = boxes[5:8, :2] + 0.4  # smaller than a pixel
    # detections are clipped to the image (torchvision's paste fails otherwise); the
    # expanded paste box still reaches past the edges for boxes that touch them
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    probs = rng.random((40, 28, 28)).astype(np.float32)
    expected = paste_masks_in_image(torch.from_numpy(probs)[:, None], torch.from_numpy(boxes), (h, w))[:, 0].numpy()
    np.testing.assert_array_equal(paste_masks(probs, boxes, (h, w)), expected > 0.5)
    assert paste_masks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (h, w)).shape == (0, h, w)


def test_anchors_match_anchor_generator():
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes, ratios = ((32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 3
    generator = AnchorGenerator(sizes, ratios)
    grids = [(200, 272), (100, 136), (50, 68)]
    images = ImageList(torch.zeros(1, 3, 800, 1088), [(800, 1066)])
    feats = [torch.zeros(1, 1, *g) for g in grids]
    expected = generator(images, feats)[0].numpy()
    ours = np.concatenate([level_anchors(g, (800, 1088), s, r) for g, s, r in zip(grids, sizes, ratios)])
    np.testing.assert_array_equal(ours, expected)


def test_level_assignment_matches_level_mapper():
    from torchvision.ops.poolers import LevelMapper

    rng = np.random.default_rng(4)
    boxes = random_boxes(rng, 2000, scale=1000)
    expected = LevelMapper(2, 5)([torch.from_numpy(boxes)]).numpy()
    pool = RoIPoolConfig(featmap_names=("0", "1", "2", "3"), feature_indices=(0, 1, 2, 3),
                         scales=(1 / 4, 1 / 8, 1 / 16, 1 / 32), output_size=(7, 7), sampling_ratio=2,
                         canonical_scale=224, canonical_level=4)
    np.testing.assert_array_equal(assign_levels(boxes, pool), expected)


@pytest.mark.parametrize("hw", [(480, 640), (481, 640), (300, 451), (1000, 3000), (333, 777), (17, 900), (800, 800),
                                (3000, 4000), (1201, 1600), (801, 1067)])
def test_resize_and_normalisation_match_generalized_rcnn_transform(hw):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    transform = GeneralizedRCNNTransform(800, 1333, mean, std).eval()
    rng = np.random.default_rng(hw[0])
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    batch, _ = transform([torch.from_numpy(image).permute(2, 0, 1).float() / 255.0])
    prepared = preprocess(image, mean, std, 800, 1333, 32)
    assert prepared.resized_size == tuple(batch.image_sizes[0])
    assert resized_size(*hw, 800, 1333) == tuple(batch.image_sizes[0])
    assert prepared.tensor.shape == tuple(batch.tensors.shape)
    # OpenCV's bilinear resize quantises its interpolation weights slightly differently
    # from F.interpolate: up to ~8e-4 on normalised pixel noise of magnitude ~2 (photos. parity holds)
    np.testing.assert_allclose(prepared.tensor, batch.tensors.numpy(), atol=1e-3)


def test_aligned_paste_inverts_torchvision_mask_targets():
    """The aligned paste maps mask cells back to where torchvision's training targets
    (roi_align, aligned=False, over the ground-truth box) took them from: pasting a target
    reconstructs the ground truth, and more closely than torchvision's integer paste."""
    import cv2

    from engine.masks import paste_masks_aligned
    from torchvision.ops import roi_align

    rng = np.random.default_rng(5)
    h, w = 120, 160
    aligned_ious, torchvision_ious = [], []
    for _ in range(30):
        gt = np.zeros((h, w), np.uint8)
        cx, cy = rng.uniform(30, 130), rng.uniform(30, 90)
        axes = (int(rng.uniform(5, 25)), int(rng.uniform(5, 25)))
        cv2.ellipse(gt, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        ys, xs = np.nonzero(gt)
        box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        rois = torch.cat([torch.zeros(1, 1), torch.from_numpy(box)], dim=1)
        target = roi_align(torch.from_numpy(gt)[None, None].float(), rois, (28, 28), 1.0, aligned=False)[:, 0].numpy()
        for paste, ious in (
            (lambda: paste_masks_aligned(target, box, (h, w), (1.0, 1.0))[0], aligned_ious),
            (lambda: paste_masks(target, box, (h, w))[0], torchvision_ious),
        ):
            mask = paste()
            ious.append(np.logical_and(mask, gt).sum() / np.logical_or(mask, gt).sum())
    assert np.mean(aligned_ious) >= 0.95, np.mean(aligned_ious)
    assert np.mean(aligned_ious) > np.mean(torchvision_ious)
    assert paste_masks_aligned(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (h, w), (1, 1)).shape == (0, h, w)


@pytest.mark.parametrize(("hw", "out"), [((3000, 4000), (800, 1066)), ((600, 601), (600, 600)), ((9, 7), (1, 1)),
                                         ((5, 3000), (2, 1333)), ((1, 1), (1, 1))])
def test_downscale_reads_only_the_pixels_bilinear_uses_and_matches_interpolate(hw, out):
    from engine.preprocess import downscale_bilinear

    rng = np.random.default_rng(hw[0] + hw[1])
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    before = image.copy()
    ours = downscale_bilinear(image, *out)
    expected = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=out,
                                               mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    assert ours.dtype == np.float32 and ours.shape == (*out, 3)
    # torch keeps the source scale in float32, we in float64: taps differ in the last bits
    np.testing.assert_allclose(ours, expected, rtol=0, atol=0.1)  # of 255
    np.testing.assert_array_equal(image, before)  # the caller's array untouched

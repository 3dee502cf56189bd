"""engine.masks: masks kept as crops are the masks torchvision pastes, pixel for pixel."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from engine.detections import Detections
from engine.masks import CroppedMasks, MaskCrop, PastedMasks, paste_masks

H, W = 97, 131


def edge_boxes(rng, n: int = 60) -> np.ndarray:
    """(n, 4) boxes of every awkward kind, clipped to the image as detections are: inside,
    touching or crossing each border, spanning the whole image, one pixel, under a pixel."""
    x0 = rng.uniform(-20, W, n)
    y0 = rng.uniform(-20, H, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(1, W, n), y0 + rng.uniform(1, H, n)], axis=1)
    boxes[0] = [0, 0, W, H]  # the whole image
    boxes[1] = [0, 0, 1, 1]  # one pixel in a corner
    boxes[2] = [W - 1, H - 1, W, H]  # one pixel in the opposite corner
    boxes[3] = [40.2, 30.1, 40.6, 30.5]  # under a pixel
    boxes[4] = [0, 10, W, 20]  # full width
    boxes[5] = [10, 0, 20, H]  # full height
    boxes[6] = [W, H, W, H]  # empty, on the corner
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, W)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, H)
    return boxes.astype(np.float32)


def probabilities(rng, n: int, m: int = 28) -> np.ndarray:
    probs = rng.random((n, m, m)).astype(np.float32)
    probs[0] = 1.0  # set everywhere: the pasted mask reaches as far as the paste box lets it
    return probs


def old_aligned_paste(mask_probs, boxes, image_size, resize_factor, threshold=0.5) -> np.ndarray:
    """The aligned paste as it was before masks became crops (full-image masks, one affine
    warp per mask over a window around its box): the reference the crops must reproduce."""
    n, m = mask_probs.shape[0], mask_probs.shape[-1]
    h, w = image_size
    out = np.zeros((n, h, w), bool)
    fy, fx = resize_factor
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(np.float64).tolist()):
        sx, sy = (x1 - x0) / m, (y1 - y0) / m
        tx = x0 + 0.5 * sx + 0.5 * fx - 0.5
        ty = y0 + 0.5 * sy + 0.5 * fy - 0.5
        wx0, wy0 = max(int(np.floor(x0 - fx)) - 1, 0), max(int(np.floor(y0 - fy)) - 1, 0)
        wx1, wy1 = min(int(np.ceil(x1 + fx)) + 1, w), min(int(np.ceil(y1 + fy)) + 1, h)
        if wx0 >= wx1 or wy0 >= wy1 or sx <= 0 or sy <= 0:
            continue
        affine = np.array([[sx, 0.0, tx - wx0], [0.0, sy, ty - wy0]])
        window = cv2.warpAffine(mask_probs[i], affine, (wx1 - wx0, wy1 - wy0), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        out[i, wy0:wy1, wx0:wx1] = window > threshold
    return out


def assert_crops_are(masks, expected: np.ndarray) -> None:
    """Every crop lies inside the image, holds every set pixel of its mask, and pasted
    alone (`full`) or all together (`to_array`) gives exactly `expected` (N, H, W)."""
    assert len(masks) == len(expected)
    extents = masks.extents()
    for i, crop in enumerate(masks):
        assert isinstance(crop, MaskCrop) and crop.mask.dtype == bool
        ch, cw = crop.mask.shape
        assert 0 <= crop.x and crop.x + cw <= W and 0 <= crop.y and crop.y + ch <= H
        if ch and cw:
            assert tuple(extents[i]) == (crop.x, crop.y, crop.x + cw, crop.y + ch)
        outside = expected[i].copy()
        outside[crop.y:crop.y + ch, crop.x:crop.x + cw] = False
        assert not outside.any(), f"mask {i} has pixels outside its crop"
        np.testing.assert_array_equal(masks.full(i), expected[i])
    np.testing.assert_array_equal(masks.to_array(), expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crops_are_torchvisions_pasted_masks(seed):
    rng = np.random.default_rng(seed)
    boxes = edge_boxes(rng)
    probs = probabilities(rng, len(boxes))
    expected = paste_masks_in_image(torch.from_numpy(probs)[:, None], torch.from_numpy(boxes), (H, W))[:, 0].numpy() > 0.5
    masks = PastedMasks(probs, boxes, (H, W))
    assert_crops_are(masks, expected)
    assert masks.crop(0).mask.shape == (H, W)  # the whole-image box: its crop is the whole image
    np.testing.assert_array_equal(paste_masks(probs, boxes, (H, W)), expected)


@pytest.mark.parametrize("factor", [(1.0, 1.0), (2.5, 2.5), (0.75, 0.8)])
def test_aligned_crops_are_the_aligned_paste(factor):
    rng = np.random.default_rng(7)
    boxes = edge_boxes(rng)
    probs = probabilities(rng, len(boxes))
    expected = old_aligned_paste(probs, boxes, (H, W), factor)
    assert_crops_are(PastedMasks(probs, boxes, (H, W), mode="aligned", resize_factor=factor), expected)


def test_threshold_and_mode_are_honoured():
    rng = np.random.default_rng(3)
    boxes, probs = edge_boxes(rng, 10), probabilities(rng, 10)
    strict = PastedMasks(probs, boxes, (H, W), threshold=0.9).to_array()
    loose = PastedMasks(probs, boxes, (H, W), threshold=0.1).to_array()
    assert strict.sum() < loose.sum() and not (strict & ~loose).any()
    with pytest.raises(ValueError, match="paste mode"):
        PastedMasks(probs, boxes, (H, W), mode="sideways")


def test_no_detections():
    empty = PastedMasks(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (H, W))
    assert len(empty) == 0 and list(empty) == [] and empty.to_array().shape == (0, H, W)
    assert empty.extents().shape == (0, 4)
    det = Detections.empty((H, W))
    assert len(det) == 0 and det.masks.shape == (0, H, W) and len(det.mask_crops) == 0


def test_cropped_masks_round_trip_full_masks():
    rng = np.random.default_rng(4)
    full = np.zeros((5, H, W), bool)
    full[0, 3:9, 100:131] = True  # touches the right border
    full[1] = rng.random((H, W)) > 0.5
    full[3, 96, 0] = True  # a single pixel in the bottom-left corner
    # full[2] and full[4] stay empty
    masks = CroppedMasks.from_array(full)
    assert_crops_are(masks, full)
    assert masks.crop(0).mask.shape == (6, 31) and (masks.crop(0).x, masks.crop(0).y) == (100, 3)
    assert masks.crop(2).mask.size == 0
    assert masks.crop(3).mask.shape == (1, 1) and (masks.crop(3).x, masks.crop(3).y) == (0, 96)


def test_detections_build_full_masks_from_crops_only_on_access():
    rng = np.random.default_rng(5)
    boxes = edge_boxes(rng, 8)
    probs = probabilities(rng, 8)
    det = Detections(boxes=boxes, scores=np.linspace(0.9, 0.2, 8).astype(np.float32), class_ids=np.ones(8, np.int64),
                     labels=["thing"] * 8, masks=PastedMasks(probs, boxes, (H, W)), image_size=(H, W))
    assert getattr(det, "_masks", None) is None  # nothing full-size until someone asks
    np.testing.assert_array_equal(det.masks, paste_masks(probs, boxes, (H, W)))
    assert det.masks is det.masks  # built once, then kept
    # given full masks, the crops are cut from them
    again = Detections(boxes=boxes, scores=det.scores, class_ids=det.class_ids, labels=det.labels,
                       masks=det.masks, image_size=(H, W))
    np.testing.assert_array_equal(again.mask_crops.to_array(), det.masks)
    with pytest.raises(ValueError, match="masks"):
        Detections(boxes=boxes, scores=det.scores, class_ids=det.class_ids, labels=det.labels,
                   masks=det.masks[:, :-1], image_size=(H, W))
    with pytest.raises(ValueError, match="masks"):
        Detections(boxes=boxes[:3], scores=det.scores[:3], class_ids=det.class_ids[:3], labels=det.labels[:3],
                   masks=det.mask_crops, image_size=(H, W))

"""server.mask_encoding: COCO RLE identical to pycocotools, and polygons."""

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest

from server.mask_encoding import encode_counts, encode_polygons, encode_rle, rle_counts
from helpers import photo
from server_fixtures import disc_mask

# pycocotools 2.0.11 with numpy 2 warns inside its own decode; not our concern.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def reference(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def assert_matches_pycocotools(mask: np.ndarray):
    got = encode_rle(mask)
    assert got == reference(mask)
    decoded = mask_utils.decode({"size": got["size"], "counts": got["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_random_masks_match_pycocotools():
    rng = np.random.default_rng(1234)
    for _ in range(400):
        h, w = rng.integers(1, 40, size=2)
        mask = rng.random((h, w)) < rng.random()
        assert_matches_pycocotools(mask)


def test_random_blobs_match_pycocotools():
    rng = np.random.default_rng(7)
    for _ in range(100):
        h, w = rng.integers(20, 300, size=2)
        mask = np.zeros((h, w), bool)
        for _ in range(rng.integers(1, 4)):
            mask |= disc_mask(h, w, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1, min(h, w) / 2))
        assert_matches_pycocotools(mask)


@pytest.mark.parametrize("name", ["empty", "full", "first pixel", "last pixel", "first column",
                                  "last column", "first row", "last row", "1xN", "Nx1", "checker"])
def test_edge_cases_match_pycocotools(name):
    h, w = (1, 37) if name == "1xN" else (41, 1) if name == "Nx1" else (23, 31)
    mask = np.zeros((h, w), bool)
    if name == "full" or name in ("1xN", "Nx1"):
        mask[:] = True
        if name != "full":
            mask.flat[::3] = False
    elif name == "first pixel":
        mask[0, 0] = True
    elif name == "last pixel":
        mask[-1, -1] = True
    elif name == "first column":
        mask[:, 0] = True
    elif name == "last column":
        mask[:, -1] = True
    elif name == "first row":
        mask[0] = True
    elif name == "last row":
        mask[-1] = True
    elif name == "checker":
        mask[::2, ::2] = mask[1::2, 1::2] = True
    assert_matches_pycocotools(mask)


def test_real_masks_match_pycocotools():
    coffee = photo("coffee")
    from skimage import data

    masks = [
        data.horse() == 0,  # a binary horse silhouette, 328x400
        data.coins() > 110,  # thresholded photo: many irregular regions
        coffee[:, :, 0] > 150,
        data.camera() < 40,
    ]
    for mask in masks:
        assert_matches_pycocotools(np.ascontiguousarray(mask))


def test_large_mask_needs_multi_group_counts():
    h, w = 2000, 3000  # runs of millions: counts need several 5-bit groups, diffs go negative
    mask = np.zeros((h, w), bool)
    mask[100:1900, 1000:1001] = True
    mask[:, 2000:2500] = True
    mask[5, 2999] = True
    assert_matches_pycocotools(mask)


def test_fortran_and_non_contiguous_input():
    mask = disc_mask(60, 80, 40, 30, 20)
    assert encode_rle(np.asfortranarray(mask)) == reference(mask)
    view = np.zeros((120, 80), bool)
    view[::2] = mask
    assert encode_rle(view[::2]) == reference(mask)
    assert encode_rle(mask.astype(np.uint8)) == reference(mask)


def test_counts_start_with_zeros():
    mask = np.ones((2, 2), bool)
    assert rle_counts(mask).tolist() == [0, 4]
    assert rle_counts(np.zeros((2, 3), bool)).tolist() == [6]
    assert encode_counts(np.array([6])) == "6"  # 48 + 6


def test_rejects_non_2d():
    with pytest.raises(ValueError):
        encode_rle(np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError):
        encode_polygons(np.zeros((3,), bool))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max((a | b).sum(), 1)


def test_polygons_outline_the_mask():
    h, w = 120, 160
    mask = disc_mask(h, w, 100, 50, 30) | disc_mask(h, w, 30, 90, 15)
    polygons = encode_polygons(mask)
    assert len(polygons) == 2
    assert all(isinstance(v, float) for poly in polygons for v in poly)
    assert all(len(poly) % 2 == 0 and len(poly) >= 6 for poly in polygons)
    # Rasterised again with pycocotools (COCO's own reading of polygons): nearly the mask.
    rles = mask_utils.frPyObjects(polygons, h, w)
    redrawn = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    assert _iou(redrawn, mask) > 0.93
    # and with OpenCV
    canvas = np.zeros((h, w), np.uint8)
    cv2.fillPoly(canvas, [np.array(p).reshape(-1, 2).astype(np.int32) for p in polygons], 1)
    assert _iou(canvas.astype(bool), mask) > 0.97


def test_polygon_coordinates_are_in_image_pixels():
    mask = np.zeros((50, 70), bool)
    mask[10:20, 30:45] = True  # rows 10-19 (y), columns 30-44 (x)
    (poly,) = encode_polygons(mask)
    xs, ys = poly[0::2], poly[1::2]
    assert (min(xs), max(xs), min(ys), max(ys)) == (30, 44, 10, 19)


def test_polygons_of_empty_and_tiny_masks():
    assert encode_polygons(np.zeros((10, 10), bool)) == []
    single = np.zeros((10, 10), bool)
    single[4, 4] = True
    assert encode_polygons(single) == []  # fewer than three points is not a polygon


# Masks given as crops (what the engine's Detections.mask_crops yields): the same JSON as
# the full-size mask, without the full-size mask ever being made.


def random_crop_of(rng, h: int, w: int, full_height: bool = False):
    """A random mask set only inside a random rectangle: (full mask, crop, x, y)."""
    y0, x0 = (0, int(rng.integers(0, w))) if full_height else (int(rng.integers(0, h)), int(rng.integers(0, w)))
    y1 = h if full_height else int(rng.integers(y0 + 1, h + 1))
    x1 = int(rng.integers(x0 + 1, w + 1))
    full = np.zeros((h, w), bool)
    full[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.choice([0.1, 0.5, 0.95])
    return full, full[y0:y1, x0:x1], x0, y0


@pytest.mark.parametrize("full_height", [False, True])
def test_crops_encode_to_the_full_masks_rle(full_height):
    rng = np.random.default_rng(11 + full_height)
    for _ in range(800):
        h, w = (int(v) for v in rng.integers(1, 30, size=2))
        full, crop, x, y = random_crop_of(rng, h, w, full_height)
        assert encode_rle(crop, x, y, (h, w)) == reference(full)
        np.testing.assert_array_equal(rle_counts(crop, x, y, (h, w)), rle_counts(full))


def test_crops_at_every_border_and_corner_encode_like_full_masks():
    h, w = 23, 31
    cases = {"top-left": (0, 0, 5, 7), "bottom-right": (18, 24, 23, 31), "bottom row": (22, 0, 23, 31),
             "right column": (0, 30, 23, 31), "whole image": (0, 0, 23, 31), "one pixel": (11, 13, 12, 14),
             "last pixel": (22, 30, 23, 31), "first pixel": (0, 0, 1, 1)}
    for name, (y0, x0, y1, x1) in cases.items():
        for fill in ("all", "none", "checker"):
            full = np.zeros((h, w), bool)
            if fill == "all":
                full[y0:y1, x0:x1] = True
            elif fill == "checker":
                full[y0:y1, x0:x1] = (np.indices((y1 - y0, x1 - x0)).sum(axis=0) % 2).astype(bool)
            assert encode_rle(full[y0:y1, x0:x1], x0, y0, (h, w)) == reference(full), (name, fill)


def test_crops_give_the_full_masks_polygons():
    h, w = 120, 160
    mask = disc_mask(h, w, 100, 50, 30) | disc_mask(h, w, 30, 90, 15)
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min() - 3, xs.min() - 2
    crop = mask[y0:ys.max() + 5, x0:xs.max() + 1]
    assert encode_polygons(crop, int(x0), int(y0)) == encode_polygons(mask)
    assert encode_polygons(np.zeros((0, 0), bool), 5, 5) == []


def test_server_json_masks_come_from_the_crops():
    """The JSON answer's masks are the encodings of the detections' crops, and the same as
    encoding the full-size masks (a detection whose crop is empty gets an empty mask)."""
    from engine.detections import Detections
    from engine.masks import PastedMasks
    from server.negotiation import RequestOptions
    from server.responses import detections_to_json

    rng = np.random.default_rng(2)
    h, w = 64, 90
    boxes = np.array([[0, 0, w, h], [80, 50, 90, 64], [10, 10, 11, 11], [w, h, w, h]], np.float32)
    det = Detections(boxes=boxes, scores=np.array([0.9, 0.8, 0.7, 0.6], np.float32), class_ids=np.ones(4, np.int64),
                     labels=["thing"] * 4, masks=PastedMasks(rng.random((4, 28, 28)).astype(np.float32), boxes, (h, w)),
                     image_size=(h, w))
    for mask_format, encode in (("rle", encode_rle), ("polygon", encode_polygons)):
        out = detections_to_json(det, RequestOptions(include=frozenset({"masks"}), mask_format=mask_format))
        assert out["masks"] == [encode(m) for m in det.masks]

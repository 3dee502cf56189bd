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

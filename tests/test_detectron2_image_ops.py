"""detectron2's image operations in numpy, compared with detectron2's own code bit for bit:
DefaultPredictor's preprocessing (engine.preprocess.preprocess_shortest_edge) and
paste_masks_in_image (engine.masks, paste mode "grid_sample")."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

import detectron2_reference
from engine.masks import PASTE_MODES, PastedMasks, _fused_multiply_add, paste_masks_grid_sample
from engine.preprocess import preprocess_shortest_edge, shortest_edge_size
from helpers import photo

detectron2_reference.load()
from detectron2.data.transforms import NoOpTransform, ResizeShortestEdge  # noqa: E402
from detectron2.layers.mask_ops import _do_paste_mask, paste_masks_in_image  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402

# INPUT.FORMAT -> (MODEL.PIXEL_MEAN, MODEL.PIXEL_STD), in that channel order: detectron2's
# defaults for its MSRA (BGR, std 1) and torchvision-style (RGB) backbones, and BGR with a std.
NORMALISATIONS = {
    "BGR": ([103.530, 116.280, 123.675], [1.0, 1.0, 1.0]),
    "BGR-std": ([103.530, 116.280, 123.675], [57.375, 57.120, 58.395]),
    "RGB": ([123.675, 116.280, 103.530], [58.395, 57.120, 57.375]),
}

# torch's vectorised CPU kernels fuse multiply-adds; its scalar build does not (see
# engine.masks.paste_masks_grid_sample): on the latter a pixel can flip at the threshold.
FUSED_TORCH = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def test_shortest_edge_size_is_detectron2s_rule():
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(1, 6000, (3000, 2))]
    sizes += [(480, 640), (640, 480), (800, 800), (1, 1), (1, 5000), (5000, 1), (3, 5), (600, 999), (601, 1000)]
    for min_size, max_size in ((800, 1333), (640, 1000), (1024, 1024), (600, 2000), (1, 1333), (0, 1333)):
        augmentation = ResizeShortestEdge([min_size, min_size], max_size)
        for h, w in sizes:
            transform = augmentation.get_transform(np.empty((h, w, 0), np.uint8))
            expected = (h, w) if isinstance(transform, NoOpTransform) else (transform.new_h, transform.new_w)
            assert shortest_edge_size(h, w, min_size, max_size) == expected, (h, w, min_size, max_size)


def portrait_rocket() -> np.ndarray:
    return np.ascontiguousarray(photo("rocket").transpose(1, 0, 2))


def odd_coffee() -> np.ndarray:
    return np.ascontiguousarray(photo("coffee")[3:398, 5:596])  # 395 x 591


IMAGES = {
    "chelsea": lambda: photo("chelsea"),  # 300 x 451, landscape, odd width
    "odd_coffee": odd_coffee,  # 395 x 591, both odd
    "portrait_rocket": portrait_rocket,  # 640 x 427
    "microaneurysms": lambda: photo("microaneurysms"),  # 102 x 102: upscaled 8 times
    "text": lambda: photo("text"),  # 172 x 448: max_size decides
    "retina": lambda: photo("retina"),  # 1411 x 1411: shrunk
    "hubble_deep_field": lambda: photo("hubble_deep_field"),  # 872 x 1000
}


def detectron2_input(image_rgb, mean, std, min_size, max_size, size_divisible, channel_order) -> np.ndarray:
    """DefaultPredictor's input pipeline on the BGR image it is given, then the model's
    preprocess_image (normalise, ImageList.from_tensors with FPN's padding constraints)."""
    original = image_rgb[:, :, ::-1]  # DefaultPredictor takes BGR
    if channel_order == "RGB":
        original = original[:, :, ::-1]
    augmentation = ResizeShortestEdge([min_size, min_size], max_size)
    resized = augmentation.get_transform(original).apply_image(original)
    x = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    x = (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    return ImageList.from_tensors([x], size_divisible, padding_constraints={"square_size": 0}).tensor.numpy()


@pytest.mark.parametrize("image_name", sorted(IMAGES))
@pytest.mark.parametrize("normalisation", sorted(NORMALISATIONS))
@pytest.mark.parametrize(("min_size", "max_size", "size_divisible"), [(800, 1333, 32), (640, 1000, 32), (0, 1333, 32),
                                                                      (1200, 2000, 0)])
def test_preprocess_is_default_predictors_input(image_name, normalisation, min_size, max_size, size_divisible):
    image = IMAGES[image_name]()
    before = image.copy()
    channel_order = normalisation[:3]
    mean, std = NORMALISATIONS[normalisation]
    expected = detectron2_input(image, mean, std, min_size, max_size, size_divisible, channel_order)
    prepared = preprocess_shortest_edge(image, mean, std, min_size, max_size, size_divisible, channel_order)
    assert prepared.tensor.dtype == np.float32 and prepared.tensor.shape == expected.shape
    assert np.array_equal(prepared.tensor, expected)
    h, w = image.shape[:2]
    assert prepared.original_size == (h, w)
    assert prepared.resized_size == shortest_edge_size(h, w, min_size, max_size)
    rh, rw = prepared.resized_size
    assert not prepared.tensor[:, :, rh:].any() and not prepared.tensor[:, :, :, rw:].any()
    if size_divisible:
        assert prepared.padded_size[0] % size_divisible == 0 and prepared.padded_size[1] % size_divisible == 0
    np.testing.assert_array_equal(image, before)  # the caller's image untouched


def test_preprocess_rejects_what_it_cannot_resize():
    image = photo("chelsea")
    with pytest.raises(ValueError, match="channel_order"):
        preprocess_shortest_edge(image, [0, 0, 0], [1, 1, 1], 800, 1333, 32, "BRG")
    with pytest.raises(ValueError, match="resizes to"):  # 1 x 3000 -> 0 x 1333 rows
        preprocess_shortest_edge(np.zeros((1, 3000, 3), np.uint8), [0, 0, 0], [1, 1, 1], 800, 1333, 32)
    with pytest.raises(ValueError):
        preprocess_shortest_edge(image.astype(np.float32), [0, 0, 0], [1, 1, 1], 800, 1333, 32)


# ---- mask paste ----------------------------------------------------------------------------

H, W = 97, 131


def paste_boxes(rng, n: int = 60) -> np.ndarray:
    """(n, 4) float32 boxes that detectron2 can paste (overlapping the image), of every size
    from under a pixel to larger than the image, fractional, crossing or touching borders."""
    x0 = rng.uniform(-10, W - 1, n)
    y0 = rng.uniform(-10, H - 1, n)
    widths = np.exp(rng.uniform(np.log(0.05), np.log(2 * W), n))
    heights = np.exp(rng.uniform(np.log(0.05), np.log(2 * H), n))
    boxes = np.stack([x0, y0, np.maximum(x0 + widths, 0.5), np.maximum(y0 + heights, 0.5)], axis=1)
    special = [[0, 0, W, H],  # the whole image
               [-40.3, -25.7, W + 33.1, H + 18.9],  # larger than the image on every side
               [0, 0, 1, 1], [W - 1, H - 1, W, H],  # one pixel in opposite corners
               [40.2, 30.1, 40.6, 30.5],  # under a pixel
               [12.5, 7.5, 13.5, 8.5],  # a pixel, on pixel edges
               [0, 10.25, W, 20.75], [10.75, 0, 20.25, H],  # full width, full height
               [W - 0.3, 5.1, W, 60.2], [3.3, H - 0.01, 50.7, H],  # slivers on the far borders
               [-5.5, -3.25, 4.75, 6.125],  # crossing the top left corner
               [20.000001, 30.999999, 80.5, 31.000002]]  # float32 edges next to integers
    boxes[:len(special)] = special
    return boxes.astype(np.float32)


def uniform_probs(rng, n, m):
    return rng.random((n, m, m), dtype=np.float32)


def smooth_probs(rng, n, m):
    """A mask head's typical output: a sigmoid of a smooth blob (ellipses of random size,
    place and sharpness), so that many cells sit near 0.5 along the edges."""
    cells = (np.arange(m) + 0.5) / m
    cx, cy = rng.uniform(0.2, 0.8, (2, n, 1, 1))
    ax, ay = rng.uniform(0.15, 0.6, (2, n, 1, 1))
    sharpness = rng.uniform(2, 20, (n, 1, 1))
    logits = sharpness * (1 - ((cells[None, None, :] - cx) / ax) ** 2 - ((cells[None, :, None] - cy) / ay) ** 2)
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def quantised_probs(rng, n, m):
    """Multiples of 1/8: large areas exactly at the threshold and interpolations onto it."""
    return (rng.integers(0, 9, (n, m, m)) / 8).astype(np.float32)


def near_threshold_probs(rng, n, m):
    """Within a few float32 ulps of 0.5 everywhere: every pixel's comparison depends on the
    last bit of the interpolation, so the arithmetic must be torch's own (fused) one."""
    return (0.5 + rng.integers(-6, 7, (n, m, m)) * 2.0 ** -24).astype(np.float32)


def mismatches(probs, boxes, threshold=0.5):
    expected = paste_masks_in_image(torch.from_numpy(probs), torch.from_numpy(boxes), (H, W), threshold).numpy()
    ours = paste_masks_grid_sample(probs, boxes, (H, W), threshold)
    assert ours.dtype == bool and ours.shape == expected.shape
    return int(np.count_nonzero(ours != expected)), expected.size


@pytest.mark.parametrize("m", [28, 14])
@pytest.mark.parametrize("probs_of", [uniform_probs, smooth_probs, quantised_probs])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_grid_sample_paste_is_detectron2s(probs_of, m, threshold):
    rng = np.random.default_rng(m)
    different = total = 0
    for _ in range(6):
        boxes = paste_boxes(rng)
        count, size = mismatches(probs_of(rng, len(boxes), m), boxes, threshold)
        different, total = different + count, total + size
    if FUSED_TORCH:
        assert different == 0, f"{different} of {total} pixels differ from detectron2"
    else:  # only probabilities within an ulp or two of the threshold can flip
        assert different <= total * 1e-6, f"{different} of {total} pixels differ from detectron2"


@pytest.mark.skipif(not FUSED_TORCH, reason="torch's scalar grid_sample rounds each operation on its own")
@pytest.mark.parametrize("m", [28, 14])
def test_grid_sample_paste_decides_last_bit_ties_as_torch(m):
    rng = np.random.default_rng(10 + m)
    for _ in range(3):
        boxes = paste_boxes(rng)
        count, total = mismatches(near_threshold_probs(rng, len(boxes), m), boxes)
        assert count == 0, f"{count} of {total} pixels differ from detectron2"


def test_grid_sample_crops_are_detectron2s_windows(monkeypatch):
    rng = np.random.default_rng(3)
    boxes = paste_boxes(rng, 80)
    probs = smooth_probs(rng, len(boxes), 28)
    masks = PastedMasks(probs, boxes, (H, W), mode="grid_sample")
    for i in range(len(boxes)):  # the window detectron2's CPU path pastes for each box alone
        _, (rows, cols) = _do_paste_mask(torch.from_numpy(probs[i:i + 1, None]), torch.from_numpy(boxes[i:i + 1]), H, W)
        assert tuple(masks.extents()[i]) == (cols.start, rows.start, cols.stop, rows.stop)
    extents = masks.extents()
    for (mask, x, y), extent in zip(masks, extents):
        assert (x, y, x + mask.shape[1], y + mask.shape[0]) == tuple(extent)
    assert masks.to_array().shape == (len(boxes), H, W)

    def no_crops(*args):
        raise AssertionError("extents() made a crop")

    monkeypatch.setattr(PastedMasks, "_grid_sample_window", no_crops)
    np.testing.assert_array_equal(PastedMasks(probs, boxes, (H, W), mode="grid_sample").extents(), extents)


def test_grid_sample_empty_boxes_give_empty_crops():
    boxes = np.array([[10, 10, 10, 30],  # no width
                      [10, 10, 30, 10],  # no height
                      [30, 10, 10, 30],  # inverted
                      [W, H, W, H],  # on the far corner
                      [W + 5, 10, W + 20, 30],  # right of the image
                      [-30, -20, -5, -2],  # above and left of it
                      [np.nan, 0, 10, 10], [0, 0, np.inf, 10],
                      [5, 5, 25, 25]], np.float32)
    probs = np.ones((len(boxes), 28, 28), np.float32)
    masks = PastedMasks(probs, boxes, (H, W), mode="grid_sample")
    assert (masks.extents()[:-1] == 0).all()
    for i in range(len(boxes) - 1):
        assert masks.crop(i).mask.shape == (0, 0)
    expected = paste_masks_in_image(torch.from_numpy(probs[-1:]), torch.from_numpy(boxes[-1:]), (H, W))[0].numpy()
    assert np.array_equal(masks.full(len(boxes) - 1), expected) and expected.sum() == 20 * 20
    assert paste_masks_grid_sample(np.zeros((0, 28, 28), np.float32), np.zeros((0, 4), np.float32), (H, W)).shape == (0, H, W)


def test_grid_sample_is_the_last_paste_mode():
    assert PASTE_MODES == ("torchvision", "aligned", "grid_sample")
    with pytest.raises(ValueError, match="paste mode"):
        PastedMasks(np.zeros((1, 28, 28), np.float32), np.zeros((1, 4), np.float32), (H, W), mode="detectron2")


def correctly_rounded(exact: Fraction) -> np.float32:
    """The float32 nearest to `exact`, ties to even."""
    nearest = np.float32(float(exact))  # float64 first: can be off by one float32 step
    candidates = [np.nextafter(nearest, np.float32(-np.inf)), nearest, np.nextafter(nearest, np.float32(np.inf))]
    return min(candidates, key=lambda v: (abs(Fraction(float(v)) - exact), int(v.view(np.uint32)) & 1))


def test_fused_multiply_add_rounds_once():
    rng = np.random.default_rng(7)
    a, b = rng.random((2, 2000), dtype=np.float32)
    c = rng.random(2000, dtype=np.float32) * np.float32(8)
    a[:1000] *= np.float32(2.0 ** -20)  # products far below the addend: the float64 sum rounds
    # float64 sums that land halfway between two float32s though the exact sum does not:
    # 2**-24 * (1 + 2**-23) * (1 - 2**-23) = 2**-24 - 2**-70, added to odd and even float32s
    a[-4:], b[-4:] = np.float32(2.0 ** -24 * (1 + 2.0 ** -23)), np.float32(1 - 2.0 ** -23)
    a[-2:] *= -1
    c[-4:] = [1 + 2.0 ** -23, 1.0, 1 + 2.0 ** -23, 1.0]
    ours = _fused_multiply_add(a, b, c)
    assert ours.dtype == np.float32
    for x, y, z, result in zip(a, b, c, ours):
        assert result == correctly_rounded(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))), (x, y, z)
    naive = (a.astype(np.float64) * b + c).astype(np.float32)
    assert (naive[-4:] != ours[-4:]).any()  # the ties are real: rounding twice gets some wrong

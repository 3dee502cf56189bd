"""engine.render: segmented images and their encoding."""

import cv2
import numpy as np
import pytest

from engine.detections import Detections
from engine.image_io import decode_image
from engine.render import (MASK_ALPHA, PALETTE, caption_boxes, caption_ink, caption_layout, encode_image,
                           format_label, instance_colour, render_detections)
from helpers import photo
from server_fixtures import FAKE_CLASSES, drawn_image, fake_detections


def test_no_detections_returns_an_equal_copy():
    coffee = photo("coffee")
    out = render_detections(coffee, Detections.empty(coffee.shape[:2]))
    assert out is not coffee and not np.shares_memory(out, coffee)
    np.testing.assert_array_equal(out, coffee)


def test_input_is_not_modified():
    astronaut = photo("astronaut")
    before = astronaut.copy()
    render_detections(astronaut, fake_detections(*astronaut.shape[:2]))
    np.testing.assert_array_equal(astronaut, before)


def test_overwrite_draws_on_the_image_itself_with_the_same_pixels():
    astronaut = photo("astronaut")
    det = fake_detections(*astronaut.shape[:2])
    expected = render_detections(astronaut, det)
    target = astronaut.copy()
    assert render_detections(target, det, overwrite=True) is target
    np.testing.assert_array_equal(target, expected)
    frozen = astronaut.copy()
    frozen.setflags(write=False)  # not writeable: drawn on a copy instead
    assert render_detections(frozen, det, overwrite=True) is not frozen
    bgr_target = expected.copy()
    assert encode_image(bgr_target, "png", overwrite=True) == encode_image(expected, "png")
    np.testing.assert_array_equal(bgr_target, expected[:, :, ::-1])  # converted in place


def test_mask_is_blended_in_its_colour_and_background_untouched():
    coffee = photo("coffee")
    h, w = coffee.shape[:2]
    det = fake_detections(h, w)
    out = render_detections(coffee, det)
    assert out.shape == coffee.shape and out.dtype == np.uint8
    # Inside instance 0's disc, away from lines and captions: a 50/50 blend with colour 0.
    cy, cx = h // 2, w // 2
    patch = (slice(cy - 10, cy + 10), slice(cx + 20, cx + 40))
    expected = coffee[patch] * (1 - MASK_ALPHA) + np.array(instance_colour(0)) * MASK_ALPHA
    assert np.abs(out[patch].astype(float) - expected).max() <= 1.0
    # Far from every box, mask and caption: unchanged.
    free = (slice(h // 2 + 20, 3 * h // 4 - 20), slice(10, w // 4 - 20))
    assert not det.masks[:, free[0], free[1]].any()
    np.testing.assert_array_equal(out[free], coffee[free])


def test_box_outline_is_drawn_in_the_instance_colour():
    img = np.full((300, 400, 3), 128, np.uint8)
    det = fake_detections(300, 400)
    out = render_detections(img, det)
    x1, y1, x2, y2 = det.boxes[0].round().astype(int)
    left_edge = out[y1 + 40:y2 - 40, x1]  # below the caption, on the left side of box 0
    assert (np.abs(left_edge.astype(int) - instance_colour(0)).max(axis=1) <= 2).mean() > 0.9


def test_caption_background_is_filled_above_the_box():
    img = np.full((480, 640, 3), 128, np.uint8)
    det = fake_detections(480, 640)
    out = render_detections(img, det)
    x1, y1 = det.boxes[0].round().astype(int)[:2]
    caption_strip = out[y1 - 12:y1 - 4, x1 + 2:x1 + 80]
    share = (np.abs(caption_strip.astype(int) - instance_colour(0)).max(axis=-1) <= 2).mean()
    assert share > 0.5  # the filled background, with text on top of part of it


def test_instances_get_distinct_colours():
    colours = {instance_colour(i) for i in range(20)}
    assert len(colours) == 20
    # and neighbours are far apart, so adjacent instances stay distinguishable
    for i in range(19):
        assert np.abs(np.subtract(instance_colour(i), instance_colour(i + 1))).sum() > 100
    assert PALETTE.dtype == np.uint8


@pytest.mark.parametrize("shape", [(16, 16), (1, 1), (3, 200), (200, 3), (3000, 4000)])
def test_any_image_size(shape):
    h, w = shape
    img = np.full((h, w, 3), 90, np.uint8)
    out = render_detections(img, fake_detections(h, w))
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


def test_captions_scale_with_the_image():
    def caption_height(h, w):
        img = np.zeros((h, w, 3), np.uint8)
        det = fake_detections(h, w)
        out = render_detections(img, det)
        x1, y1 = det.boxes[0].round().astype(int)[:2]
        column = out[: y1, x1 + 3]  # above box 0: only its caption is drawn there
        return int((np.abs(column.astype(int) - instance_colour(0)).max(axis=-1) <= 2).sum())

    small, large = caption_height(240, 320), caption_height(2400, 3200)
    assert small >= 8
    assert 5 * small < large < 15 * small


def test_more_detections_than_palette_colours():
    h, w = 64, 64
    n = len(PALETTE) + 5
    masks = np.zeros((n, h, w), bool)
    masks[:, 10:20, 10:20] = True
    det = Detections(boxes=np.tile(np.array([[10, 10, 20, 20]], np.float32), (n, 1)),
                     scores=np.linspace(0.99, 0.5, n).astype(np.float32),
                     class_ids=np.ones(n, np.int64), labels=["thing"] * n, masks=masks, image_size=(h, w))
    assert render_detections(np.zeros((h, w, 3), np.uint8), det).shape == (h, w, 3)


def test_boxes_outside_the_image_are_clipped_by_drawing():
    h, w = 50, 80
    det = fake_detections(h, w)
    det.boxes[0] = [-30, -20, w + 40, h + 10]
    assert render_detections(np.zeros((h, w, 3), np.uint8), det).shape == (h, w, 3)


def test_rejects_non_rgb_uint8():
    with pytest.raises(ValueError):
        render_detections(np.zeros((10, 10), np.uint8), Detections.empty((10, 10)))
    with pytest.raises(ValueError):
        render_detections(np.zeros((10, 10, 3), np.float32), Detections.empty((10, 10)))


@pytest.mark.parametrize("name, score, label", [
    ("horse", 0.9999, "horse 100%"), ("person", 0.53, "person 53%"),
    ("traffic light", np.float32(0.897), "traffic light 90%"), ("cat", 0.004, "cat 0%"),
])
def test_format_label(name, score, label):
    assert format_label(name, score) == label


def test_png_encoding_round_trips_exactly():
    astronaut = photo("astronaut")
    np.testing.assert_array_equal(decode_image(encode_image(astronaut, "png")), astronaut)


def test_jpeg_encoding_is_rgb_and_respects_quality():
    astronaut = photo("astronaut")
    high = encode_image(astronaut, "jpeg", jpeg_quality=95)
    low = encode_image(astronaut, "jpeg", jpeg_quality=30)
    assert high[:3] == b"\xff\xd8\xff" and len(low) < len(high)
    decoded = decode_image(encode_image(astronaut, "jpeg"))
    assert decoded.shape == astronaut.shape
    assert np.abs(decoded.astype(int) - astronaut.astype(int)).mean() < 4  # channel order kept


def test_encode_rejects_unknown_format():
    with pytest.raises(ValueError):
        encode_image(np.zeros((4, 4, 3), np.uint8), "gif")


def test_rendered_samples_for_a_human(tmp_path):
    astronaut = photo("astronaut")
    coffee = photo("coffee")
    """Writes samples (see test-artifacts/render when RENDER_SAMPLES_DIR is set)."""
    import os
    from pathlib import Path

    out_dir = Path(os.environ.get("RENDER_SAMPLES_DIR", tmp_path))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, img in [("astronaut", astronaut), ("coffee", coffee), ("drawn", drawn_image())]:
        rendered = render_detections(img, fake_detections(*img.shape[:2]))
        data = encode_image(rendered, "png")
        (out_dir / f"{name}.png").write_bytes(data)
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == img.shape


def test_overlapping_masks_show_the_best_instance_on_top():
    h, w = 40, 40
    masks = np.zeros((2, h, w), bool)
    masks[:, 10:30, 10:30] = True  # identical masks: only the colour of instance 0 may show
    det = Detections(boxes=np.array([[10, 10, 30, 30]] * 2, np.float32), scores=np.array([0.9, 0.8], np.float32),
                     class_ids=np.array([1, 2], np.int64), labels=["a", "b"], masks=masks, image_size=(h, w))
    img = np.full((h, w, 3), 100, np.uint8)
    out = render_detections(img, det)
    expected = np.rint(100 * (1 - MASK_ALPHA) + np.array(instance_colour(0)) * MASK_ALPHA)
    assert np.abs(out[20, 20].astype(int) - expected).max() <= 1


def test_masks_that_do_not_fit_the_image_are_refused():
    det = fake_detections(30, 40)
    with pytest.raises(ValueError, match="masks"):
        render_detections(np.zeros((40, 30, 3), np.uint8), det)


# Caption layout: captions never overlap, never leave the image, and read on any background.


def box_detections(h: int, w: int, boxes, labels=None) -> Detections:
    """Detections for (N, 4) x1, y1, x2, y2 boxes, highest score first, an ellipse mask in each."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = len(boxes)
    masks = np.zeros((n, h, w), np.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes):
        centre = (round((x1 + x2) / 2), round((y1 + y2) / 2))
        cv2.ellipse(mask, centre, (round((x2 - x1) / 2), round((y2 - y1) / 2)), 0, 0, 360, 1, cv2.FILLED)
    labels = labels or [FAKE_CLASSES[1 + i % (len(FAKE_CLASSES) - 1)] for i in range(n)]
    return Detections(boxes=boxes, scores=np.linspace(0.99, 0.5, n).astype(np.float32),
                      class_ids=np.ones(n, np.int64), labels=list(labels), masks=masks.astype(bool),
                      image_size=(h, w))


def crowded_boxes(h: int, w: int, n: int, seed: int = 0) -> np.ndarray:
    """n random boxes, many overlapping, all within the (h, w) image."""
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, 0.8 * w, n), rng.uniform(0, 0.8 * h, n)
    bw, bh = rng.uniform(0.05, 0.3, n) * w, rng.uniform(0.05, 0.3, n) * h
    return np.stack([x1, y1, np.minimum(x1 + bw, w - 1), np.minimum(y1 + bh, h - 1)], 1)


def layout_of(det: Detections):
    texts = [format_label(label, score) for label, score in zip(det.labels, det.scores)]
    return caption_layout(texts, det.boxes, det.image_size)


def assert_inside_and_apart(rects, image_size):
    """Every rectangle (half-open x1, y1, x2, y2) inside the image, no two intersecting."""
    h, w = image_size
    rects = np.array(rects, np.int64).reshape(-1, 4)
    assert (rects[:, :2] >= 0).all() and (rects[:, 2] <= w).all() and (rects[:, 3] <= h).all(), rects
    assert (rects[:, 2] > rects[:, 0]).all() and (rects[:, 3] > rects[:, 1]).all()
    a, b = rects[:, None].T, rects[None, :].T  # (4, 1, N) and (4, N, 1): every pair
    meet = (a[0] < b[2]) & (b[0] < a[2]) & (a[1] < b[3]) & (b[1] < a[3])
    np.fill_diagonal(meet, False)
    assert not meet.any(), [(rects[i].tolist(), rects[j].tolist()) for i, j in zip(*np.nonzero(meet))][:3]


def backing_share(out: np.ndarray, rect, colour) -> float:
    """The share of a caption rectangle's pixels in its backing colour (the rest: the text)."""
    x1, y1, x2, y2 = rect
    return float((np.abs(out[y1:y2, x1:x2].astype(int) - colour).max(axis=-1) <= 2).mean())


def contrast_ratio(a, b) -> float:
    """WCAG 2 contrast ratio of two sRGB colours, 1 to 21."""
    def luminance(rgb):
        c = np.asarray(rgb, float) / 255
        c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]
    lo, hi = sorted([luminance(a), luminance(b)])
    return (hi + 0.05) / (lo + 0.05)


SAME_TOP = np.array([[20 + 25 * i, 60, 60 + 25 * i, 200] for i in range(12)])  # 12 boxes, one top edge


@pytest.mark.parametrize("h, w, boxes", [
    (240, 320, crowded_boxes(240, 320, 30)),
    (240, 320, crowded_boxes(240, 320, 30, seed=1)),
    (240, 360, SAME_TOP),
    (480, 640, crowded_boxes(480, 640, 100, seed=2)),  # max_detections' default
], ids=["30-overlapping", "30-overlapping-again", "12-share-a-top-edge", "100-on-640x480"])
def test_crowded_captions_never_overlap_and_stay_inside(h, w, boxes):
    det = box_detections(h, w, boxes)
    layout = layout_of(det)
    assert None not in layout.rects  # every detection keeps its caption
    assert_inside_and_apart(layout.rects, (h, w))
    out = render_detections(np.full((h, w, 3), 128, np.uint8), det)
    for i, rect in enumerate(layout.rects):  # drawn where laid out, none hidden by another
        assert backing_share(out, rect, instance_colour(i)) > 0.5, i


def test_captions_keep_their_preferred_spots_in_order():
    size = (20, 8)  # width, height of every caption
    box = [50, 40, 100, 80]
    above, inside, below = (50, 32, 70, 40), (50, 40, 70, 48), (50, 81, 70, 89)
    assert caption_boxes([size] * 3, [box] * 3, (200, 200)) == [above, inside, below]
    # Once those are taken, the nearest free place to the first choice: beside it.
    fourth = caption_boxes([size] * 4, [box] * 4, (200, 200))[3]
    assert_inside_and_apart(caption_boxes([size] * 4, [box] * 4, (200, 200)), (200, 200))
    assert abs(fourth[0] - above[0]) + abs(fourth[1] - above[1]) <= size[0]


def test_neighbouring_captions_leave_a_gap():
    rects = caption_boxes([(20, 8)] * 2, [[50, 40, 100, 80], [60, 40, 100, 80]], (200, 200), gap=2)
    assert rects[0] == (50, 32, 70, 40)
    second = rects[1]
    assert second[0] >= 72 or second[2] <= 48 or second[1] >= 42 or second[3] <= 30


@pytest.mark.parametrize("h, w, n", [(480, 640, 11), (640, 200, 11), (120, 160, 6)])
def test_captions_at_the_image_edges_and_corners_stay_inside(h, w, n):
    """The first n of: boxes in the four corners, as large as the image and larger, hanging
    off a corner, along each edge (at 120x160 the text is at its smallest and 6 fit)."""
    edge_boxes = [
        [0, 0, w / 3, h / 3], [2 * w / 3, 0, w, h / 3], [0, 2 * h / 3, w / 3, h],
        [2 * w / 3, 2 * h / 3, w, h],
        [0, 0, w, h], [-30, -20, w + 40, h + 10], [w - 3, h - 3, w + 50, h + 50],
        [w / 3, 0, 2 * w / 3, h / 4], [w / 3, 3 * h / 4, 2 * w / 3, h],
        [0, h / 3, w / 4, 2 * h / 3], [3 * w / 4, h / 3, w, 2 * h / 3],
    ]
    det = box_detections(h, w, edge_boxes[:n])
    layout = layout_of(det)
    assert None not in layout.rects
    assert_inside_and_apart(layout.rects, (h, w))


@pytest.mark.parametrize("corner", [(0, 0), (39, 0), (0, 29), (39, 29)])
def test_captions_stay_inside_a_tiny_image(corner):
    x, y = corner
    boxes = [[x, y, x + 5, y + 5], [0, 0, 40, 30], [x - 10, y - 10, x + 10, y + 10]]
    rects = caption_boxes([(30, 8), (25, 8), (12, 6)], boxes, (30, 40), gap=1)
    assert_inside_and_apart(rects, (30, 40))
    # A caption larger than the image has nowhere to go, and rendering skips it.
    assert caption_boxes([(41, 8), (20, 31)], boxes[:2], (30, 40)) == [None, None]
    det = box_detections(30, 40, boxes)
    assert render_detections(np.zeros((30, 40, 3), np.uint8), det).shape == (30, 40, 3)


def test_more_captions_than_room_still_stay_inside():
    """The documented last resort: with no free spot left, captions overlap but stay inside."""
    h, w = 40, 60
    rects = caption_boxes([(25, 10)] * 40, crowded_boxes(h, w, 40), (h, w))
    assert_inside_and_apart(rects[:4], (h, w))  # while there is room
    rects = np.array(rects)
    assert (rects[:, :2] >= 0).all() and (rects[:, 2] <= w).all() and (rects[:, 3] <= h).all()


def test_crowded_images_get_smaller_text_but_never_unreadable():
    boxes = crowded_boxes(480, 640, 100, seed=2)
    texts = ["traffic light 90%"] * 100
    assert caption_layout(texts[:3], boxes[:3], (480, 640)).font_scale == pytest.approx(0.55)
    crowded = caption_layout(texts, boxes, (480, 640)).font_scale
    assert 0.4 <= crowded < 0.55


def test_caption_text_contrasts_with_its_backing_for_every_palette_colour():
    """WCAG AA's 4.5:1 for every palette colour, both by rule and in the drawn pixels."""
    for colour in [*PALETTE.tolist(), (0, 0, 0), (255, 255, 255), (118, 118, 118), (119, 119, 119)]:
        assert contrast_ratio(caption_ink(colour), colour) >= 4.5, colour
    n = len(PALETTE)
    h, w = 720, 960
    corners = [(20 + 160 * (i % 6), 40 + 90 * (i // 6)) for i in range(n)]  # 6 across, 8 down
    boxes = [[x, y, x + 130, y + 70] for x, y in corners]
    det = box_detections(h, w, boxes)
    out = render_detections(np.full((h, w, 3), 128, np.uint8), det)
    for i, (x1, y1, x2, y2) in enumerate(layout_of(det).rects):
        colour = instance_colour(i)
        assert backing_share(out, (x1, y1, x2, y2), colour) > 0.5
        pixels = out[y1:y2, x1:x2].reshape(-1, 3).astype(int)
        ink = pixels[np.abs(pixels - colour).sum(axis=1).argmax()]  # the text's own colour
        assert contrast_ratio(ink, colour) >= 4.5, (i, colour, ink)


def test_astronaut_captions_through_the_demo_model(demo_model_dir):
    """The reported case: 11 detections on the astronaut photo, two captions overlapped and
    one was unreadable at the image's edge."""
    from engine import Engine

    astronaut = photo("astronaut")
    det = Engine.load(demo_model_dir).predict(astronaut)
    assert len(det.scores) == 11
    layout = layout_of(det)
    assert None not in layout.rects
    assert_inside_and_apart(layout.rects, astronaut.shape[:2])
    out = render_detections(astronaut, det)
    for i, (rect, box) in enumerate(zip(layout.rects, det.boxes.round().astype(int))):
        assert backing_share(out, rect, instance_colour(i)) > 0.5, i  # a solid backing
        x1, y1, x2, y2 = rect
        assert abs(x1 - max(box[0], 0)) <= 60 and y2 >= box[1] - 40 and y1 <= box[3] + 1, (i, rect, box)


# Rendering from crops (the engine's PastedMasks) is rendering the full-size masks.


def reference_blend(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The tint from full-size (N, H, W) masks, plainly: each pixel takes the colour of the
    best-scoring instance covering it, blended at MASK_ALPHA."""
    label = np.zeros(image.shape[:2], np.int64)
    for i in reversed(range(len(masks))):
        label[masks[i]] = i + 1
    colours = PALETTE[(np.maximum(label, 1) - 1) % len(PALETTE)]
    tinted = cv2.addWeighted(image, 1.0 - MASK_ALPHA, colours, MASK_ALPHA, 0.0)
    return np.where(label[:, :, None] > 0, tinted, image)


@pytest.mark.parametrize("n", [1, 12, 300])  # 300: past the 8-bit label map
def test_masks_rendered_from_crops_are_the_full_masks(n):
    from engine.masks import PastedMasks
    from engine.render import _blend_masks

    rng = np.random.default_rng(n)
    image = photo("chelsea")
    h, w = image.shape[:2]
    x0, y0 = rng.uniform(-30, w, n), rng.uniform(-30, h, n)
    boxes = np.stack([x0, y0, x0 + rng.uniform(1, w / 2, n), y0 + rng.uniform(1, h / 2, n)], axis=1)
    boxes[0] = [0, 0, w, h]
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    boxes = boxes.astype(np.float32)
    masks = PastedMasks(rng.random((n, 28, 28)).astype(np.float32), boxes, (h, w))
    blended = image.copy()
    _blend_masks(blended, masks)
    np.testing.assert_array_equal(blended, reference_blend(image, masks.to_array()))
    if n > 12:
        return  # the captions of hundreds of instances take a while to lay out, and are not the point
    scores = np.linspace(0.99, 0.3, n).astype(np.float32)
    common = dict(boxes=boxes, scores=scores, class_ids=np.ones(n, np.int64), labels=["cat"] * n, image_size=(h, w))
    from_crops = render_detections(image, Detections(masks=masks, **common))
    from_full = render_detections(image, Detections(masks=masks.to_array(), **common))
    np.testing.assert_array_equal(from_crops, from_full)


def test_a_full_image_of_captions_stops_searching(monkeypatch):
    """1000 detections (the API's most) on a 600x400 image: once the captions find no room
    around them, later ones as large overlap at their first choice instead of searching
    every corner again (that made a 1000-detection PNG answer take minutes). Counted as
    the corners examined, not timed: 10 M for 300 captions before, under 1 M now."""
    import engine.render as render

    rng = np.random.default_rng(0)
    h, w, n = 400, 600, 300
    xy = rng.uniform(0, [w - 40, h - 40], (n, 2))
    boxes = np.c_[xy, np.minimum(xy + rng.uniform(10, 120, (n, 2)), [w - 1, h - 1])]
    sizes = [(int(rng.integers(50, 90)), 14) for _ in range(n)]
    examined = []
    first_free = render._first_free
    monkeypatch.setattr(render, "_first_free", lambda corners, *a: examined.append(len(corners)) or first_free(corners, *a))
    rects = caption_boxes(sizes, boxes, (h, w), gap=1)
    assert len(rects) == n and all(0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h for x1, y1, x2, y2 in rects)
    apart = sum(1 for i, a in enumerate(rects) if not any(
        a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3] for b in rects[:i]))
    assert apart > 140, f"only {apart} of {n} captions found a free place"  # about half fit
    print(f"{apart} of {n} captions apart, {sum(examined)} corners examined")
    assert sum(examined) < 2_000_000, f"{sum(examined)} corners examined"

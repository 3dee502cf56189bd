"""engine.render: segmented images and their encoding."""

import cv2
import numpy as np
import pytest

from engine.detections import Detections
from engine.image_io import decode_image
from engine.render import (MASK_ALPHA, PALETTE, encode_image, format_label, instance_colour,
                           render_detections)
from server_fixtures import drawn_image, fake_detections, photo


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

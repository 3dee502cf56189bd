"""The synthetic scene generator behind the demo model and the semantic tests."""

import numpy as np
import pytest

from demo.shapes import (
    CLASS_NAMES,
    MIN_VISIBLE_FRACTION,
    TRAIN_SEED_START,
    EVAL_SEED_START,
    coco_ground_truth,
    generate_scene,
    masks_to_boxes,
    reference_scale,
)

SEEDS = range(40)


def test_class_names_are_the_interface():
    assert CLASS_NAMES == ["__background__", "circle", "square", "triangle"]
    assert EVAL_SEED_START < TRAIN_SEED_START


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = generate_scene(7), generate_scene(7), generate_scene(8)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(a.image, c.image)
    rng_scene = generate_scene(np.random.default_rng(7))
    np.testing.assert_array_equal(rng_scene.image, a.image)


@pytest.mark.parametrize("seed", SEEDS)
def test_scene_ground_truth_is_consistent(seed):
    scene = generate_scene(seed)
    n = len(scene.class_ids)
    assert scene.image.shape == (240, 320, 3) and scene.image.dtype == np.uint8
    assert scene.masks.shape == (n, 240, 320) and scene.masks.dtype == bool
    assert scene.boxes.shape == (n, 4) and scene.boxes.dtype == np.float32
    assert 2 <= n <= 6
    assert set(scene.class_ids.tolist()) <= {1, 2, 3}
    # visible masks do not overlap: each pixel belongs to at most one instance
    assert scene.masks.sum(axis=0).max() <= 1
    # boxes are tight around the visible masks, pixel-edge convention
    for mask, box in zip(scene.masks, scene.boxes):
        rows, cols = np.nonzero(mask)
        assert tuple(box) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
    visible = scene.masks.reshape(n, -1).sum(axis=1)
    assert np.all(visible >= MIN_VISIBLE_FRACTION * scene.full_areas)
    assert np.all(visible >= 80)
    sizes = np.maximum(scene.boxes[:, 2] - scene.boxes[:, 0], scene.boxes[:, 3] - scene.boxes[:, 1])
    assert sizes.max() <= 240


def test_objects_stand_out_from_their_surroundings():
    # Mean colour inside each visible mask differs clearly from a ring just outside it.
    import cv2

    for seed in SEEDS:
        scene = generate_scene(seed)
        img = scene.image.astype(np.float32)
        for mask in scene.masks:
            m = mask.astype(np.uint8)
            core = cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool)
            ring = cv2.dilate(m, np.ones((5, 5), np.uint8)).astype(bool) & ~cv2.dilate(
                m, np.ones((3, 3), np.uint8)).astype(bool)
            if core.sum() < 10 or ring.sum() < 10:
                continue
            assert np.linalg.norm(img[core].mean(0) - img[ring].mean(0)) > 20, seed


def test_scenes_cover_every_class_sizes_and_occlusion():
    classes, sizes, occluded = set(), [], 0
    for seed in range(100):
        scene = generate_scene(seed)
        classes |= set(scene.labels)
        sizes += list(np.maximum(scene.boxes[:, 2] - scene.boxes[:, 0], scene.boxes[:, 3] - scene.boxes[:, 1]))
        occluded += int(np.sum(scene.masks.reshape(len(scene.masks), -1).sum(1) < scene.full_areas))
    assert classes == {"circle", "square", "triangle"}
    assert min(sizes) < 30 and max(sizes) > 150
    assert occluded > 20


@pytest.mark.parametrize("size", [(640, 480), (160, 120), (1000, 750)])
def test_other_sizes_draw_the_same_layout_scaled(size):
    w, h = size
    small, big = generate_scene(3), generate_scene(3, w, h)
    assert big.image.shape == (h, w, 3)
    assert big.labels == small.labels
    np.testing.assert_allclose(big.boxes * (320 / w), small.boxes, atol=1.5)
    again = small.rendered_at(w, h)
    np.testing.assert_array_equal(again.image, big.image)


def test_reference_scale_follows_the_model_resize_rule():
    assert reference_scale(320, 240) == 1.0
    assert reference_scale(640, 480) == 0.5
    assert reference_scale(240, 320) == 1.0
    portrait = generate_scene(5, 480, 640)
    assert portrait.image.shape == (640, 480, 3)


def test_rendering_at_another_aspect_ratio_is_refused():
    with pytest.raises(ValueError):
        generate_scene(1).rendered_at(320, 320)


def test_masks_to_boxes_handles_empty_masks():
    masks = np.zeros((2, 5, 6), bool)
    masks[0, 1:3, 2:5] = True
    np.testing.assert_array_equal(masks_to_boxes(masks), [[2, 1, 5, 3], [0, 0, 0, 0]])
    assert masks_to_boxes(np.zeros((0, 5, 6), bool)).shape == (0, 4)


def test_coco_ground_truth():
    pytest.importorskip("pycocotools")
    from pycocotools import mask as mask_utils

    scenes = [generate_scene(s) for s in range(3)]
    gt = coco_ground_truth(scenes)
    assert [c["name"] for c in gt["categories"]] == CLASS_NAMES[1:]
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3]
    assert [im["id"] for im in gt["images"]] == [1, 2, 3]
    assert len(gt["annotations"]) == sum(len(s.class_ids) for s in scenes)
    ann = gt["annotations"][0]
    rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), scenes[0].masks[0])
    x1, y1, x2, y2 = scenes[0].boxes[0]
    assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1]
    assert ann["area"] == scenes[0].masks[0].sum()

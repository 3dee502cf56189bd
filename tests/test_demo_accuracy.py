"""The committed demo model (demo/model) through the serving engine: size, classes, accuracy.

The full measurement (300 held-out scenes, COCOeval) is `python demo/evaluate.py
--model-dir demo/model` and its figures are in demo/RESULTS.md; here a different sample of
100 held-out scenes must meet the demo model's accuracy targets themselves (its
figures on this sample: demo/RESULTS.md).
"""

from pathlib import Path

import numpy as np
import pytest

from demo.evaluate import engine_predictor, evaluate, held_out_scenes
from demo.shapes import CLASS_NAMES, generate_scene

MODEL_DIR = Path(__file__).resolve().parent.parent / "demo" / "model"


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("pycocotools")
    from engine import Engine

    return Engine.load(MODEL_DIR, threads=2)


def test_model_directory_is_small_and_names_the_shapes():
    import json

    files = [f for f in MODEL_DIR.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 10 * 1024 * 1024
    config = json.loads((MODEL_DIR / "model.json").read_text())
    assert config["class_names"] == CLASS_NAMES
    assert config["weights"]["trained"] is True
    assert config["transform"]["min_size"] == 240 and config["transform"]["max_size"] == 320


def test_coco_accuracy_on_held_out_scenes(engine):
    # Seeds after the first 300 held-out scenes, so this sample is not the README's.
    figures = evaluate(engine_predictor(engine), held_out_scenes(100, start=2_000_000))
    assert figures["bbox"]["AP"] >= 0.85, figures
    assert figures["segm"]["AP"] >= 0.88, figures
    assert figures["segm"]["AP50"] >= 0.98, figures


@pytest.mark.parametrize("size", [(320, 240), (640, 480), (240, 320)])
def test_every_shape_is_found_with_its_label(engine, size):
    """Each drawn object: a detection of the right class with mask IoU >= 0.5 (score >= 0.5)."""
    found = total = 0
    for seed in range(2_100_000, 2_100_010):
        scene = generate_scene(seed, *size)
        det = engine.predict(scene.image, score_threshold=0.5)
        assert det.masks.shape[1:] == scene.image.shape[:2]
        for mask, cid in zip(scene.masks, scene.class_ids):
            ious = [(mask & m).sum() / (mask | m).sum() for m, c in zip(det.masks, det.class_ids) if c == cid]
            found += bool(ious) and max(ious) >= 0.5
            total += 1
    assert found >= 0.95 * total, (found, total)


def test_a_plain_background_gives_no_confident_detection(engine):
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(128, 4, (240, 320, 3)), 0, 255).astype(np.uint8)
    det = engine.predict(image, score_threshold=0.5)
    assert len(det) == 0

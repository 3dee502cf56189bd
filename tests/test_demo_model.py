"""The demo model's architecture, its training schedule and the COCO evaluation harness.

The accuracy of the committed model through the engine is checked by test_demo_accuracy.py.
"""

import numpy as np
import pytest

from demo.evaluate import Prediction, evaluate, held_out_scenes
from demo.shapes import CLASS_NAMES


def test_evaluate_scores_a_perfect_predictor_one_and_an_empty_one_zero():
    scenes = held_out_scenes(8)
    truth = {id(s.image): s for s in scenes}

    def perfect(image):
        s = truth[id(image)]
        return Prediction(s.boxes, np.ones(len(s.boxes), np.float32), s.class_ids, s.masks)

    def nothing(image):
        h, w = image.shape[:2]
        return Prediction(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                          np.zeros((0, h, w), bool))

    best = evaluate(perfect, scenes)
    assert best["bbox"]["AP"] == pytest.approx(1.0) and best["segm"]["AP"] == pytest.approx(1.0)
    worst = evaluate(nothing, scenes)
    assert worst["bbox"]["AP"] == 0.0 and worst["segm"]["AP50"] == 0.0
    assert best["instances"] == sum(len(s.class_ids) for s in scenes)


def test_held_out_scenes_are_not_training_scenes():
    from demo.shapes import EVAL_SEED_START, TRAIN_SEED_START

    assert EVAL_SEED_START + 100_000 < TRAIN_SEED_START


def test_learning_rate_schedule():
    from demo.train_shapes import lr_at

    assert lr_at(0, 0.0, 1e-3, 100, 1000) == pytest.approx(1e-5)
    assert lr_at(100, 0.1, 1e-3, 100, 1000) == pytest.approx(1e-3)
    mid = lr_at(550, 0.55, 1e-3, 100, 1000)
    assert mid == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert lr_at(999, 1.0, 1e-3, 100, 1000) == pytest.approx(1e-5)
    # a time-bound run reaches the end of the cosine at fewer steps
    assert lr_at(500, 1.0, 1e-3, 100, 1000) == pytest.approx(1e-5)


def test_training_batches_are_deterministic_and_fit_the_model_frame():
    pytest.importorskip("torch")
    from demo.train_shapes import training_batch

    images, targets = training_batch(3, 4)
    again, _ = training_batch(3, 4)
    for a, b, t in zip(images, again, targets):
        assert a.equal(b)
        h, w = a.shape[1:]
        assert min(h, w) <= 240 and max(h, w) <= 320 and (min(h, w) == 240 or max(h, w) == 320)
        assert t["boxes"].shape[0] == t["labels"].shape[0] == t["masks"].shape[0] >= 2


def test_shapes_model_architecture(torch_cpu):
    from demo.shapes_model import build_shapes_model

    torch = torch_cpu
    torch.manual_seed(0)
    model = build_shapes_model()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 2.4e6  # the exported float32 graphs must stay under 10 MB
    assert model.roi_heads.box_predictor.cls_score.out_features == len(CLASS_NAMES)
    assert model.transform.min_size == (240,) and model.transform.max_size == 320
    assert model.roi_heads.detections_per_img == 100

    # A state_dict round trip rebuilds the same network.
    other = build_shapes_model()
    other.load_state_dict(model.state_dict())
    model.eval(), other.eval()
    x = torch.rand(3, 240, 320)
    with torch.no_grad():
        a, b = model([x])[0], other([x])[0]
    assert a["boxes"].shape == b["boxes"].shape
    torch.testing.assert_close(a["scores"], b["scores"])


def test_one_training_step_runs(torch_cpu):
    from demo.shapes_model import build_shapes_model
    from demo.train_shapes import training_batch

    torch = torch_cpu
    torch.manual_seed(0)
    model = build_shapes_model().train()
    images, targets = training_batch(0, 2)
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())

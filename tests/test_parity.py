"""The engine against torchvision eager: same weights, same photos, same thresholds, on
each CPU backend at FP32 (ONNX Runtime, OpenVINO).

Criteria: >= 98% of detections matched both ways (same class, box IoU >= 0.99),
matched scores within 1e-3, mean IoU of matched masks >= 0.98.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from helpers import mask_iou, match_detections, photo, resized_photo, torchvision_predict
from engine import Engine

CPU_BACKENDS = ["onnxruntime-cpu", "openvino"]


@functools.cache
def load(model_dir, backend: str) -> Engine:
    """One engine per model directory and backend for the whole module (OpenVINO compiles
    each graph for this CPU when it loads)."""
    return Engine.load(model_dir, backend=backend, precision="fp32")


_references: dict = {}


def reference(model, image_key, image: np.ndarray, threshold: float, max_detections: int = 100) -> dict:
    """torchvision's output, computed once for every backend compared with it (R50 eager
    takes seconds a photo on 2 cores)."""
    key = (id(model), image_key, threshold, max_detections)
    if key not in _references:
        _references[key] = torchvision_predict(model, image, threshold, max_detections)
    return _references[key]


@pytest.fixture(scope="module", autouse=True)
def _free_engines():
    yield
    load.cache_clear()
    _references.clear()


@pytest.fixture(params=CPU_BACKENDS)
def backend(request) -> str:
    return request.param


def assert_parity(ref: dict, det, image_shape) -> None:
    h, w = image_shape[:2]
    assert det.boxes.shape == (len(det), 4) and det.boxes.dtype == np.float32
    assert det.masks.shape == (len(det), h, w) and det.masks.dtype == bool
    assert len(det.labels) == len(det)
    assert np.all(np.diff(det.scores) <= 0), "detections must be sorted by score"
    pairs, fraction = match_detections(ref, det)
    assert fraction >= 0.98, f"only {fraction:.3f} of {len(ref['scores'])} ref / {len(det)} engine detections matched"
    if pairs:
        score_diff = max(abs(float(ref["scores"][i]) - float(det.scores[j])) for i, j in pairs)
        assert score_diff <= 1e-3, f"matched scores differ by {score_diff}"
        mean_mask_iou = np.mean([mask_iou(ref["masks"][i], det.masks[j]) for i, j in pairs])
        assert mean_mask_iou >= 0.98, f"mean mask IoU {mean_mask_iou:.4f}"


@pytest.mark.parametrize("arch", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_r50_parity_on_photos(arch, backend, r50_models, r50_model_dirs):
    model = r50_models(arch)
    engine = load(r50_model_dirs(arch), backend)
    total = 0
    for name, threshold in (("astronaut", 0.5), ("coffee", 0.3)):
        image = photo(name)
        ref = reference(model, name, image, threshold)
        det = engine.predict(image, score_threshold=threshold)
        assert_parity(ref, det, image.shape)
        total += len(det)
    assert total > 20, "the random model should produce detections to compare"


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "motorcycle"])
@pytest.mark.parametrize("threshold,max_detections", [(0.5, 100), (0.05, 100), (0.3, 7)])
def test_small_custom_model_parity(name, threshold, max_detections, backend, small_model, small_model_dir):
    image = photo(name)
    engine = load(small_model_dir, backend)
    ref = reference(small_model, name, image, threshold, max_detections)
    det = engine.predict(image, score_threshold=threshold, max_detections=max_detections)
    assert len(det) <= max_detections
    assert_parity(ref, det, image.shape)


@pytest.mark.parametrize("shape", [(37, 53), (500, 200), (1200, 1600)])
def test_small_model_parity_on_odd_sizes(shape, backend, small_model, small_model_dir):
    """Resize rule, padding and box scaling for sizes other than the photos'."""
    image = resized_photo("coffee", shape)
    engine = load(small_model_dir, backend)
    ref = reference(small_model, ("coffee", shape), image, 0.3)
    det = engine.predict(image, score_threshold=0.3)
    assert_parity(ref, det, image.shape)
    assert np.all(det.boxes[:, 2] <= shape[1]) and np.all(det.boxes[:, 3] <= shape[0])


def test_no_detections_is_an_ordinary_result(backend, small_model, small_model_dir):
    engine = load(small_model_dir, backend)
    # A featureless grey image; faint noise avoids exact ties between anchors, whose order
    # torch.topk leaves unspecified (a perfectly flat image ranks them arbitrarily).
    rng = np.random.default_rng(0)
    blank = np.clip(127 + rng.normal(0, 2, (240, 320, 3)), 0, 255).astype(np.uint8)
    ref = torchvision_predict(small_model, blank, 0.5)
    assert_parity(ref, engine.predict(blank), blank.shape)
    # a threshold above every score torchvision gives: the empty path through every stage
    threshold = float(min(1.0, torchvision_predict(small_model, blank, 0.0)["scores"].max() + 1e-3))
    ref = torchvision_predict(small_model, blank, threshold)
    det = engine.predict(blank, score_threshold=threshold)
    assert len(ref["scores"]) == 0 and len(det) == 0
    assert det.boxes.shape == (0, 4) and det.scores.shape == (0,) and det.class_ids.shape == (0,)
    assert det.masks.shape == (0, 240, 320) and det.labels == []


def test_class_filter_keeps_only_those_classes(small_model_dir):
    engine = Engine.load(small_model_dir)
    image = photo("astronaut")
    everything = engine.predict(image, score_threshold=0.05)
    assert len(set(everything.class_ids.tolist())) >= 2
    keep = int(everything.class_ids[0])
    only = engine.predict(image, score_threshold=0.05, class_ids=[keep])
    assert len(only) > 0 and set(only.class_ids.tolist()) == {keep}
    expected = everything.boxes[everything.class_ids == keep]
    # the unfiltered run is cut at max_detections across classes, so its boxes of this class
    # are a prefix of the filtered run's
    assert len(only) >= len(expected)
    np.testing.assert_allclose(only.boxes[: len(expected)], expected, atol=1e-4)


def test_mask_head_runs_only_on_returned_detections(small_model_dir, monkeypatch):
    engine = Engine.load(small_model_dir)
    seen = []
    original = engine.backend.run_mask_head

    def spy(features, rois, class_ids):
        seen.append(len(class_ids))
        return original(features, rois, class_ids)

    monkeypatch.setattr(engine.backend, "run_mask_head", spy)
    det = engine.predict(photo("coffee"), score_threshold=0.05, max_detections=3)
    assert len(det) == 3
    # at most one filler row per pyramid level beside the 3 real RoIs
    assert seen and seen[0] <= 3 + len(engine.config.mask_head.scales)

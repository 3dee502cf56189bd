"""engine/backends/chunking.py: head graphs run in passes give the results of one run."""

from __future__ import annotations

import numpy as np

from engine import Engine
from engine.backends.chunking import run_in_chunks
from helpers import photo


def test_run_in_chunks_restores_the_level_order_of_a_single_run():
    def run(rois, ids):  # echo each row's box and class, like a head would per row
        return np.concatenate(rois), ids.copy()

    rng = np.random.default_rng(0)
    rois = [rng.random((n, 4)).astype(np.float32) for n in (7, 1, 3, 12)]
    ids = np.arange(23, dtype=np.int64)
    boxes, out_ids = run_in_chunks(rois, [2, 2, 5, 3], run, ids)
    np.testing.assert_array_equal(boxes, np.concatenate(rois))
    np.testing.assert_array_equal(out_ids, ids)
    calls = []
    run_in_chunks(rois, [100] * 4, lambda r, i: calls.append(1) or (np.concatenate(r), i), ids)
    assert calls == [1]  # within the limits: one plain run


def test_chunked_heads_give_the_same_detections(demo_model_dir):
    engine = Engine.load(demo_model_dir, backend="onnxruntime-cpu")
    image = photo("coffee")
    whole = engine.predict(image, score_threshold=0.05)
    backend = engine.backend
    box, mask = backend.run_box_head, backend.run_mask_head
    backend.run_box_head = lambda f, r: run_in_chunks(r, [3] * len(r), lambda c, _: box(f, c))
    backend.run_mask_head = lambda f, r, ids: run_in_chunks(r, [2] * len(r), lambda c, i: (mask(f, c, i),), ids)[0]
    chunked = engine.predict(image, score_threshold=0.05)
    assert len(whole) > 5 and len(chunked) == len(whole)
    np.testing.assert_allclose(chunked.boxes, whole.boxes, atol=1e-3)
    assert (chunked.masks != whole.masks).mean() < 1e-4

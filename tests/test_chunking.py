"""engine/backends/chunking.py: head graphs run in passes give the results of one run."""

from __future__ import annotations

import os

import numpy as np
import pytest

from engine import Engine
from engine.backends.chunking import run_in_chunks, run_in_row_passes
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


def test_run_in_row_passes_bounds_the_rows_of_each_run_and_keeps_the_level_order():
    calls = []

    def run(rois, ids):  # echo each row's box and class, like a head would per row
        calls.append([r.shape[0] for r in rois])
        return np.concatenate(rois), ids.copy()

    rng = np.random.default_rng(1)
    rois = [rng.random((n, 4)).astype(np.float32) for n in (7, 1, 3, 12)]
    ids = np.arange(23, dtype=np.int64)
    boxes, out_ids = run_in_row_passes(rois, 5, run, ids)
    np.testing.assert_array_equal(boxes, np.concatenate(rois))
    np.testing.assert_array_equal(out_ids, ids)
    # 23 rows in passes of 5: a pass spans levels, a level with no row in it gets a filler
    # (rows 5-9: two of level 0, level 1's one, two of level 2, a filler for level 3)
    assert calls == [[5, 1, 1, 1], [2, 1, 2, 1], [1, 1, 1, 4], [1, 1, 1, 5], [1, 1, 1, 3]]
    calls.clear()
    run_in_row_passes(rois, 23, run, ids)
    assert calls == [[7, 1, 3, 12]]  # within the bound: one plain run
    with pytest.raises(ValueError):
        run_in_row_passes(rois, 0, run, ids)


def test_cpu_mask_head_in_passes_gives_the_same_masks(demo_model_dir):
    engine = Engine.load(demo_model_dir, backend="onnxruntime-cpu")
    image = photo("coffee")
    engine.backend.MASK_HEAD_ROWS_PER_RUN = 10_000
    whole = engine.predict(image, score_threshold=0.05)
    engine.backend.MASK_HEAD_ROWS_PER_RUN = 3
    passes = engine.predict(image, score_threshold=0.05)
    assert len(whole) > 5 and len(passes) == len(whole)
    np.testing.assert_allclose(passes.boxes, whole.boxes, atol=1e-3)
    assert (passes.masks != whole.masks).mean() < 1e-4


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc to read peak RSS")
def test_many_detections_do_not_grow_the_cpu_backend_past_its_warm_up(small_model_dir):
    """ONNX Runtime's arena keeps the largest activations it has needed: 300 detections' mask
    head in one run grew the process by hundreds of MB for good (small model). In passes of
    MASK_HEAD_ROWS_PER_RUN, warm-up has already reached the size."""
    from server.inference import peak_growth

    engine = Engine.load(small_model_dir, backend="onnxruntime-cpu")
    warm_up = peak_growth(engine.warmup)
    found = []
    growth = peak_growth(lambda: found.append(engine.predict(photo("coffee"), score_threshold=0.0, max_detections=300)))
    print(f"warm-up +{warm_up >> 20} MB, then 300 detections +{growth >> 20} MB")
    assert len(found[0]) == 300
    assert growth < 100 * 2**20, f"300 detections grew the process by {growth >> 20} MB after warm-up"

"""Running a head graph on many RoIs in passes.

A head graph takes rois_<j> (Rj, 4) for each pyramid level j, each with Rj >= 1, and returns
rows in level order (all of level 0, then level 1, ...). `run_in_chunks` cuts the levels into
passes that fit a TensorRT profile (Rj <= limit_j); `run_in_row_passes` into passes of at
most N rows in all (what bounds ONNX Runtime's arena on the CPU). Both give a level with no
row in a pass a filler row (whose output is dropped) and stitch the outputs back into the
level order of a single run.
"""

from __future__ import annotations

import numpy as np

from .base import FILLER_BOX


def run_in_chunks(rois: list[np.ndarray], limits: list[int], run, class_ids: np.ndarray | None = None):
    """The outputs of `run(rois, class_ids)` for all rows, as if it had taken them at once.

    Args:
        rois: per level, float32 (Rj, 4), Rj >= 1.
        limits: per level, the most rows one run may take.
        run: callable(rois_chunk, class_ids_chunk or None) -> tuple of arrays, each with
            sum(rows) rows in level order.
        class_ids: optional (sum Rj,) int, in level order, cut along with the rows.
    Returns:
        tuple of arrays with sum(Rj) rows each, in level order.
    """
    counts = [int(r.shape[0]) for r in rois]
    if all(c <= limit for c, limit in zip(counts, limits)):
        return run(rois, class_ids)
    if any(limit < 1 for limit in limits):
        raise ValueError(f"row limits must be >= 1, got {limits}")
    passes = max(-(-c // limit) for c, limit in zip(counts, limits))
    spans = [[(min(c, p * limit), min(c, (p + 1) * limit)) for c, limit in zip(counts, limits)] for p in range(passes)]
    return _run_spans(rois, spans, run, class_ids)


def run_in_row_passes(rois: list[np.ndarray], max_rows: int, run, class_ids: np.ndarray | None = None):
    """The outputs of `run(rois, class_ids)` for all rows, each run taking at most `max_rows`
    of them (plus a filler row for each level that has none in that pass).

    Rows are taken in level order, so a pass spans the end of one level and the start of the
    next; the outputs, fillers dropped, concatenate back into the level order of one run.
    Same arguments and result as `run_in_chunks`, with one bound on the rows of a pass
    instead of one per level: what bounds the memory a CPU runtime keeps for a head graph.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    counts = [int(r.shape[0]) for r in rois]
    total = sum(counts)
    if total <= max_rows:
        return run(rois, class_ids)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    spans = [[(int(np.clip(lo - starts[j], 0, counts[j])), int(np.clip(lo + max_rows - starts[j], 0, counts[j])))
              for j in range(len(rois))] for lo in range(0, total, max_rows)]
    return _run_spans(rois, spans, run, class_ids)


def _run_spans(rois: list[np.ndarray], spans: list[list[tuple[int, int]]], run, class_ids: np.ndarray | None):
    """One run per pass; spans[p][j] = (lo, hi): the rows of level j that pass p takes (a
    filler row where lo == hi). The outputs, fillers dropped, in the level order of one run."""
    counts = [int(r.shape[0]) for r in rois]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    pieces: list[list[tuple]] = [[] for _ in rois]
    for pass_spans in spans:
        chunk, ids, taken = [], [], []
        for j, (level, (lo, hi)) in enumerate(zip(rois, pass_spans)):
            if lo < hi:
                chunk.append(level[lo:hi])
                if class_ids is not None:
                    ids.append(class_ids[starts[j] + lo : starts[j] + hi])
            else:  # no row of this level in this pass: a filler keeps the input non-empty
                chunk.append(FILLER_BOX)
                if class_ids is not None:
                    ids.append(np.zeros(1, class_ids.dtype))
            taken.append(hi - lo)
        outputs = run(chunk, np.concatenate(ids) if class_ids is not None else None)
        offset = 0
        for j, n in enumerate(taken):
            if n:
                pieces[j].append(tuple(out[offset : offset + n] for out in outputs))
            offset += max(n, 1)
    num_outputs = len(outputs)
    return tuple(np.concatenate([piece[k] for level in pieces for piece in level]) for k in range(num_outputs))

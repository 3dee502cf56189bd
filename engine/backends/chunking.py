"""Running a head graph on more RoIs per level than its TensorRT profile allows, in passes.

A head graph takes rois_<j> (Rj, 4) for each pyramid level j, each with 1 <= Rj <= limit_j,
and returns rows in level order (all of level 0, then level 1, ...). `run_in_chunks` cuts
the levels into passes that fit, gives a level that has run out a filler row (whose output
is dropped), and stitches the outputs back into the level order of a single run.
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
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    passes = max(-(-c // limit) for c, limit in zip(counts, limits))
    pieces: list[list[tuple]] = [[] for _ in rois]
    for p in range(passes):
        chunk, ids, taken = [], [], []
        for j, (level, limit) in enumerate(zip(rois, limits)):
            lo, hi = p * limit, min(counts[j], (p + 1) * limit)
            if lo < hi:
                chunk.append(level[lo:hi])
                if class_ids is not None:
                    ids.append(class_ids[starts[j] + lo : starts[j] + hi])
                taken.append(hi - lo)
            else:  # this level is done: one filler row keeps the input non-empty
                chunk.append(FILLER_BOX)
                if class_ids is not None:
                    ids.append(np.zeros(1, class_ids.dtype))
                taken.append(0)
        outputs = run(chunk, np.concatenate(ids) if class_ids is not None else None)
        offset = 0
        for j, n in enumerate(taken):
            if n:
                pieces[j].append(tuple(out[offset : offset + n] for out in outputs))
            offset += max(n, 1)
    num_outputs = len(pieces[0][0])
    return tuple(np.concatenate([piece[k] for level in pieces for piece in level]) for k in range(num_outputs))

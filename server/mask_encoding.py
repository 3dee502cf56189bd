"""Instance masks as compact JSON: COCO compressed RLE, or polygons.

RLE is byte-for-byte what `pycocotools.mask.encode(np.asfortranarray(mask))` produces, so
any COCO tool decodes it (`pycocotools.mask.decode({"size": [h, w], "counts": s})`):

* the mask is read column by column (column-major, "Fortran" order);
* counts alternate runs of 0s and 1s, starting with 0s (a leading 0 count if the first
  pixel is set);
* from the fourth count on, each count is stored as the difference from the count two
  places earlier (`i > 2` in pycocotools' rleToString), then written as a little-endian
  sequence of 5-bit groups, each as chr(48 + group), with bit 0x20 meaning "more groups
  follow" and bit 0x10 of the last group the sign.
"""

from __future__ import annotations

import cv2
import numpy as np


def rle_counts(mask: np.ndarray) -> np.ndarray:
    """Uncompressed COCO run lengths of an (H, W) bool mask, column-major, int64."""
    h, w = mask.shape
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return np.array([h * w], np.int64)
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    # Only the columns that hold the mask: all columns outside are zeros, so the runs of
    # this contiguous slice of the column-major sequence, shifted by x0 * h, are the runs
    # of the whole mask.
    seq = np.ascontiguousarray(mask[:, x0:x1].T).reshape(-1).view(np.int8)
    # Positions where the value changes, the pixel before the slice being a 0.
    changes = np.flatnonzero(np.diff(seq, prepend=0, append=0)) + x0 * h
    if changes[-1] == h * w:  # the mask reaches the last pixel: no trailing run of 0s
        changes = changes[:-1]
    return np.diff(changes, prepend=0, append=h * w).astype(np.int64)


def encode_counts(counts: np.ndarray) -> str:
    """pycocotools' rleToString: run lengths -> the compressed ASCII `counts` string."""
    x = np.asarray(counts, np.int64).copy()
    if x.size > 3:
        x[3:] -= np.asarray(counts, np.int64)[1:-2]
    # Emit 5-bit groups for all values at once; a value needs at most 13 groups for 64 bits.
    groups, alive = [], np.ones(x.shape, bool)
    for _ in range(13):
        if not alive.any():
            break
        c = x & 0x1F
        x = x >> 5  # arithmetic shift, like C's on a signed long
        more = np.where(c & 0x10, x != -1, x != 0) & alive
        groups.append(np.where(alive, (c | np.where(more, 0x20, 0)) + 48, 0))
        alive = more
    chars = np.stack(groups, axis=1).astype(np.uint8)  # (n, k), zero-padded after the last
    return chars[chars != 0].tobytes().decode("ascii")


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of an (H, W) bool mask: {"size": [H, W], "counts": str}."""
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": encode_counts(rle_counts(mask))}


def encode_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of an (H, W) bool mask as COCO polygons [[x0, y0, x1, y1, ...], ...].

    Coordinates are pixel centres (x right, y down) in image pixels. Holes are not
    represented (COCO polygons cannot express them); contours with fewer than three points
    (single pixels, thin lines) are dropped, so a tiny mask may have no polygon.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    m = mask.view(np.uint8) if mask.dtype == bool else (mask != 0).view(np.uint8)
    x, y, bw, bh = cv2.boundingRect(m)
    if bw == 0 or bh == 0:
        return []
    crop = np.ascontiguousarray(m[y:y + bh, x:x + bw])
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


MASK_ENCODERS = {"rle": encode_rle, "polygon": encode_polygons}

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


def rle_counts(mask: np.ndarray, x: int = 0, y: int = 0, image_size=None) -> np.ndarray:
    """Uncompressed COCO run lengths, column-major, int64, of an (H, W) bool mask, or of a
    mask given as its crop: `mask` (h, w) covers rows y.. and columns x.. of an image of
    `image_size` (H, W), every pixel outside it being 0. The crop is never pasted.
    """
    h, w = image_size if image_size is not None else mask.shape
    bx, by, bw, bh = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))  # the set pixels' rectangle
    if bw == 0 or bh == 0:
        return np.array([h * w], np.int64)
    # Outside that rectangle every pixel is 0. Its columns, each between two 0s (a column
    # of the transposed block per row), so that every run opens and closes inside its row.
    cells = np.zeros((bw, bh + 2), np.uint8)
    cells[:, 1:-1] = cv2.transpose(mask[by:by + bh, bx:bx + bw].view(np.uint8))
    flat = cells.reshape(-1)
    column, row = np.divmod(np.flatnonzero(flat[1:] != flat[:-1]) + 1, bh + 2)
    # column-major index of each change (the first pixel of a run) in the whole image
    changes = (x + bx + column) * h + (y + by - 1) + row
    if bh == h:
        # Whole columns: a run reaching the bottom closes on the index where a run opening
        # at the top of the next column starts; the two changes cancel.
        same = np.flatnonzero(changes[1:] == changes[:-1])
        changes = np.delete(changes, np.r_[same, same + 1])
    if changes.size and changes[-1] == h * w:  # the mask reaches the last pixel: no trailing run of 0s
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


def encode_rle(mask: np.ndarray, x: int = 0, y: int = 0, image_size=None) -> dict:
    """COCO compressed RLE {"size": [H, W], "counts": str} of an (H, W) bool mask, or of a
    crop of one (see `rle_counts`)."""
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    h, w = image_size if image_size is not None else mask.shape
    return {"size": [int(h), int(w)], "counts": encode_counts(rle_counts(mask, x, y, (h, w)))}


def encode_polygons(mask: np.ndarray, x: int = 0, y: int = 0) -> list[list[float]]:
    """Outer contours of an (H, W) bool mask as COCO polygons [[x0, y0, x1, y1, ...], ...];
    for a crop of a mask whose top-left pixel is image pixel (x, y), in image pixels.

    Coordinates are pixel centres (x right, y down) in image pixels. Holes are not
    represented (COCO polygons cannot express them); contours with fewer than three points
    (single pixels, thin lines) are dropped, so a tiny mask may have no polygon.
    """
    if mask.ndim != 2:
        raise ValueError(f"expected an (H, W) mask, got shape {mask.shape}")
    m = mask.view(np.uint8) if mask.dtype == bool else (mask != 0).view(np.uint8)
    bx, by, bw, bh = cv2.boundingRect(np.ascontiguousarray(m))
    if bw == 0 or bh == 0:
        return []
    crop = np.ascontiguousarray(m[by:by + bh, bx:bx + bw])
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x + bx, y + by))
    return [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]


# mask_format -> encoder of one engine.masks.MaskCrop on an image of (H, W)
MASK_ENCODERS = {
    "rle": lambda crop, image_size: encode_rle(crop.mask, crop.x, crop.y, image_size),
    "polygon": lambda crop, image_size: encode_polygons(crop.mask, crop.x, crop.y),
}

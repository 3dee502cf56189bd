"""Instance masks in numpy/OpenCV, kept as per-box crops that are pasted when asked for.

Three pastes of the mask head's (N, M, M) probabilities into the image (PASTE_MODES):
torchvision's paste_masks_in_image (then > threshold), an aligned float-box paste, and
detectron2's paste_masks_in_image (grid_sample, then >= threshold).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import cv2
import numpy as np

# model.json mask_head.paste -> how the engine pastes masks ("torchvision" is the default)
PASTE_MODES = ("torchvision", "aligned", "grid_sample")


def expand_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """torchvision expand_boxes: scale each box about its centre (float32)."""
    scale = np.float32(scale)
    w_half = (boxes[:, 2] - boxes[:, 0]) * np.float32(0.5) * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * np.float32(0.5) * scale
    x_c = (boxes[:, 2] + boxes[:, 0]) * np.float32(0.5)
    y_c = (boxes[:, 3] + boxes[:, 1]) * np.float32(0.5)
    return np.stack([x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half], axis=1)


class MaskCrop(NamedTuple):
    """One instance's mask over the part of the image where it can be set.

    mask: (h, w) bool, covering image rows y .. y + h - 1 and columns x .. x + w - 1 (inside
    the image; every pixel outside it is False). (0, 0) when no pixel of the paste box lies
    in the image.
    """

    mask: np.ndarray
    x: int
    y: int


_NO_CROP = MaskCrop(np.zeros((0, 0), bool), 0, 0)


class InstanceMasks:
    """The masks of N detections on an (H, W) image, kept small and materialised one at a time.

    `crop(i)` gives mask i at its box's extent; `full(i)` the (H, W) bool mask; `to_array()`
    all N, (N, H, W) bool: H * W bytes per instance (1.2 GB for 100 masks on a 12-megapixel
    photo), so consumers (the renderer, the RLE and polygon encoders) work crop by crop.
    Subclasses say how a crop is made: `PastedMasks` pastes it from the mask head's output
    on each call, `CroppedMasks` stores it.
    """

    def __init__(self, count: int, image_size):
        self.count = int(count)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.paste_s = 0.0  # seconds spent making crops so far (PastedMasks pastes; stored crops cost 0)

    def __len__(self) -> int:
        return self.count

    def crop(self, i: int) -> MaskCrop:
        raise NotImplementedError

    def extents(self) -> np.ndarray:
        """(N, 4) int64 x0, y0, x1, y1 (half-open) of each crop, without making any."""
        raise NotImplementedError

    def __iter__(self):
        """The crops in order, each made when it is reached."""
        return (self.crop(i) for i in range(self.count))

    def full(self, i: int) -> np.ndarray:
        """Mask i as an (H, W) bool array."""
        out = np.zeros(self.image_size, bool)
        mask, x, y = self.crop(i)
        out[y:y + mask.shape[0], x:x + mask.shape[1]] = mask
        return out

    def to_array(self) -> np.ndarray:
        """All masks, (N, H, W) bool (N * H * W bytes)."""
        out = np.zeros((self.count, *self.image_size), bool)
        for i, (mask, x, y) in enumerate(self):
            out[i, y:y + mask.shape[0], x:x + mask.shape[1]] = mask
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.count} masks on {self.image_size[0]}x{self.image_size[1]})"


class CroppedMasks(InstanceMasks):
    """Masks stored as crops (a list of MaskCrop, each inside the image)."""

    def __init__(self, crops, image_size):
        super().__init__(len(crops), image_size)
        self.crops = list(crops)

    @classmethod
    def from_array(cls, masks: np.ndarray) -> "CroppedMasks":
        """From (N, H, W) bool masks: each cut to the bounding rectangle of its set pixels."""
        masks = np.asarray(masks)
        if masks.ndim != 3:
            raise ValueError(f"expected (N, H, W) masks, got shape {masks.shape}")
        masks = masks.astype(bool, copy=False)
        crops = []
        for mask in masks:
            x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))
            crops.append(MaskCrop(mask[y:y + h, x:x + w].copy(), x, y) if w and h else _NO_CROP)
        return cls(crops, masks.shape[1:])

    def crop(self, i: int) -> MaskCrop:
        return self.crops[i]

    def extents(self) -> np.ndarray:
        return np.array([(x, y, x + m.shape[1], y + m.shape[0]) for m, x, y in self.crops], np.int64).reshape(-1, 4)


class PastedMasks(InstanceMasks):
    """Masks pasted from the mask head's (N, M, M) probabilities when a crop is asked for.

    Holds only the probabilities (3 KB per instance at M = 28); each `crop(i)` pastes mask i
    afresh (time proportional to its box's area), so keep a crop rather than asking twice.

    mode "torchvision" (the default): exactly torchvision's paste_masks_in_image, then
    probability > threshold. As torchvision: pad the M x M mask by one zero pixel, grow the
    box by (M + 2) / M, truncate it to integers, resize the padded mask bilinearly
    (half-pixel centres) to the box size + 1 and keep the part inside the image.
    mode "aligned": `paste_masks_aligned`'s float-box paste; `resize_factor` (fy, fx) is
    image size / network-frame size.
    mode "grid_sample": exactly detectron2's paste_masks_in_image on the CPU, then
    probability >= threshold (`paste_masks_grid_sample`). The crop is detectron2's window,
    columns max(floor(x1) - 1, 0) .. min(ceil(x2) + 1, W) (half-open), rows likewise.

    In every mode a box with no width or height, or with no pixel of its crop inside the
    image, gives an empty crop (extent 0, 0, 0, 0).
    """

    def __init__(self, mask_probs: np.ndarray, boxes: np.ndarray, image_size, threshold: float = 0.5,
                 mode: str = "torchvision", resize_factor=(1.0, 1.0), padding: int = 1):
        if mode not in PASTE_MODES:
            raise ValueError(f"paste mode must be one of {PASTE_MODES}, got {mode!r}")
        super().__init__(mask_probs.shape[0], image_size)
        self.mask_probs = mask_probs.astype(np.float32, copy=False)
        self.threshold = float(threshold)
        self.mode = mode
        h, w = self.image_size
        m = mask_probs.shape[-1]
        if mode == "torchvision":
            self.padding = padding
            # (N, 4) x0, y0, x1, y1 of each resized padded mask in the image (inclusive x1, y1)
            self._paste_boxes = expand_boxes(boxes.astype(np.float32).reshape(-1, 4), (m + 2 * padding) / m).astype(np.int64)
            x0, y0, x1, y1 = self._paste_boxes.T
            self._extents = np.stack([np.maximum(x0, 0), np.maximum(y0, 0),
                                      np.minimum(x1 + 1, w), np.minimum(y1 + 1, h)], axis=1)
        elif mode == "grid_sample":
            # detectron2 keeps boxes in float32 and does all its coordinate arithmetic in it
            self._boxes = boxes.astype(np.float32).reshape(-1, 4)
            b = self._boxes.astype(np.float64)
            degenerate = ~((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & np.isfinite(b).all(axis=1))
            bounds = np.stack([np.floor(b[:, 0]) - 1, np.floor(b[:, 1]) - 1, np.ceil(b[:, 2]) + 1, np.ceil(b[:, 3]) + 1],
                              axis=1)
            bounds[degenerate] = 0
            self._extents = np.clip(bounds, 0, [w, h, w, h]).astype(np.int64)
            self._taps = None  # per-axis taps of every window, made with the first crop
        else:
            self._boxes = boxes.astype(np.float64).reshape(-1, 4)
            self._factor = tuple(float(f) for f in resize_factor)
            fy, fx = self._factor
            b = self._boxes
            self._extents = np.stack([np.maximum(np.floor(b[:, 0] - fx).astype(np.int64) - 1, 0),
                                      np.maximum(np.floor(b[:, 1] - fy).astype(np.int64) - 1, 0),
                                      np.minimum(np.ceil(b[:, 2] + fx).astype(np.int64) + 1, w),
                                      np.minimum(np.ceil(b[:, 3] + fy).astype(np.int64) + 1, h)], axis=1)
            degenerate = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
            self._extents[degenerate] = 0
        empty = (self._extents[:, 0] >= self._extents[:, 2]) | (self._extents[:, 1] >= self._extents[:, 3])
        self._extents[empty] = 0

    def extents(self) -> np.ndarray:
        return self._extents.copy()

    def crop(self, i: int) -> MaskCrop:
        start = time.perf_counter()
        try:
            return self._paste(i)
        finally:
            self.paste_s += time.perf_counter() - start

    def _paste(self, i: int) -> MaskCrop:
        x0, y0, x1, y1 = (int(v) for v in self._extents[i])
        if x0 >= x1 or y0 >= y1:
            return _NO_CROP
        if self.mode == "aligned":
            return MaskCrop(self._aligned_window(i, x0, y0, x1, y1) > self.threshold, x0, y0)
        if self.mode == "grid_sample":
            return MaskCrop(self._grid_sample_window(i), x0, y0)
        bx0, by0, bx1, by1 = (int(v) for v in self._paste_boxes[i])
        padded = np.pad(self.mask_probs[i], self.padding)
        # The resized mask is (box_h, box_w); only the rows and columns inside the image are
        # kept, and cv2.resize computes each output pixel independently of the others, so
        # resizing the whole box and cutting is the same as torchvision's paste.
        resized = cv2.resize(padded, (max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)), interpolation=cv2.INTER_LINEAR)
        return MaskCrop(resized[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0] > self.threshold, x0, y0)

    def _aligned_window(self, i, wx0, wy0, wx1, wy1) -> np.ndarray:
        m = self.mask_probs.shape[-1]
        fy, fx = self._factor
        x0, y0, x1, y1 = self._boxes[i].tolist()
        sx, sy = (x1 - x0) / m, (y1 - y0) / m
        # image pixel j (centre j + 0.5) <- cell u: j = sx * u + tx
        tx = x0 + 0.5 * sx + 0.5 * fx - 0.5
        ty = y0 + 0.5 * sy + 0.5 * fy - 0.5
        affine = np.array([[sx, 0.0, tx - wx0], [0.0, sy, ty - wy0]])
        return cv2.warpAffine(self.mask_probs[i], affine, (wx1 - wx0, wy1 - wy0), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)

    def _grid_sample_window(self, i) -> np.ndarray:
        """detectron2's paste of mask i over its window (extents()[i]), (h, w) bool:
        F.grid_sample(align_corners=False, zero padding) at the pixel centres, >= threshold.

        The sampling positions are separable (computed in 1-D per row and per column,
        rounded as torch rounds them), so the interpolation runs along the columns on the
        small mask, then along the rows over the window. That sums the four taps in another
        order than torch's kernel, whose multiply-adds are also fused: the two differ by a
        few float32 ulps, so only pixels within a margin of the threshold can compare
        differently. Those few are recomputed with torch's arithmetic and decide.
        """
        probs = self.mask_probs[i]
        if self._taps is None:  # 1-D, for all windows at once: one pass instead of N small ones
            e, b, (m_h, m_w) = self._extents, self._boxes, probs.shape
            self._taps = (_grid_sample_taps(e[:, 0], e[:, 2], b[:, 0], b[:, 2], m_w),
                          _grid_sample_taps(e[:, 1], e[:, 3], b[:, 1], b[:, 3], m_h))
        (col_taps, col_offsets), (row_taps, row_offsets) = self._taps
        cols = [a[col_offsets[i]:col_offsets[i + 1]] for a in col_taps]
        rows = [a[row_offsets[i]:row_offsets[i + 1]] for a in row_taps]
        col_low, col_high, col_w_low, col_w_high = cols
        row_low, row_high, row_w_low, row_w_high = rows
        padded = np.zeros((probs.shape[0] + 2, probs.shape[1] + 2), np.float32)  # taps outside read zero
        padded[1:-1, 1:-1] = probs
        across = padded[:, col_low] * col_w_low  # (M + 2, window width)
        across += padded[:, col_high] * col_w_high
        window = across[row_low]  # gathering whole rows is cheap
        window *= row_w_low[:, None]
        lower = across[row_high]
        lower *= row_w_high[:, None]
        window += lower
        threshold = np.float32(self.threshold)  # torch compares a float32 tensor in float32
        # The two sums differ by a few float32 ulps of the largest |probability| at most (each
        # weight is at most 1 and they sum to 1); the margin is far wider than that.
        margin = 2.0 ** -16 * max(float(np.abs(probs).max(initial=0.0)), 1.0)
        mask = window > np.float32(threshold + margin)
        near = np.flatnonzero(mask ^ (window >= np.float32(threshold - margin)))
        if near.size:
            r, c = np.divmod(near, window.shape[1])
            mask.ravel()[near] = _grid_sample_exact(padded, rows, cols, r, c) >= threshold
        return mask


def _grid_sample_exact(padded: np.ndarray, rows, cols, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """torch's CPU grid_sample value at window pixels (r[k], c[k]), float32, from the
    zero-bordered mask and the taps of `_grid_sample_taps`: each corner's weight is the
    rounded product of its row and column weights, and the corners are summed in torch's
    order (low row: low then high column; then the high row), each term after the first
    by a fused multiply-add (torch's vectorised x86 kernels are compiled with FMA
    contraction; its scalar DEFAULT build is not, see `paste_masks_grid_sample`)."""
    row_low, row_high, row_w_low, row_w_high = (a[r] for a in rows)
    col_low, col_high, col_w_low, col_w_high = (a[c] for a in cols)
    total = padded[row_low, col_low] * (row_w_low * col_w_low)
    for rr, cc, weight in ((row_low, col_high, row_w_low * col_w_high), (row_high, col_low, row_w_high * col_w_low),
                           (row_high, col_high, row_w_high * col_w_high)):
        total = _fused_multiply_add(padded[rr, cc], weight, total)
    return total


def _grid_sample_taps(starts: np.ndarray, stops: np.ndarray, lo: np.ndarray, hi: np.ndarray, size: int):
    """Bilinear taps of F.grid_sample(align_corners=False) along one axis of N windows:
    window k covers the image's pixels starts[k] .. stops[k] - 1 of detectron2's paste of a
    mask of `size` cells over a box spanning [lo[k], hi[k]] (float32) on that axis.

    detectron2 normalises pixel centres into the box, g = (p + 0.5 - lo) / (hi - lo) * 2 - 1,
    and grid_sample maps g to cell coordinates (g + 1) * size / 2 - 0.5: all in float32, the
    last multiply and subtract fused (torch's vectorised x86 kernel is compiled with FMA
    contraction). Every element is computed on its own, as in torch.

    Returns ((low, high, weight_low, weight_high), offsets): the taps of all windows one after
    the other, window k's at offsets[k]:offsets[k + 1]; low and high index the mask bordered
    by one zero cell on each side (taps outside the mask land on the border), and the
    float32 weights are 1 - frac and frac.
    """
    lengths = np.maximum(np.asarray(stops) - starts, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    pixels = np.arange(offsets[-1]) + np.repeat(starts - offsets[:-1], lengths)
    lo, hi = np.repeat(lo, lengths), np.repeat(hi, lengths)
    grid = (pixels.astype(np.float32) + np.float32(0.5) - lo) / (hi - lo) * np.float32(2) - np.float32(1)
    position = _fused_multiply_add(grid + np.float32(1), np.float32(size / 2), np.float32(-0.5))
    floor = np.floor(position)
    frac = position - floor
    # cell of the low tap, -2 .. size (far outside the mask clamps onto the border)
    cell = np.minimum(np.maximum(floor, -2), size).astype(np.intp)
    low = np.maximum(cell, -1) + 1
    high = np.minimum(cell + 1, size) + 1
    return (low, high, np.float32(1) - frac, frac), offsets


_FLOAT32_DROPPED_BITS = np.uint64((1 << 29) - 1)  # the float64 mantissa bits a float32 drops
_FLOAT32_HALFWAY = np.uint64(1 << 28)


def _fused_multiply_add(a, b, c) -> np.ndarray:
    """float32 a * b + c with one rounding, as an FMA instruction computes it (element-wise).

    The product of two float32s is exact in float64 and the float64 sum is one rounding;
    rounding that to float32 again is the correctly rounded result unless the float64 sum
    landed exactly halfway between two float32s while not being exact. Those ties are
    resolved toward the exact sum (its rounding error, from the two-sum, gives the side).
    For results below float32's normal range (< 2**-126) ties are not detected; they cannot
    be near a mask threshold.
    """
    product = np.asarray(a, np.float64) * np.asarray(b, np.float64)
    addend = np.asarray(c, np.float64)
    total = np.asarray(product + addend)
    tie = (total.view(np.uint64) & _FLOAT32_DROPPED_BITS) == _FLOAT32_HALFWAY
    if tie.any():
        p, q = np.broadcast_to(product, total.shape)[tie], np.broadcast_to(addend, total.shape)[tie]
        rounded = total[tie]
        q_seen = rounded - p  # two-sum: rounded + error == p + q exactly
        error = (p - (rounded - q_seen)) + (q - q_seen)
        # one float64 step toward the exact sum takes it off the tie, to the side it belongs
        nudged = np.nextafter(rounded, np.copysign(np.inf, error))
        total[tie] = np.where(error == 0, rounded, nudged)
    return total.astype(np.float32)


def paste_masks(mask_probs: np.ndarray, boxes: np.ndarray, image_size, threshold: float = 0.5, padding: int = 1) -> np.ndarray:
    """torchvision's paste_masks_in_image, then > threshold: (N, H, W) bool.

    Args:
        mask_probs: float32 (N, M, M) probabilities in each box's frame.
        boxes: float32 (N, 4) x1, y1, x2, y2 in the target image's pixels.
        image_size: (H, W) of the target image.

    The engine keeps masks as `PastedMasks` instead; this is the same paste, all at once.
    """
    return PastedMasks(mask_probs, boxes, image_size, threshold, padding=padding).to_array()


def paste_masks_aligned(mask_probs: np.ndarray, boxes: np.ndarray, image_size, resize_factor, threshold: float = 0.5) -> np.ndarray:
    """Paste per-box masks with float boxes, in the frame torchvision trains them in.

    An opt-in alternative to `paste_masks` (model.json: mask_head.paste = "aligned"). It
    departs from torchvision's inference on purpose. torchvision cuts its mask *targets*
    with roi_align(aligned=False), so cell u of an M-cell mask over [x0, x1] learns the
    ground truth at x0 + (u + 0.5) * (x1 - x0) / M + 0.5 in the network's resized frame;
    its paste, though, truncates boxes to whole pixels. Mapping each cell back to exactly
    that position (one affine warp per mask, bilinear, zero outside) removes up to a pixel
    of error, which matters for small objects. (detectron2 pastes with float boxes too.)

    Args:
        mask_probs: float32 (N, M, M); boxes: float32 (N, 4) in the target image's pixels.
        image_size: (H, W) of the target image.
        resize_factor: (fy, fx) = target size / network-frame size, per axis.
    Returns:
        bool (N, H, W).
    """
    return PastedMasks(mask_probs, boxes, image_size, threshold, mode="aligned", resize_factor=resize_factor).to_array()


def paste_masks_grid_sample(mask_probs: np.ndarray, boxes: np.ndarray, image_size, threshold: float = 0.5) -> np.ndarray:
    """detectron2's paste_masks_in_image (detectron2.layers.mask_ops, CPU path), then
    >= threshold: (N, H, W) bool.

    Each mask is sampled at the image's pixel centres with F.grid_sample (bilinear,
    align_corners=False, zero outside the mask), the box's float edges mapping to the
    mask's outer edges, over the box's window grown by one pixel each side.

    Args:
        mask_probs: float32 (N, M, M) probabilities in each box's frame.
        boxes: float32 (N, 4) x1, y1, x2, y2 in the target image's pixels (detectron2 clips
            them to the image and drops empty ones first; an empty box gives an empty mask
            here, where detectron2 would fail or divide by zero).
        image_size: (H, W) of the target image.

    Exactness: the same pixels as torch's CPU grid_sample in its vectorised x86 builds
    (AVX2, AVX-512), which fuse the multiply-adds of the unnormalisation and of the
    four-tap sum. torch's scalar build (ATEN_CPU_CAPABILITY=default, and architectures
    without those kernels) rounds each operation separately; its pixels can differ where
    a probability lies within an ulp or two of the threshold.
    """
    return PastedMasks(mask_probs, boxes, image_size, threshold, mode="grid_sample").to_array()

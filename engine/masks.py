"""Instance masks in numpy/OpenCV: torchvision's paste_masks_in_image (then a 0.5 threshold),
kept as per-box crops that are pasted when asked for."""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

# model.json mask_head.paste -> how the engine pastes masks ("torchvision" is the default)
PASTE_MODES = ("torchvision", "aligned")


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
        x0, y0, x1, y1 = (int(v) for v in self._extents[i])
        if x0 >= x1 or y0 >= y1:
            return _NO_CROP
        if self.mode == "aligned":
            return MaskCrop(self._aligned_window(i, x0, y0, x1, y1) > self.threshold, x0, y0)
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

"""Image -> network input, exactly as torchvision's GeneralizedRCNNTransform does it."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PreparedImage:
    """The network input and the sizes needed to map results back.

    tensor: float32 (1, 3, Hp, Wp), normalised, zero-padded at the bottom/right to the divisor.
    original_size: (H, W) of the caller's image.
    resized_size: (h, w) after the resize rule, before padding; boxes are clipped to it.
    """

    tensor: np.ndarray
    original_size: tuple[int, int]
    resized_size: tuple[int, int]

    @property
    def padded_size(self) -> tuple[int, int]:
        return self.tensor.shape[2], self.tensor.shape[3]


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """torchvision's resize rule: the short side to min_size unless the long side would pass
    max_size; the scale is a Python float and the size is truncated, as in eager mode."""
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(height * scale), int(width * scale)


def validate_image(image) -> None:
    """Raise ValueError unless `image` is an HxWx3 uint8 array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must have shape (H, W, 3), got {image.shape}")


def preprocess(image: np.ndarray, mean, std, min_size: int, max_size: int, size_divisible: int) -> PreparedImage:
    """Normalise ((x/255 - mean) / std), resize bilinearly (half-pixel centres, no antialias,
    like F.interpolate(align_corners=False)) and zero-pad to a multiple of size_divisible.

    Normalising before resizing is what torchvision does; both are linear, so doing the
    per-pixel affine on the smaller of the two images only changes the last float bit.
    """
    validate_image(image)
    h, w = image.shape[:2]
    rh, rw = resized_size(h, w, min_size, max_size)
    scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    shift = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)
    if rh * rw >= h * w:
        normalised = image.astype(np.float32) * scale + shift
        resized = cv2.resize(normalised, (rw, rh), interpolation=cv2.INTER_LINEAR)
    else:
        resized = cv2.resize(image.astype(np.float32), (rw, rh), interpolation=cv2.INTER_LINEAR)
        resized = resized * scale + shift
    ph = -(-rh // size_divisible) * size_divisible
    pw = -(-rw // size_divisible) * size_divisible
    tensor = np.zeros((1, 3, ph, pw), np.float32)
    tensor[0, :, :rh, :rw] = resized.transpose(2, 0, 1)
    return PreparedImage(tensor=tensor, original_size=(h, w), resized_size=(rh, rw))

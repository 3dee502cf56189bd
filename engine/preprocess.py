"""Image -> network input, exactly as the training framework does it.

`preprocess`: torchvision's GeneralizedRCNNTransform (normalise, bilinear resize to a
truncated size, pad). `preprocess_shortest_edge`: detectron2's DefaultPredictor
(ResizeShortestEdge with PIL's bilinear filter on the uint8 image, rounded size; then
`(x - mean) / std` in the model's channel order, pad).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from PIL import Image


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

    torchvision normalises, then resizes. Both are linear and the bilinear weights sum to one,
    so they commute: the per-pixel affine runs on whichever image is smaller, which changes
    only the last float bit. A photo larger than the network input (a phone's 12 MP) is
    never converted to float at its own size: `downscale_bilinear` reads only the pixels the
    interpolation uses.
    """
    validate_image(image)
    h, w = image.shape[:2]
    rh, rw = resized_size(h, w, min_size, max_size)
    scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    shift = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)
    ph = -(-rh // size_divisible) * size_divisible
    pw = -(-rw // size_divisible) * size_divisible
    tensor = np.zeros((1, 3, ph, pw), np.float32)
    if rh <= h and rw <= w:
        resized = downscale_bilinear(image, rh, rw, scale, shift)
    else:  # upscaling (the usual 640x480 -> 800x1066): normalise the smaller, original image
        normalised = image.astype(np.float32) * scale + shift
        resized = cv2.resize(normalised, (rw, rh), interpolation=cv2.INTER_LINEAR)
    tensor[0, :, :rh, :rw] = resized.transpose(2, 0, 1)
    return PreparedImage(tensor=tensor, original_size=(h, w), resized_size=(rh, rw))


def _taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """F.interpolate's bilinear taps along one axis (align_corners=False, scale in/out):
    source index below and above each output position, and the weight of the one above."""
    position = (np.arange(size_out, dtype=np.float64) + 0.5) * (size_in / size_out) - 0.5
    position = np.maximum(position, 0.0)  # F.interpolate clamps negative source positions to 0
    low = np.minimum(np.floor(position).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, (position - low).astype(np.float32)


_REMAP_LIMIT = 32767  # cv2.remap takes images with sides below SHRT_MAX


@lru_cache(maxsize=4)
def _downscale_plan(in_h: int, in_w: int, out_h: int, out_w: int):
    """For downscale_bilinear, per (input size, output size): OpenCV maps (int16 x, y
    pairs, 4 bytes per output pixel) that fetch each output pixel's source pixel at the
    (low|high row, low|high column) corner, and the weights of the high taps per row and
    column. 14 MB for 800x1066 (a full-size weight per corner was 55 MB, and an order of
    magnitude slower to build for every new photo size)."""
    y_low, y_high, wy = _taps(in_h, out_h)
    x_low, x_high, wx = _taps(in_w, out_w)
    maps = []
    for rows in (y_low, y_high):
        for cols in (x_low, x_high):
            if max(in_h, in_w) >= _REMAP_LIMIT:  # numpy's gather instead of OpenCV's remap
                maps.append(np.ix_(rows, cols))
                continue
            coords = np.empty((out_h, out_w, 2), np.int16)  # OpenCV's CV_16SC2: (x, y)
            coords[:, :, 0] = cols[None, :]
            coords[:, :, 1] = rows[:, None]
            coords.setflags(write=False)
            maps.append(coords)
    return maps, wy[:, None, None], wx[None, :, None]


def downscale_bilinear(image: np.ndarray, out_h: int, out_w: int, scale=(1.0, 1.0, 1.0),
                       shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    """(H, W, C) uint8 -> (out_h, out_w, C) float32 `bilinear(image) * scale + shift` (per
    channel), out_h <= H and out_w <= W: half-pixel centres, as F.interpolate(mode="bilinear",
    align_corners=False) without antialias.

    Only the four source pixels each output pixel reads are fetched (OpenCV's nearest-pixel
    remap at integer coordinates copies them unchanged), then interpolated in float32 at the
    output's size, along columns then rows, in place. The cost follows the output's size,
    not the photo's: a 12 MP photo is never converted to float at its own size.
    """
    (low_low, low_high, high_low, high_high), wy, wx = _downscale_plan(image.shape[0], image.shape[1], out_h, out_w)

    def fetch(coords, out=None):
        if isinstance(coords, tuple):
            pixels = image[coords]
        else:
            pixels = cv2.remap(image, coords, None, interpolation=cv2.INTER_NEAREST)
        if out is None:
            return pixels.astype(np.float32)
        out[...] = pixels
        return out

    top, spare = fetch(low_low), fetch(low_high)
    spare -= top
    spare *= wx
    top += spare  # the top row's taps, interpolated along x
    bottom = fetch(high_low)
    spare = fetch(high_high, spare)
    spare -= bottom
    spare *= wx
    bottom += spare
    bottom -= top
    bottom *= wy
    top += bottom  # and along y
    top *= np.asarray(scale, np.float32)
    top += np.asarray(shift, np.float32)
    return top


def shortest_edge_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge rule, (h, w) after the resize: the short side becomes
    min_size and the long side follows the aspect ratio; if the long side would pass
    max_size, both are scaled down so that it equals max_size. Python floats throughout and
    each side rounded half up (int(x + 0.5)), not truncated as torchvision does. min_size 0
    means no resize."""
    if min_size == 0:
        return height, width
    short = float(min_size)
    scale = short / min(height, width)
    # The short side is set to min_size exactly, the long one is scaled (in float64).
    new_h, new_w = (short, scale * width) if height < width else (scale * height, short)
    longest = max(new_h, new_w)
    if longest > max_size:
        shrink = max_size * 1.0 / longest
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def preprocess_shortest_edge(image: np.ndarray, mean, std, min_size: int, max_size: int, size_divisible: int,
                             channel_order: str = "BGR") -> PreparedImage:
    """The network input of a detectron2 model, bit for bit as DefaultPredictor + the model's
    preprocess_image make it.

    Args:
        image: HxWx3 uint8 RGB.
        mean, std: per-channel pixel mean and std in 0-255 units, in `channel_order`
            (detectron2's MODEL.PIXEL_MEAN / PIXEL_STD).
        min_size, max_size: INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST (`shortest_edge_size`).
        size_divisible: the backbone's size_divisibility (32 for FPN); 0 or 1: no padding.
        channel_order: INPUT.FORMAT, "BGR" (detectron2's default) or "RGB".
    Returns:
        PreparedImage: tensor float32 (1, 3, Hp, Wp) = (pixel - mean) / std, zero at the
        bottom/right padding; resized_size (h, w) from `shortest_edge_size`.

    detectron2 resizes the uint8 image with PIL's bilinear filter (which widens its support
    when shrinking, i.e. antialiases). PIL filters each channel on its own, so resizing the
    RGB image and then picking the channels in `channel_order` is the same as resizing the
    BGR image detectron2 gets. Only the resized uint8 image is converted to float32, straight
    into the padded tensor; subtracting then dividing in float32 rounds as torch does.
    """
    validate_image(image)
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    h, w = image.shape[:2]
    rh, rw = shortest_edge_size(h, w, min_size, max_size)
    if rh < 1 or rw < 1:
        raise ValueError(f"a {h}x{w} image resizes to {rh}x{rw} (min_size {min_size}, max_size {max_size})")
    if (rh, rw) != (h, w):
        # PIL keeps RGB as 4 bytes a pixel, so fromarray copies the image once; no float copy.
        image = np.asarray(Image.fromarray(image).resize((rw, rh), Image.Resampling.BILINEAR))
    if size_divisible > 1:
        ph = -(-rh // size_divisible) * size_divisible
        pw = -(-rw // size_divisible) * size_divisible
    else:
        ph, pw = rh, rw
    # torch.tensor(list of floats) rounds each to float32, as this does.
    mean32 = np.asarray(mean, np.float64).astype(np.float32).reshape(3)
    std32 = np.asarray(std, np.float64).astype(np.float32).reshape(3)
    sources = (0, 1, 2) if channel_order == "RGB" else (2, 1, 0)
    tensor = np.zeros((1, 3, ph, pw), np.float32)
    for c, source in enumerate(sources):
        plane = tensor[0, c, :rh, :rw]
        # uint8 -> float32 is exact, then one float32 rounding per operation, as in torch
        np.subtract(image[:, :, source], mean32[c], out=plane, dtype=np.float32)
        np.divide(plane, std32[c], out=plane)
    return PreparedImage(tensor=tensor, original_size=(h, w), resized_size=(rh, rw))

"""Draw detections onto the image they came from, and encode images for HTTP responses.

Everything here works in RGB, pixel coordinates with (0, 0) at the top-left corner, and
never changes the caller's array.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

MASK_ALPHA = 0.5
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def format_label(name: str, score: float) -> str:
    """The API's label: class name, a space, the score as a rounded whole percent, '%'."""
    return f"{name} {round(float(score) * 100)}%"


def _make_palette(n: int = 48) -> np.ndarray:
    """n saturated RGB colours, neighbours far apart in hue (golden-ratio hue steps)."""
    colours = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        value = 1.0 if i % 2 == 0 else 0.8  # alternate brightness to separate similar hues
        colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, value)])
    return np.array(colours, np.uint8)


PALETTE = _make_palette()


def instance_colour(index: int) -> tuple[int, int, int]:
    """The RGB colour of the index-th detection (index 0 = highest score)."""
    return tuple(int(c) for c in PALETTE[index % len(PALETTE)])


def render_detections(image: np.ndarray, detections) -> np.ndarray:
    """The image with each instance's mask blended in its own colour, box and caption.

    Args:
        image: (H, W, 3) uint8 RGB; not modified.
        detections: an `engine.Detections` for this image (boxes (N, 4) x1, y1, x2, y2 in
            image pixels; masks (N, H, W) bool; labels; scores), highest score first.

    Returns:
        A new (H, W, 3) uint8 RGB array; a plain copy when there are no detections. Line
        widths and text size scale with the image, so captions stay legible from thumbnails
        to 40-megapixel photos.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    out = np.array(image, copy=True, order="C")
    n = len(detections.scores)
    if n == 0:
        return out
    h, w = out.shape[:2]
    scale = max(h, w) / 640.0  # 1.0 for the classic 640x480 photo
    line = max(1, round(2 * scale))
    font_scale = min(max(0.55 * scale, 0.4), 4.0)  # below 0.4 text is unreadable
    font_thickness = max(1, round(1.2 * scale))

    masks = np.asarray(detections.masks, dtype=bool)
    if masks.shape != (n, h, w):
        raise ValueError(f"masks of shape {masks.shape} do not fit {n} detections on a {h}x{w} image")
    _blend_masks(out, masks)
    boxes = np.asarray(detections.boxes, np.float64)
    for i in reversed(range(n)):
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), instance_colour(i), line, cv2.LINE_8)  # crisp
    for i in reversed(range(n)):
        caption = format_label(detections.labels[i], detections.scores[i])
        _draw_caption(out, caption, boxes[i], instance_colour(i), font_scale, font_thickness)
    return out


def _blend_masks(out: np.ndarray, masks: np.ndarray) -> None:
    """Tint every masked pixel: out = (1 - alpha) * out + alpha * colour of its instance.

    Where masks overlap, the highest-scoring instance's colour wins (rather than a muddy
    mix). One pass over the image whatever the number of instances: each mask only writes
    its index into a label map, over its bounding rectangle.
    """
    h, w = out.shape[:2]
    label = np.zeros((h, w), np.uint16)  # 0: no instance; i + 1: instance i
    for i in reversed(range(len(masks))):  # lowest score first: the best is written last
        mask = masks[i]
        x, y, bw, bh = cv2.boundingRect(mask.view(np.uint8))  # SIMD scan of the full mask
        if bw and bh:
            np.copyto(label[y:y + bh, x:x + bw], i + 1, where=mask[y:y + bh, x:x + bw])
    covered = label > 0
    if not covered.any():
        return
    lut = np.zeros((len(masks) + 1, 3), np.uint8)
    lut[1:] = PALETTE[np.arange(len(masks)) % len(PALETTE)]
    tinted = cv2.addWeighted(out, 1.0 - MASK_ALPHA, lut[label], MASK_ALPHA, 0.0)
    np.copyto(out, tinted, where=covered[:, :, None])


def _draw_caption(out, text, box, colour, font_scale, thickness) -> None:
    """A filled box in the instance colour holding the caption, above the box if it fits.

    Skipped on images too small to hold a readable caption (e.g. 16x16 thumbnails)."""
    h, w = out.shape[:2]
    (tw, th), baseline = cv2.getTextSize(text, _FONT, font_scale, thickness)
    pad = max(1, round(th * 0.25))
    bh = th + baseline + 2 * pad
    bw = tw + 2 * pad
    if bh > h / 3:  # a thumbnail: a caption would hide the image and could not be read anyway
        return
    x1 = int(round(box[0]))
    y1 = int(round(box[1]))
    x = min(max(x1, 0), max(w - bw, 0))  # keep the caption inside the image horizontally
    top = y1 - bh if y1 - bh >= 0 else max(y1, 0)  # above the box, else just inside it
    top = min(top, max(h - bh, 0))
    cv2.rectangle(out, (x, top), (x + bw - 1, top + bh - 1), colour, cv2.FILLED)
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 140 else (255, 255, 255)
    cv2.putText(out, text, (x + pad, top + pad + th), _FONT, font_scale, ink, thickness, cv2.LINE_AA)


_ENCODE_PARAMS = {
    "jpeg": lambda quality: (".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]),
    # Level 1: a few times faster than the default for a slightly larger file.
    "png": lambda quality: (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
}


def encode_image(rgb: np.ndarray, fmt: str, jpeg_quality: int = 90) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as 'jpeg' or 'png' bytes."""
    if fmt not in _ENCODE_PARAMS:
        raise ValueError(f"unsupported image format {fmt!r}; expected 'jpeg' or 'png'")
    ext, params = _ENCODE_PARAMS[fmt](jpeg_quality)
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()

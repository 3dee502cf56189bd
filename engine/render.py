"""Draw detections onto the image they came from, and encode images for HTTP responses.

Everything here works in RGB, pixel coordinates with (0, 0) at the top-left corner, and
never changes the caller's array.
"""

from __future__ import annotations

import colorsys
import math
from typing import NamedTuple

import cv2
import numpy as np

from .detections import format_label  # captions are the API's labels

MASK_ALPHA = 0.5
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _make_palette(n: int = 48) -> np.ndarray:
    """n saturated RGB colours, neighbours far apart in hue (golden-ratio hue steps)."""
    colours = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        value = 1.0 if i % 2 == 0 else 0.8  # alternate brightness to separate similar hues
        colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, value)])
    return np.array(colours, np.uint8)


PALETTE = _make_palette()


def prepare_thread() -> None:
    """Set up OpenCV's text rendering on the calling thread: OpenCV 5 does it on a thread's
    first getTextSize or putText, slowly enough to show in that answer's latency. Threads
    that render answers call this once first."""
    cv2.getTextSize("warm-up", _FONT, 1.0, 1)


def instance_colour(index: int) -> tuple[int, int, int]:
    """The RGB colour of the index-th detection (index 0 = highest score)."""
    return tuple(int(c) for c in PALETTE[index % len(PALETTE)])


def render_detections(image: np.ndarray, detections, overwrite: bool = False) -> np.ndarray:
    """The image with each instance's mask blended in its own colour, box and caption.

    Args:
        image: (H, W, 3) uint8 RGB; not modified unless `overwrite`.
        detections: an `engine.Detections` for this image (boxes (N, 4) x1, y1, x2, y2 in
            image pixels; mask_crops, read one crop at a time; labels; scores), highest
            score first.

        overwrite: draw on `image` itself (when it is C-contiguous and writeable), for a
            caller that no longer needs it: saves an image-sized copy (120 MB at 40 MP).

    Returns:
        A new (H, W, 3) uint8 RGB array (`image` itself with overwrite); a plain copy when
        there are no detections. Line
        widths and text size scale with the image, so captions stay legible from thumbnails
        to 40-megapixel photos; captions are laid out by `caption_layout` (never overlapping,
        always inside the image) on a backing in the instance colour.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    in_place = overwrite and image.flags.c_contiguous and image.flags.writeable
    out = image if in_place else np.array(image, copy=True, order="C")
    n = len(detections.scores)
    if n == 0:
        return out
    h, w = out.shape[:2]
    line = max(1, round(2 * max(h, w) / 640.0))  # 2 px on the classic 640x480 photo

    masks = detections.mask_crops
    if len(masks) != n or masks.image_size != (h, w):
        raise ValueError(f"{len(masks)} masks on {masks.image_size} do not fit {n} detections on a {h}x{w} image")
    _blend_masks(out, masks)
    boxes = np.asarray(detections.boxes, np.float64)
    for i in reversed(range(n)):
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), instance_colour(i), line, cv2.LINE_8)  # crisp
    texts = [format_label(detections.labels[i], detections.scores[i]) for i in range(n)]
    layout = caption_layout(texts, boxes, (h, w))
    for i in reversed(range(n)):  # the best on top, should the last resort overlap any
        if layout.rects[i] is not None:
            _draw_caption(out, texts[i], layout.rects[i], instance_colour(i), layout)
    return out


def _blend_masks(out: np.ndarray, masks) -> None:
    """Tint every masked pixel: out = (1 - alpha) * out + alpha * colour of its instance.

    `masks` is an `engine.masks.InstanceMasks` on `out`'s size. Where masks overlap, the
    highest-scoring instance's colour wins (rather than a muddy mix). Each crop is made once
    and only writes its index into a label map over the masks' union rectangle; the tint is
    then one pass over that rectangle, in bands of rows so its temporaries stay small. The
    per-pixel work is OpenCV's (masked copies, a lookup table): numpy's masked copy and
    fancy indexing took much of a 12-megapixel render's time.
    """
    extents = masks.extents()
    present = (extents[:, 2] > extents[:, 0]) & (extents[:, 3] > extents[:, 1])
    if not present.any():
        return
    ux0, uy0 = (int(v) for v in extents[present, :2].min(axis=0))
    ux1, uy1 = (int(v) for v in extents[present, 2:].max(axis=0))
    n = len(masks)
    small = n < 256  # label values fit OpenCV's 8-bit lookup table
    label = np.zeros((uy1 - uy0, ux1 - ux0), np.uint8 if small else np.uint16)  # 0: none; i + 1: instance i
    for i in reversed(np.flatnonzero(present).tolist()):  # lowest score first: the best is written last
        mask, x, y = masks.crop(i)
        region = label[y - uy0:y - uy0 + mask.shape[0], x - ux0:x - ux0 + mask.shape[1]]
        cv2.copyTo(np.full(mask.shape, i + 1, label.dtype), mask.view(np.uint8), region)
    lut = np.zeros((256 if small else n + 1, 3), np.uint8)
    lut[1:n + 1] = PALETTE[np.arange(n) % len(PALETTE)]
    band = max(1, (1 << 20) // (ux1 - ux0))  # about a megapixel per band
    for top in range(0, uy1 - uy0, band):
        rows = label[top:top + band]
        covered = (rows > 0).view(np.uint8)
        if not covered.any():
            continue
        colours = cv2.LUT(cv2.merge([rows, rows, rows]), lut[:, None, :]) if small else np.take(lut, rows, axis=0)
        region = out[uy0 + top:uy0 + top + rows.shape[0], ux0:ux1]
        cv2.copyTo(cv2.addWeighted(region, 1.0 - MASK_ALPHA, colours, MASK_ALPHA, 0.0), covered, region)


class CaptionLayout(NamedTuple):
    """Where `render_detections` draws each caption, and at what text size.

    rects[i] is caption i's backing as (x1, y1, x2, y2) int pixels, half-open (it covers
    columns x1..x2-1 and rows y1..y2-1), or None where no caption is drawn.
    """

    rects: list
    font_scale: float
    thickness: int


_MIN_FONT_SCALE = 0.4  # below this HERSHEY_SIMPLEX is unreadable
_CAPTION_SHARE = 0.25  # captions may cover this much of the image before their text shrinks
_NEIGHBOURS = 64  # a caption with no room at its box looks for it among this many placed captions nearest


def caption_layout(texts, boxes, image_size) -> CaptionLayout:
    """Text size and caption rectangles for captions `texts` of `boxes` (highest score first).

    The text scales with the image (0.55 at 640 px on the long side, at least 0.4); on a
    crowded image, where the captions would cover over a quarter of it, it shrinks, down to
    0.4. No captions on images too small to hold a readable one (a caption taller than a
    third of the image, e.g. 16x16 thumbnails); a caption wider than the image is dropped.
    """
    h, w = image_size

    def sizes_at(font_scale):
        return [_caption_metrics(text, font_scale)[:2] for text in texts]

    font_scale = min(max(0.55 * max(h, w) / 640.0, _MIN_FONT_SCALE), 4.0)
    sizes = sizes_at(font_scale)
    crowding = sum(bw * bh for bw, bh in sizes) / (_CAPTION_SHARE * h * w)
    if crowding > 1 and font_scale > _MIN_FONT_SCALE:
        font_scale = max(font_scale / math.sqrt(crowding), _MIN_FONT_SCALE)
        sizes = sizes_at(font_scale)
    if sizes and max(bh for _, bh in sizes) > h / 3:  # it would hide the image, and not be read
        return CaptionLayout([None] * len(texts), font_scale, _thickness(font_scale))
    gap = max(1, round(0.1 * sizes[0][1])) if sizes else 0
    return CaptionLayout(caption_boxes(sizes, boxes, image_size, gap), font_scale, _thickness(font_scale))


def caption_boxes(text_sizes, boxes, image_size, gap: int = 0) -> list:
    """Caption rectangles that never overlap one another and never leave the image.

    Args:
        text_sizes: (width, height) in pixels of each caption's backing, in priority order
            (highest score first: earlier captions keep their preferred spots).
        boxes: (N, 4) the detections' boxes, x1, y1, x2, y2 in image pixels, same order.
        image_size: (H, W) of the image.
        gap: the fewest pixels left between two captions, so neighbours read apart.

    Returns:
        One rectangle per caption: (x1, y1, x2, y2) ints, half-open as in `CaptionLayout`,
        inside the image; None for a caption larger than the image. Each caption takes the
        first free one of: above its box's top-left corner, inside the box at its top-left,
        just below that (clear of a neighbour's caption above the box), below the box (each
        moved inside the image); when all are taken, the free position nearest the first
        (looking among the captions close by first, then among the _NEIGHBOURS nearest).
        Last resort, when no free position is left around it (more captions than the image
        can hold: hundreds on a small image, with the text already at its smallest), it
        overlaps others at its first choice, and later captions at least as large do not
        search again (placed captions only accumulate).
    """
    h, w = image_size
    placed = np.empty((0, 4), np.int64)  # the rectangles so far, grown by `gap` on every side
    rects = []
    no_room: list[tuple[int, int]] = []  # caption sizes that found no free position around them
    for (cw, ch), box in zip(text_sizes, boxes):
        if cw > w or ch > h:
            rects.append(None)
            continue
        bx1, by1, bx2, by2 = (int(round(v)) for v in box)
        preferred = _clamp(np.array([(bx1, by1 - ch), (bx1, by1), (bx1, by1 + gap), (bx1, by2 + 1)]),
                           cw, ch, image_size)
        corner = _first_free(preferred, cw, ch, placed)
        # Placed captions only accumulate, so once a caption found no room next to its
        # neighbours, one at least as wide and as tall is not searched for again: with
        # hundreds of captions the searches, O(N^2) corners each, took minutes.
        full = any(cw >= fw and ch >= fh for fw, fh in no_room)
        for search in range(1 if full else 2):  # the captions close by first, then the nearest
            if corner is not None:
                break
            if search == 0:
                edges = placed[(np.abs(placed[:, :2] - preferred[0]) < (3 * cw, 3 * ch)).all(axis=1)]
            else:
                edges = placed[np.argsort(((placed[:, :2] - preferred[0]) ** 2).sum(axis=1), kind="stable")[:_NEIGHBOURS]]
            # Every position where a caption can stop sliding up and left has x at 0 or at
            # a placed caption's right edge, and y at 0 or a bottom edge: with the edges of
            # the captions around, if any free position exists among them, one of these is.
            # The others bring it nearer its box.
            xs = np.clip(np.r_[0, w - cw, bx1, bx2 - cw, edges[:, 2], edges[:, 0] - cw], 0, w - cw)
            ys = np.clip(np.r_[0, h - ch, by1 - ch, by1, by2 + 1, edges[:, 3], edges[:, 1] - ch], 0, h - ch)
            grid = np.stack(np.meshgrid(np.unique(xs), np.unique(ys)), -1).reshape(-1, 2)
            distance = ((grid - preferred[0]) ** 2).sum(axis=1)
            corner = _first_free(grid[np.argsort(distance, kind="stable")], cw, ch, placed)
            if corner is None and search == 1:
                no_room.append((cw, ch))
        x, y = preferred[0] if corner is None else corner
        rect = (int(x), int(y), int(x + cw), int(y + ch))
        placed = np.vstack([placed, np.add(rect, (-gap, -gap, gap, gap))])
        rects.append(rect)
    return rects


def _clamp(corners: np.ndarray, cw: int, ch: int, image_size) -> np.ndarray:
    """(M, 2) top-left corners moved so a cw x ch rectangle lies inside the image."""
    h, w = image_size
    return np.stack([np.clip(corners[:, 0], 0, w - cw), np.clip(corners[:, 1], 0, h - ch)], -1)


def _first_free(corners: np.ndarray, cw: int, ch: int, placed: np.ndarray):
    """The first of (M, 2) top-left corners where a cw x ch rectangle misses every placed
    rectangle, or None."""
    for start in range(0, len(corners), 256):  # in chunks: one of the first is usually free
        x, y = corners[start:start + 256].T[:, :, None]
        hit = (x < placed[:, 2]) & (placed[:, 0] < x + cw) & (y < placed[:, 3]) & (placed[:, 1] < y + ch)
        free = np.flatnonzero(~hit.any(axis=1))
        if len(free):
            return corners[start + free[0]]
    return None


def _thickness(font_scale: float) -> int:
    return max(1, round(font_scale * 1.2 / 0.55))  # 1 px at 640 px on the long side, 2 px from 800


def _caption_metrics(text: str, font_scale: float) -> tuple[int, int, int, int]:
    """(backing width, backing height, padding, text height above the baseline) in pixels."""
    (tw, th), baseline = cv2.getTextSize(text, _FONT, font_scale, _thickness(font_scale))
    pad = max(1, round(th * 0.25))
    return tw + 2 * pad, th + baseline + 2 * pad, pad, th


def caption_ink(colour) -> tuple[int, int, int]:
    """Black or white text, whichever contrasts more with an RGB backing `colour`.

    By the WCAG 2 contrast ratio (relative luminance of linear sRGB): the better of the two
    is never below 4.58:1, above the 4.5:1 WCAG AA asks of body text, whatever the colour.
    """
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in np.divide(colour, 255)]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return (0, 0, 0) if (luminance + 0.05) ** 2 > 0.05 * 1.05 else (255, 255, 255)


def _draw_caption(out, text, rect, colour, layout: CaptionLayout) -> None:
    """The caption's text on a solid backing in the instance colour, filling `rect`."""
    x1, y1, x2, y2 = rect
    cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, cv2.FILLED)
    _, _, pad, th = _caption_metrics(text, layout.font_scale)
    cv2.putText(out, text, (x1 + pad, y1 + pad + th), _FONT, layout.font_scale, caption_ink(colour),
                layout.thickness, cv2.LINE_AA)


_ENCODE_PARAMS = {
    "jpeg": lambda quality: (".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]),
    # Level 1: a few times faster than the default for a slightly larger file.
    "png": lambda quality: (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1]),
}


def encode_image(rgb: np.ndarray, fmt: str, jpeg_quality: int = 90, overwrite: bool = False) -> bytes:
    """Encode an (H, W, 3) uint8 RGB array as 'jpeg' or 'png' bytes.

    OpenCV encodes BGR: with overwrite=True the array itself is converted in place (for
    callers that no longer need it, e.g. a freshly rendered answer), saving an image-sized copy.
    """
    if fmt not in _ENCODE_PARAMS:
        raise ValueError(f"unsupported image format {fmt!r}; expected 'jpeg' or 'png'")
    ext, params = _ENCODE_PARAMS[fmt](jpeg_quality)
    if overwrite and rgb.flags.c_contiguous and rgb.flags.writeable:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR, dst=rgb)
    else:
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {rgb.shape} image as {fmt}")
    return buf.tobytes()

"""The photos the tests and the benchmarks feed the engine and the server: scikit-image's real
photographs, as HxWx3 uint8 RGB, resized and encoded as a client would upload them."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def skimage_photo(name: str) -> np.ndarray:
    """A photograph shipped with scikit-image, as HxWx3 uint8 RGB (grey ones repeated)."""
    import skimage.data

    if name == "motorcycle":
        return np.ascontiguousarray(skimage.data.stereo_motorcycle()[0])
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def benchmark_photo() -> np.ndarray:
    """skimage's coffee photo (400x600) resized to 640x480 RGB, the size the targets are set at."""
    import cv2

    return np.ascontiguousarray(cv2.resize(skimage_photo("coffee"), (640, 480), interpolation=cv2.INTER_LINEAR))


def benchmark_photo_jpeg(quality: int = 90) -> bytes:
    """`benchmark_photo()` as a client would upload it."""
    return jpeg_bytes(benchmark_photo(), quality)


def photo_of_size(h: int, w: int) -> np.ndarray:
    """skimage's coffee scaled to h x w with bicubic interpolation: real content, smooth at
    large sizes, as a phone's photo is."""
    import cv2

    return np.ascontiguousarray(cv2.resize(skimage_photo("coffee"), (w, h), interpolation=cv2.INTER_CUBIC))


def jpeg_bytes(rgb: np.ndarray, quality: int = 90) -> bytes:
    """An RGB image as JPEG bytes (OpenCV)."""
    import cv2

    return cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def png_chunk(ctype: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


def interlaced_png(rgb: np.ndarray) -> bytes:
    """An Adam7-interlaced PNG (Pillow writes none): libpng through OpenCV cannot either, so
    the rows are interlaced here and deflated with zlib."""
    from engine.image_io import PNG_MAGIC

    height, width = rgb.shape[:2]
    rows = []
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = rgb[y0::dy, x0::dx]
        if sub.size:
            rows += [b"\x00" + row.tobytes() for row in sub]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + \
        png_chunk(b"IEND", b"")

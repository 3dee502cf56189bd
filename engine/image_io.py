"""Image bytes -> RGB pixels, and a header-only probe that refuses decompression bombs.

Only JPEG and PNG are accepted, recognised by their magic bytes, never by a file name or a
declared content type. `decode_image` returns what a person sees in an image viewer:

* an H x W x 3, C-contiguous, uint8 array in RGB order, (0, 0) the top-left pixel;
* the EXIF orientation applied (JPEG APP1 "Exif", PNG eXIf chunk), so H and W are the
  displayed height and width and every coordinate the engine returns refers to them;
* grayscale and palette images expanded to RGB, 16-bit samples rounded to 8 bits,
  transparent images (RGBA, LA, tRNS) composited over white.

Why the orientation is applied here and not by OpenCV: OpenCV 5's `imdecode` honours EXIF
orientation (for JPEG and for PNG eXIf) with IMREAD_COLOR, but not with IMREAD_UNCHANGED,
which is the only mode that keeps alpha and 16-bit samples. Rather than two code paths with
two behaviours, every image is decoded with orientation ignored and turned here, using the
orientation read by `probe_image`.
"""

from __future__ import annotations

import itertools
import struct
from typing import NamedTuple

import cv2
import numpy as np

from .decode_work import MAX_JPEG_SEGMENTS, MAX_PNG_CHUNKS, check_jpeg_scans, check_png, png_chunks
from .errors import ImageDecodeError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# JPEG start-of-frame markers carry the frame size: C0-CF except DHT (C4), JPG (C8), DAC (CC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])
_EXIF_ORIENTATION_TAG = 0x0112
# decode_image refuses a header declaring more pixels than this before OpenCV allocates any:
# libjpeg pads missing scan data with grey, so a JPEG of a few hundred bytes declaring
# 30000x30000 would otherwise decode to 30000 x 30000 x 3 bytes of pixels (more at its peak,
# and seconds of CPU; figures in benchmarks/results/FIGURES.md). The largest camera sensors are 200 MP.
# The server refuses far smaller images first (MASKRCNN_MAX_MEGAPIXELS, 40 by default).
MAX_DECODE_MEGAPIXELS = 200.0


class ImageInfo(NamedTuple):
    """What the header says, before any pixel is decoded.

    width and height are the displayed size, i.e. after the EXIF orientation (orientations
    5-8 swap the stored width and height). orientation is the EXIF value 1-8 (1 = as stored).
    """

    format: str  # "jpeg" or "png"
    width: int
    height: int
    orientation: int = 1

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def _as_bytes(data) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"image data must be bytes, bytearray or memoryview, not {type(data).__name__}")


def sniff_format(data: bytes) -> str | None:
    """'jpeg', 'png' or None, from the magic bytes only."""
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if data.startswith(PNG_MAGIC):
        return "png"
    return None


def probe_image(data: bytes | bytearray | memoryview,
                max_megapixels: float | None = MAX_DECODE_MEGAPIXELS) -> ImageInfo:
    """Read format, size and EXIF orientation from the header (no pixel decoding), and
    refuse a body whose decoding would cost far more than that size (engine.decode_work).

    Reads the JPEG segments up to the first SOFn marker, or the PNG chunks up to the first
    IDAT, for the size, so that a server can refuse decompression bombs before allocating
    their pixels. Then walks the rest of the structure: a JPEG's marker segments, counting
    its scans (entropy-coded data is searched, not decoded), and a PNG's chunks; a PNG's
    compressed data is inflated (and dropped) only if its size could let it expand beyond
    the declared rows. Milliseconds for an ordinary photo.

    max_megapixels: the size over which the caller refuses an image from its header alone;
    such bodies are not walked (None: every body is). A server passes its own limit, so that
    a header it refuses costs nothing more.

    Raises:
        TypeError: data is not bytes-like.
        ImageDecodeError: not a JPEG or PNG, the header is truncated or corrupt, or the body
            asks for far more decoding work than its header declares (the message says why).
    """
    data = _as_bytes(data)
    kind = sniff_format(data)
    try:
        if kind == "jpeg":
            width, height, orientation, frame_end, sof, segments = _probe_jpeg(data)
        elif kind == "png":
            width, height, orientation, layout = _probe_png(data)
        else:
            raise ImageDecodeError(
                f"not a JPEG or PNG image (first bytes {data[:8]!r}); only JPEG and PNG are accepted")
    except struct.error:
        raise ImageDecodeError(f"truncated {kind.upper()} header") from None
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{kind.upper()} header declares an empty image ({width}x{height})")
    if max_megapixels is None or width * height / 1e6 <= max_megapixels:
        if kind == "jpeg":
            check_jpeg_scans(data, frame_end, sof, width, height, segments)
        else:
            check_png(data, width, height, *layout)
    if orientation >= 5:  # these orientations transpose the image
        width, height = height, width
    return ImageInfo(kind, width, height, orientation)


def _probe_jpeg(data: bytes) -> tuple[int, int, int, int, int, int]:
    """(width, height, orientation, end of the frame header, SOF marker, segments read)."""
    orientation, pos, n, segments = 1, 2, len(data), 0
    while True:
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageDecodeError(f"JPEG refused: more than {MAX_JPEG_SEGMENTS} marker segments before "
                                   f"the frame header (real JPEGs have at most a few hundred)")
        if pos >= n:
            raise ImageDecodeError("truncated JPEG: no frame header (SOF) found")
        if data[pos] != 0xFF:
            raise ImageDecodeError(f"corrupt JPEG: expected a marker at byte {pos}")
        while pos < n and data[pos] == 0xFF:  # markers may be preceded by fill bytes
            pos += 1
        if pos >= n:
            continue
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any frame header
            raise ImageDecodeError("corrupt JPEG: no frame header (SOF) before the image data")
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > n:
            raise ImageDecodeError("truncated JPEG: a header segment runs past the end")
        segment = data[pos + 2:pos + length]
        if marker == 0xE1 and segment.startswith(b"Exif\x00\x00") and orientation == 1:
            orientation = _exif_orientation(segment[6:])
        elif marker in _SOF_MARKERS:
            _precision, height, width = struct.unpack_from(">BHH", segment)
            return width, height, orientation, pos + length, marker, segments
        pos += length


def _probe_png(data: bytes) -> tuple[int, int, int, tuple[int, int, int]]:
    """(width, height, orientation, (bit depth, colour type, interlace method))."""
    (length,) = struct.unpack_from(">I", data, 8)
    if data[12:16] != b"IHDR" or length != 13:
        raise ImageDecodeError("corrupt PNG: the first chunk is not IHDR")
    width, height, depth, colour, _compression, _filter, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    orientation = 1
    # The PNG spec places eXIf before the first IDAT; stop there, as image viewers do.
    for pos, length, ctype in itertools.islice(png_chunks(data), MAX_PNG_CHUNKS):  # check_png refuses more
        if ctype in (b"IDAT", b"IEND"):
            break
        if ctype == b"eXIf":
            orientation = _exif_orientation(data[pos + 8:pos + 8 + length])
            break
    return width, height, orientation, (depth, colour, interlace)


def _exif_orientation(tiff: bytes) -> int:
    """The Orientation tag (0x0112) of IFD0 in a TIFF-structured EXIF blob; 1 if absent/bad."""
    try:
        if tiff[:4] == b"II*\x00":
            endian = "<"
        elif tiff[:4] == b"MM\x00*":
            endian = ">"
        else:
            return 1
        (ifd,) = struct.unpack_from(endian + "I", tiff, 4)
        (count,) = struct.unpack_from(endian + "H", tiff, ifd)
        for i in range(count):
            tag, typ, _n, value = struct.unpack_from(endian + "HHI4s", tiff, ifd + 2 + 12 * i)
            if tag == _EXIF_ORIENTATION_TAG and typ == 3:  # SHORT, stored left-justified
                (orientation,) = struct.unpack_from(endian + "H", value)
                return orientation if 1 <= orientation <= 8 else 1
    except struct.error:
        pass  # a broken EXIF block must not make a good image undecodable: treat as absent
    return 1


def decode_image(data: bytes | bytearray | memoryview,
                 max_megapixels: float | None = MAX_DECODE_MEGAPIXELS, probed: ImageInfo | None = None) -> np.ndarray:
    """Decode a JPEG or PNG to an (H, W, 3) uint8 RGB, C-contiguous array, as displayed.

    max_megapixels: refuse, from the header alone, an image declaring more pixels (None: only
    OpenCV's own limit of 2**30 pixels).
    probed: what probe_image(data) returned, where the caller has run it (a server, before
    admitting the request): its checks are not repeated.

    Raises:
        TypeError: data is not bytes-like.
        ImageDecodeError: not a JPEG or PNG, over max_megapixels, truncated or corrupt.
    """
    data = _as_bytes(data)
    info = probed or probe_image(data, max_megapixels)
    if max_megapixels is not None and info.megapixels > max_megapixels:
        raise ImageDecodeError(f"the {info.format.upper()} header declares {info.width}x{info.height} = "
                               f"{info.megapixels:.1f} megapixels; the decode limit is {max_megapixels:g}")
    if info.format == "png":
        _check_png_chunk_lengths(data)
    buf = np.frombuffer(data, np.uint8)
    try:
        if info.format == "jpeg":
            # JPEG has neither alpha nor (in practice) more than 8 bits; IMREAD_COLOR_RGB
            # also converts grayscale and CMYK/YCCK to RGB.
            image = cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
        else:
            raw = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # keeps alpha and 16-bit samples
            image = None if raw is None else _png_to_rgb8(raw)
    except cv2.error as exc:  # e.g. a size over OpenCV's own pixel limit
        raise ImageDecodeError(f"cannot decode the {info.format.upper()} image: {exc.err}") from None
    if image is None:
        raise ImageDecodeError(f"cannot decode the {info.format.upper()} image: truncated or corrupt data")
    image = _apply_orientation(image, info.orientation)
    if image.shape[:2] != (info.height, info.width):  # header and pixels disagree
        raise ImageDecodeError(f"corrupt {info.format.upper()}: the header says {info.width}x{info.height} "
                               f"but {image.shape[1]}x{image.shape[0]} pixels were decoded")
    return np.ascontiguousarray(image)


def _check_png_chunk_lengths(data: bytes) -> None:
    """Refuse a PNG with a chunk whose declared length runs past the end of the data.

    OpenCV 5's PNG reader (PngDecoder::read_chunk) allocates and zero-fills a chunk's declared
    length, up to 4 GiB, before it finds the data short: a 1.7 KB PNG with a small IHDR (so
    it passes the megapixel limit) cost gigabytes and seconds. Walking the chunk headers costs
    microseconds (a few hundred chunks in a 6 MB PNG)."""
    n = len(data)
    for pos, length, ctype in png_chunks(data):
        if pos + 12 + length > n:  # length, type, data, CRC: OpenCV reads them all at once
            raise ImageDecodeError(f"cannot decode the PNG image: truncated or corrupt data (chunk {ctype!r} "
                                   f"at byte {pos} declares {length} bytes, {n - pos - 12} follow)")
        if ctype == b"IEND":
            return


def _png_to_rgb8(raw: np.ndarray) -> np.ndarray:
    """OpenCV's IMREAD_UNCHANGED output (gray, BGR or BGRA; uint8 or uint16) -> RGB uint8.

    Float work (alpha compositing) runs in bands of rows, so a 40-megapixel RGBA PNG needs
    a few MB of temporaries rather than a float copy of the whole image."""
    if raw.ndim == 2:
        raw = raw[:, :, None]
    channels = raw.shape[2]
    if channels in (2, 4):  # colour/gray plus alpha: composite over white
        rgb = np.empty((*raw.shape[:2], channels - 1), np.uint8)
        maxval = 65535.0 if raw.dtype == np.uint16 else 255.0
        band = max(1, (1 << 18) // raw.shape[1])
        for top in range(0, raw.shape[0], band):
            rows = raw[top:top + band]
            alpha = rows[:, :, -1:].astype(np.float32) * (1.0 / maxval)
            colour = rows[:, :, :-1].astype(np.float32) * (255.0 / maxval)
            rgb[top:top + band] = np.rint(colour * alpha + 255.0 * (1.0 - alpha))
    elif raw.dtype == np.uint16:
        # round(x / 257): exact in OpenCV's float arithmetic (x / 257 is never a tie; checked
        # for all 65536 values in the tests), where its plain conversion truncates (x >> 8).
        rgb = cv2.convertScaleAbs(raw, alpha=1.0 / 257.0).reshape(raw.shape)
    else:
        rgb = raw
    if rgb.shape[2] == 1:
        return cv2.cvtColor(rgb, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(rgb, cv2.COLOR_BGR2RGB)


# EXIF orientation -> operations turning the stored pixels into the displayed image.
_ORIENT_OPS = {
    1: lambda im: im,
    2: lambda im: cv2.flip(im, 1),                                   # mirror left-right
    3: lambda im: cv2.rotate(im, cv2.ROTATE_180),
    4: lambda im: cv2.flip(im, 0),                                   # mirror top-bottom
    5: lambda im: cv2.transpose(im),                                 # transpose
    6: lambda im: cv2.rotate(im, cv2.ROTATE_90_CLOCKWISE),
    7: lambda im: cv2.rotate(cv2.transpose(im), cv2.ROTATE_180),     # transverse
    8: lambda im: cv2.rotate(im, cv2.ROTATE_90_COUNTERCLOCKWISE),
}


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    return _ORIENT_OPS.get(orientation, _ORIENT_OPS[1])(image)

"""Bodies built to hurt a decoder, in code, in microseconds however large they declare to be:
PNG IDAT and compressed-text decompression bombs, progressive JPEGs with thousands of scans,
floods of empty chunks or segments, and headers declaring sizes the data does not have.

tests/test_image_io.py and tests/test_fuzz.py check that engine.image_io refuses them;
benchmarks/decode_bombs.py measures what they cost decoded and what refusing them costs.
"""

from __future__ import annotations

import functools
import struct
import zlib

import numpy as np

from engine.image_io import PNG_MAGIC
from harness.photos import png_chunk, skimage_photo

MIB = 1 << 20


# ---- PNG --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _zero_blocks() -> tuple[bytes, bytes]:
    """(zlib header and deflate blocks for the first MiB of zeros, blocks for each further
    MiB): after a sync flush the compressor writes the same bytes for every further MiB."""
    compressor = zlib.compressobj(9)
    unit = bytes(MIB)
    first = compressor.compress(unit) + compressor.flush(zlib.Z_SYNC_FLUSH)
    further = compressor.compress(unit) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert further == compressor.compress(unit) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return first, further


def zeros_zlib(mib: int) -> bytes:
    """A valid zlib stream (Adler-32 included) inflating to `mib` MiB of zeros, about 1 KB per
    MiB, built in microseconds however large."""
    first, further = _zero_blocks()
    n = mib * MIB
    adler = ((n % 65521) << 16) | 1  # Adler-32 of n zero bytes
    return first + further * (mib - 1) + b"\x03\x00" + struct.pack(">I", adler)  # final empty block


def png_bomb(width: int, height: int, inflate_mib: int, depth: int = 8, colour: int = 2,
             interlace: int = 0, idat_bytes: int = 1 << 16) -> bytes:
    """A PNG declaring width x height whose IDAT stream (split into idat_bytes chunks)
    inflates to `inflate_mib` MiB of zeros: valid rows (filter 0, black) and then more."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    plte = png_chunk(b"PLTE", bytes(3 * 16)) if colour == 3 else b""
    stream = zeros_zlib(inflate_mib)
    idat = b"".join(png_chunk(b"IDAT", stream[i:i + idat_bytes]) for i in range(0, len(stream), idat_bytes))
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + plte + idat + png_chunk(b"IEND", b"")


def png_text_bomb(ctype: bytes, chunks: int, mib_each: int, after_idat: bool = False) -> bytes:
    """A valid 64x64 RGB PNG carrying `chunks` compressed text chunks (zTXt, or iTXt with its
    compression flag set), each inflating to `mib_each` MiB, before or after the IDAT."""
    stream = zeros_zlib(mib_each)
    prefix = b"Comment%d\x00\x00" if ctype == b"zTXt" else b"Comment%d\x00\x01\x00en\x00\x00"
    text = b"".join(png_chunk(ctype, prefix % i + stream) for i in range(chunks))
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
    idat = png_chunk(b"IDAT", zlib.compress(bytes(64 * (1 + 64 * 3))))
    body = idat + text if after_idat else text + idat
    return PNG_MAGIC + ihdr + body + png_chunk(b"IEND", b"")


def png_chunk_flood(body_bytes: int) -> bytes:
    """A valid 64x64 PNG with `body_bytes` of empty private ancillary chunks (12 bytes each)."""
    good = png_text_bomb(b"zTXt", 0, 1)
    return good[:33] + png_chunk(b"prVt", b"") * (body_bytes // 12) + good[33:]


def png_with_size(width: int, height: int, body: bytes = b"", depth: int = 8, colour: int = 2, interlace: int = 0) -> bytes:
    """A PNG signature and a valid IHDR (correct CRC) declaring width x height, then `body`."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + body


# ---- JPEG -------------------------------------------------------------------------------------


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment of a well-formed JPEG from SOI to EOI, a
    scan's segment running to the end of its entropy-coded data."""
    segments, pos = [(0xD8, 0, 2)], 2
    while pos < len(data):
        start = pos
        while data[pos] == 0xFF:
            pos += 1
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            segments.append((marker, start, pos))
            break
        pos += struct.unpack_from(">H", data, pos)[0]
        if marker == 0xDA:
            while not (data[pos] == 0xFF and data[pos + 1] not in (0x00, *range(0xD0, 0xD8))):
                pos += 1
        segments.append((marker, start, pos))
    return segments


@functools.lru_cache(maxsize=1)
def _small_progressive() -> tuple[bytes, tuple[bytes, ...]]:
    """A real 16x16 progressive JPEG from OpenCV (libjpeg-turbo's script: 10 scans) as
    (everything up to its first table or scan after the frame header, its scans, each with
    the tables defined just before it)."""
    import cv2

    crop = skimage_photo("coffee")[100:116, 200:216, ::-1].copy()
    jpeg = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    segments = jpeg_segments(jpeg)
    sof_end = next(end for marker, _start, end in segments if marker == 0xC2)
    scans, current = [], b""
    for marker, start, end in segments:
        if start >= sof_end and marker != 0xD9:
            current += jpeg[start:end]
            if marker == 0xDA:
                scans.append(current)
                current = b""
    return jpeg[:sof_end], tuple(scans)


def jpeg_with_size(jpeg: bytes, width: int, height: int, sof_marker: int | None = None) -> bytes:
    """A real JPEG (or its head) whose first SOF0/SOF2 frame header is patched to declare
    width x height (and, given, to be another SOFn)."""
    data = bytearray(jpeg)
    sof = max(data.find(b"\xff\xc0"), data.find(b"\xff\xc2"))
    struct.pack_into(">HH", data, sof + 5, height, width)
    if sof_marker is not None:
        data[sof + 1] = sof_marker
    return bytes(data)


def jpeg_scan_bomb(width: int, height: int, scans: int, arithmetic: bool = False) -> bytes:
    """A progressive JPEG declaring width x height with `scans` scans in all: a real encoder's
    ten, then its last (an AC refinement scan of a few dozen bytes) repeated. libjpeg accepts
    each repeat (with a warning) and walks the whole frame for it. arithmetic: the frame
    header says SOF10 (progressive, arithmetic coding), so the same bytes decode as
    arithmetic-coded data."""
    head, real = _small_progressive()
    body = list(real[:scans]) + [real[-1]] * max(0, scans - len(real))
    return jpeg_with_size(head, width, height, 0xCA if arithmetic else None) + b"".join(body) + b"\xff\xd9"


def jpeg_declaring(width: int, height: int, progressive: bool = True, arithmetic: bool = False) -> bytes:
    """A real encoder's small JPEG whose frame header declares width x height: almost no data
    for the frame (libjpeg pads the rest with grey)."""
    head, real = _small_progressive()
    if progressive:
        return jpeg_with_size(head, width, height, 0xCA if arithmetic else None) + b"".join(real) + b"\xff\xd9"
    import cv2

    jpeg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    return jpeg_with_size(jpeg, width, height, 0xC9 if arithmetic else None)


def jpeg_segment_flood(body_bytes: int) -> bytes:
    """A small real JPEG with `body_bytes` of empty COM segments (4 bytes each) before it."""
    head, real = _small_progressive()
    return b"\xff\xd8" + b"\xff\xfe\x00\x02" * (body_bytes // 4) + head[2:] + b"".join(real) + b"\xff\xd9"

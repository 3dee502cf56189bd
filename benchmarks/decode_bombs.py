#!/usr/bin/env python3
"""Decompression and decode-work bombs: what each costs decoded, and what refusing it costs.

    python benchmarks/decode_bombs.py [--output benchmarks/results/decode_bombs.json]

Builds each kind of bomb in code (tests/test_fuzz.py and tests/test_image_io.py use the same
builders), then measures, as process CPU time (not wall time, so that other work on the
machine does not count):

* before: cv2.imdecode on the body, i.e. what the server's decoder spent before
  engine.decode_work refused it;
* after: engine.image_io.probe_image until it raises ImageDecodeError (the server's HTTP
  thread, before admission);
* for ordinary photos (PNG and JPEG, and a large flat-graphics PNG, which has to be
  inflated to be checked): the probe's cost next to the decode's.

Writes benchmarks/results/decode_bombs.json with the machine description.
"""

from __future__ import annotations

import argparse
import functools
import io
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.decode_work import MAX_ARITHMETIC_JPEG_SCANS, MAX_JPEG_SCANS, MAX_PNG_TEXT_BYTES  # noqa: E402
from engine.errors import ImageDecodeError  # noqa: E402
from engine.image_io import PNG_MAGIC  # noqa: E402

MIB = 1 << 20


# ---- PNG --------------------------------------------------------------------------------------


def png_chunk(ctype: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + ctype + data + struct.pack(">I", zlib.crc32(ctype + data))


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

    from benchmarks.inputs import skimage_photo

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


def jpeg_frame(head: bytes, width: int, height: int, sof_marker: int | None = None) -> bytes:
    """`head` with its frame header patched to declare width x height (and, given, another SOFn)."""
    data = bytearray(head)
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
    return jpeg_frame(head, width, height, 0xCA if arithmetic else None) + b"".join(body) + b"\xff\xd9"


def jpeg_declaring(width: int, height: int, progressive: bool = True, arithmetic: bool = False) -> bytes:
    """A real encoder's small JPEG whose frame header declares width x height: almost no data
    for the frame (libjpeg pads the rest with grey)."""
    head, real = _small_progressive()
    if progressive:
        return jpeg_frame(head, width, height, 0xCA if arithmetic else None) + b"".join(real) + b"\xff\xd9"
    import cv2

    jpeg = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    return jpeg_frame(jpeg, width, height, 0xC9 if arithmetic else None)


def jpeg_segment_flood(body_bytes: int) -> bytes:
    """A small real JPEG with `body_bytes` of empty COM segments (4 bytes each) before it."""
    head, real = _small_progressive()
    return b"\xff\xd8" + b"\xff\xfe\x00\x02" * (body_bytes // 4) + head[2:] + b"".join(real) + b"\xff\xd9"


def png_chunk_flood(body_bytes: int) -> bytes:
    """A valid 64x64 PNG with `body_bytes` of empty private ancillary chunks (12 bytes each)."""
    good = png_text_bomb(b"zTXt", 0, 1)
    return good[:33] + png_chunk(b"prVt", b"") * (body_bytes // 12) + good[33:]


# ---- measuring --------------------------------------------------------------------------------


def cpu_s(function, *args) -> tuple[float, object]:
    """(process CPU seconds, result or the ImageDecodeError raised) of one call."""
    start = time.process_time()
    try:
        result = function(*args)
    except ImageDecodeError as exc:
        result = exc
    return time.process_time() - start, result


def _imdecode(data: bytes):
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def bombs() -> dict[str, bytes]:
    """The worst body of each kind within the server's defaults (6 MiB, 40 megapixels)."""
    return {
        "png_idat_64x64_2gib": png_bomb(64, 64, 2048),
        "png_idat_4000x3000_3gib": png_bomb(4000, 3000, 3072),
        "png_idat_64x64_interlaced_2gib": png_bomb(64, 64, 2048, interlace=1),
        "png_idat_64x64_palette_2gib": png_bomb(64, 64, 2048, depth=4, colour=3),
        "png_idat_40mp_16bit_rgba_5gib": png_bomb(8000, 5000, 5120, depth=16, colour=6),
        "png_ztxt_640x7mib": png_text_bomb(b"zTXt", 640, 7),
        "png_itxt_640x7mib_after_idat": png_text_bomb(b"iTXt", 640, 7, after_idat=True),
        "jpeg_6000x6000_1000_scans": jpeg_scan_bomb(6000, 6000, 1000),
        "jpeg_6000x6000_3000_scans": jpeg_scan_bomb(6000, 6000, 3000),
        "jpeg_6000x6000_arithmetic_100_scans": jpeg_scan_bomb(6000, 6000, 100, arithmetic=True),
        "jpeg_1.5m_com_segments": jpeg_segment_flood(6 * MIB - 1024),
        "png_500k_empty_chunks": png_chunk_flood(6 * MIB - 1024),
    }


def accepted_worst() -> dict[str, bytes]:
    """Bodies at the bounds, accepted: what they cost to decode is what the bounds allow."""
    return {
        f"jpeg_6000x6000_{MAX_JPEG_SCANS}_scans": jpeg_scan_bomb(6000, 6000, MAX_JPEG_SCANS),
        f"jpeg_6000x6000_arithmetic_{MAX_ARITHMETIC_JPEG_SCANS}_scans":
            jpeg_scan_bomb(6000, 6000, MAX_ARITHMETIC_JPEG_SCANS, arithmetic=True),
        "jpeg_6000x6000_no_data_baseline": jpeg_declaring(6000, 6000, progressive=False),
        "jpeg_6000x6000_no_data_progressive": jpeg_declaring(6000, 6000),
        "jpeg_6000x6000_no_data_arithmetic_progressive": jpeg_declaring(6000, 6000, arithmetic=True),
        f"png_ztxt_{MAX_PNG_TEXT_BYTES // MIB}x1mib": png_text_bomb(b"zTXt", MAX_PNG_TEXT_BYTES // MIB, 1),
        "png_7000x5700_rgb_zeros": png_bomb(7000, 5700, 114),
    }


def photos() -> dict[str, bytes]:
    import cv2
    from PIL import Image

    from benchmarks.inputs import skimage_photo

    def pil(array, fmt, **kwargs):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, fmt, **kwargs)
        return buf.getvalue()

    astronaut, coffee = skimage_photo("astronaut"), skimage_photo("coffee")
    flat = np.full((5000, 7000, 3), 255, np.uint8)  # 35 MP of flat graphics: a diagram
    for i in range(0, 5000, 250):
        cv2.rectangle(flat, (i, i // 2), (i + 900, i // 2 + 400), (i % 256, 40, 200), -1)
        cv2.putText(flat, f"label {i}", (i, i // 2 + 600), cv2.FONT_HERSHEY_SIMPLEX, 4, (0, 0, 0), 8)
    large = cv2.resize(astronaut, (4000, 4000), interpolation=cv2.INTER_CUBIC)
    return {
        "astronaut_png": pil(astronaut, "PNG"),
        "astronaut_png_interlaced": _interlaced(astronaut),
        "coffee_jpeg": pil(coffee, "JPEG", quality=90),
        "coffee_jpeg_progressive": pil(coffee, "JPEG", quality=90, progressive=True),
        "astronaut_4000x4000_png": pil(large, "PNG"),
        "astronaut_4000x4000_jpeg_progressive": pil(large, "JPEG", quality=90, progressive=True),
        "flat_graphics_7000x5000_png": pil(flat, "PNG"),
    }


def _interlaced(rgb: np.ndarray) -> bytes:
    """An Adam7-interlaced PNG (Pillow writes none): libpng through OpenCV cannot either, so
    the rows are interlaced here and deflated with zlib."""
    height, width = rgb.shape[:2]
    rows = []
    for x0, y0, dx, dy in ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)):
        sub = rgb[y0::dy, x0::dx]
        if sub.size:
            rows += [b"\x00" + row.tobytes() for row in sub]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 1)
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"".join(rows), 6)) + \
        png_chunk(b"IEND", b"")


def main(argv=None) -> int:
    from benchmarks.fuzz import quiet_decoders
    from benchmarks.machine import write_results
    from engine.image_io import decode_image, probe_image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "decode_bombs.json")
    args = parser.parse_args(argv)

    refused, accepted, ordinary = {}, {}, {}
    with quiet_decoders() as log:
        for name, data in bombs().items():
            before, image = cpu_s(_imdecode, data)
            after, error = cpu_s(probe_image, data)
            refused[name] = {"body_bytes": len(data), "decode_cpu_s": round(before, 3),
                             "decoded": None if image is None else list(image.shape),
                             "probe_cpu_s": round(after, 4),
                             "refusal": str(error) if isinstance(error, ImageDecodeError) else None}
            print(name, refused[name], file=log)
        for name, data in accepted_worst().items():
            probe, info = cpu_s(probe_image, data)
            decode, image = cpu_s(decode_image, data)
            accepted[name] = {"body_bytes": len(data), "probe_cpu_s": round(probe, 4),
                              "decode_image_cpu_s": round(decode, 3),
                              "outcome": str(image) if isinstance(image, ImageDecodeError) else list(image.shape)}
            print(name, accepted[name], file=log)
        for name, data in photos().items():
            probe = min(cpu_s(probe_image, data)[0] for _ in range(5))
            decode = min(cpu_s(_imdecode, data)[0] for _ in range(3))
            ordinary[name] = {"body_bytes": len(data), "probe_cpu_ms": round(probe * 1e3, 2),
                              "decode_cpu_ms": round(decode * 1e3, 1),
                              "probe_over_decode": round(probe / max(decode, 1e-9), 3)}
            print(name, ordinary[name], file=log)
    write_results({"benchmark": "decode_bombs", "cpu_time": "process CPU time (time.process_time)",
                   "refused": refused, "accepted_at_the_bounds": accepted, "ordinary_images": ordinary},
                  args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

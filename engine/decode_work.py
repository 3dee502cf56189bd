"""Refuse image bodies whose decoding would cost far more than their header's declared size.

A header's width and height bound the pixels a decoder allocates (the server refuses more
than MASKRCNN_MAX_MEGAPIXELS from the header alone), but not the work it does to fill them:

* PNG: libpng keeps inflating IDAT data past the last row it needs, so a small body whose
  deflate stream expands to gigabytes of zeros costs seconds of CPU for a 64x64 image.
  `check_png` inflates the stream (in bounded pieces, discarding the output) only when its
  compressed size could expand beyond the exact size of the rows the header implies, and
  refuses it when it does. libpng also inflates every compressed text chunk (zTXt, and
  iTXt with its compression flag set), each up to its own per-chunk limit, so many of them
  add up: their total inflated size is bounded too. iCCP profiles are not: libpng reads one
  and ignores the rest, so they cost nothing whatever their number.
* JPEG: libjpeg walks every coefficient block of the declared frame once per scan, even a
  scan with no data, so a small progressive body carrying thousands of tiny scans costs
  (declared pixels x scans). `check_jpeg_scans` counts the scans (SOS markers), skipping
  entropy-coded data as libjpeg does, and refuses more than any encoder writes.

Both walks stop at a bounded number of chunks or marker segments, so that they themselves
stay cheap on a body made of millions of empty ones.

Every refusal raises ImageDecodeError with a message that names what the header declares
and why the body was refused.
"""

from __future__ import annotations

import re
import struct
import zlib

from .errors import ImageDecodeError

# deflate's largest expansion: a 258-byte match coded in 2 bits (a 1-bit length code and a
# 1-bit distance code). zlib's own documentation gives the same figure (zlib technical details).
DEFLATE_MAX_RATIO = 1032
# Inflated IDAT bytes allowed past the exact size of the declared rows. Conforming encoders
# write none; libpng accepts a trailing excess with a warning, so a little is let through
# rather than refusing files that decode correctly.
PNG_INFLATE_SLACK_BYTES = 1 << 16
# The inflated text (zTXt, compressed iTXt) a PNG may carry, in all. XMP packets, the largest
# text real PNGs carry, are kilobytes to a few megabytes.
MAX_PNG_TEXT_BYTES = 16 << 20
# Chunks walked before a PNG is refused: a real PNG has a few to a few thousand (encoders
# split IDAT data into 8-64 KB chunks; one per row at the most).
MAX_PNG_CHUNKS = 50_000
# Scans (SOS markers) in a JPEG. libjpeg's progressive script writes 10 for colour (YCbCr),
# 6 for grey, 18 for CMYK; mozjpeg's and jpegli's scripts are of the same order. Decoding
# walks the whole frame once per scan, however little data the scan carries.
MAX_JPEG_SCANS = 100
# The same for arithmetic coding (SOF9-SOF15), whose scans cost several times more each to
# decode than Huffman-coded ones; the encoders that write it use libjpeg's scripts above.
MAX_ARITHMETIC_JPEG_SCANS = 20
# Marker segments walked before a JPEG is refused: real files have tens (a few hundred with
# an ICC profile or extended XMP split over many APPn segments).
MAX_JPEG_SEGMENTS = 10_000

# Inflate output is produced and dropped in pieces of at most this many bytes.
_INFLATE_PIECE = 1 << 20
# PNG colour type -> samples per pixel (grey, RGB, palette, grey+alpha, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_COLOUR_NAMES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
# Adam7 passes: (first column, first row, column step, row step).
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_TEXT_CHUNKS = (b"zTXt", b"iTXt")
# Arithmetic-coded frame headers (SOF9-SOF11, SOF13-SOF15).
_ARITHMETIC_SOF = frozenset([0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF])
# The next marker, as libjpeg finds it between segments and at the end of entropy-coded
# data: 0xFF followed by anything but 0x00 (a stuffed data byte), 0xFF (fill) or RST0-7
# (restart markers, which stand inside a scan's data).
_NEXT_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")
_SOS, _EOI, _TEM = 0xDA, 0xD9, 0x01


def png_chunks(data: bytes):
    """(offset, declared data length, type) of each PNG chunk whose header is in `data`, in order."""
    pos = 8  # after the signature
    while pos + 8 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        yield pos, length, ctype
        pos += 12 + length  # length, type, data, CRC


def png_raw_size(width: int, height: int, depth: int, colour: int, interlaced: bool) -> int:
    """Bytes of filtered rows (one filter byte per row) that a PNG's IDAT stream inflates
    to, exactly, for this IHDR; Adam7's seven sub-images summed when interlaced. An unknown
    colour type counts as four samples per pixel (libpng refuses it anyway)."""
    bits_per_pixel = _PNG_CHANNELS.get(colour, 4) * depth

    def rows(w: int, h: int) -> int:
        return h * (1 + (w * bits_per_pixel + 7) // 8) if w > 0 and h > 0 else 0

    if not interlaced:
        return rows(width, height)
    return sum(rows((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in _ADAM7)


def inflated_size(pieces, limit: int) -> int:
    """Bytes the zlib stream split over `pieces` (bytes-like, in order) inflates to, counted
    up to `limit` + 1 at the most: the output is made and dropped piecewise, never held.
    Stops at the end of the stream, or where it is corrupt (as libpng does)."""
    inflater = zlib.decompressobj()
    total = 0
    for piece in pieces:
        data = piece
        while True:
            want = min(_INFLATE_PIECE, limit + 1 - total)
            try:
                out = inflater.decompress(data, want)
            except zlib.error:
                return total
            total += len(out)
            if total > limit or inflater.eof:
                return total
            data = inflater.unconsumed_tail
            if not data and len(out) < want:  # this piece used up and nothing held back
                break
    return total


def check_png(data: bytes, width: int, height: int, depth: int, colour: int, interlace: int) -> None:
    """Refuse a PNG whose IDAT stream inflates beyond its declared rows (plus
    PNG_INFLATE_SLACK_BYTES), whose compressed text inflates beyond MAX_PNG_TEXT_BYTES in
    all, or that has more than MAX_PNG_CHUNKS chunks before IEND. Inflates only what could
    break a bound. Raises ImageDecodeError."""
    view = memoryview(data)
    idat, text = [], []
    for count, (pos, length, ctype) in enumerate(png_chunks(data)):
        if count >= MAX_PNG_CHUNKS:
            raise ImageDecodeError(f"PNG refused: more than {MAX_PNG_CHUNKS} chunks (real PNGs have at most "
                                   f"a few thousand)")
        if ctype == b"IEND":
            break
        body = view[pos + 8:pos + 8 + length]  # shorter if the chunk runs past the end
        if ctype == b"IDAT":
            idat.append(body)
        elif ctype in _PNG_TEXT_CHUNKS:
            compressed = _png_text_stream(ctype, body)
            if compressed is not None:
                text.append(compressed)

    raw = png_raw_size(width, height, depth, colour, interlace == 1)
    limit = raw + PNG_INFLATE_SLACK_BYTES
    if DEFLATE_MAX_RATIO * sum(len(b) for b in idat) > limit and inflated_size(idat, limit) > limit:
        kind = (f"{depth}-bit {_PNG_COLOUR_NAMES.get(colour, f'colour type {colour}')}"
                f"{', interlaced' if interlace == 1 else ''}")
        raise ImageDecodeError(
            f"PNG refused as a decompression bomb: the header declares {width}x{height} pixels ({kind}), "
            f"{raw} bytes of rows, but the image data (IDAT) inflates to more than {limit} bytes")

    if DEFLATE_MAX_RATIO * sum(len(t) for t in text) > MAX_PNG_TEXT_BYTES:
        total = 0
        for stream in text:
            total += inflated_size([stream], MAX_PNG_TEXT_BYTES - total)
            if total > MAX_PNG_TEXT_BYTES:
                raise ImageDecodeError(
                    f"PNG refused as a decompression bomb: its compressed text chunks (zTXt, iTXt) inflate to "
                    f"more than {MAX_PNG_TEXT_BYTES} bytes (image {width}x{height})")


def _png_text_stream(ctype: bytes, body: memoryview) -> memoryview | None:
    """The zlib stream of a zTXt chunk, or of an iTXt chunk with its compression flag set;
    None for uncompressed or malformed text (libpng skips those without inflating)."""
    key_end = bytes(body[:80]).find(b"\x00")  # keywords are 1-79 bytes
    if key_end < 1:
        return None
    if ctype == b"zTXt":
        return body[key_end + 2:]  # keyword, NUL, compression method
    if len(body) < key_end + 3 or body[key_end + 1] != 1:  # iTXt: compression flag, method
        return None
    rest = body[key_end + 3:]
    language_end = bytes(rest[:256]).find(b"\x00")
    if language_end < 0:
        return None
    rest = rest[language_end + 1:]
    translated_end = bytes(rest).find(b"\x00")  # the translated keyword: any length
    return None if translated_end < 0 else rest[translated_end + 1:]


def check_jpeg_scans(data: bytes, pos: int, sof_marker: int, width: int, height: int, segments: int) -> None:
    """Count the scans after the frame header (which ends at `pos`) up to EOI and refuse
    more than MAX_JPEG_SCANS (MAX_ARITHMETIC_JPEG_SCANS for arithmetic coding), or more
    than MAX_JPEG_SEGMENTS marker segments in all (`segments` were walked before `pos`).

    Markers are found as libjpeg finds them: bytes between segments are skipped up to the
    next 0xFF that starts a marker, and a scan's entropy-coded data runs to the first 0xFF
    that is neither a stuffed 0xFF00 nor a restart marker. Raises ImageDecodeError."""
    arithmetic = sof_marker in _ARITHMETIC_SOF
    max_scans = MAX_ARITHMETIC_JPEG_SCANS if arithmetic else MAX_JPEG_SCANS
    scans, n = 0, len(data)
    while True:
        found = _NEXT_MARKER.search(data, pos)
        if found is None:  # truncated: libjpeg pads what is missing and stops
            return
        marker, pos = data[found.start() + 1], found.end()
        if marker == _EOI:
            return
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise ImageDecodeError(f"JPEG refused: more than {MAX_JPEG_SEGMENTS} marker segments (real JPEGs "
                                   f"have at most a few hundred)")
        if marker == _TEM:  # stands alone, no length field
            continue
        if pos + 2 > n:
            return
        (length,) = struct.unpack_from(">H", data, pos)
        pos += max(length, 2)
        if marker == _SOS:
            scans += 1
            if scans > max_scans:
                frame = "an arithmetic-coded frame" if arithmetic else "a frame"
                raise ImageDecodeError(
                    f"JPEG refused: more than {max_scans} scans in {frame} of {width}x{height} pixels; decoding "
                    f"walks the whole frame once per scan, and real encoders write a few dozen at most")

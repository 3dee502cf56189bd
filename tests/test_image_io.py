"""engine.image_io: decoding to displayed RGB, and the header-only probe.

Reference decodes come from Pillow, an independent decoder from the OpenCV under test.
"""

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from engine import decode_work
from engine.decode_work import (
    MAX_ARITHMETIC_JPEG_SCANS, MAX_JPEG_SCANS, MAX_JPEG_SEGMENTS, MAX_PNG_CHUNKS, MAX_PNG_TEXT_BYTES,
    PNG_INFLATE_SLACK_BYTES, inflated_size, png_chunks, png_raw_size,
)
from engine.errors import ImageDecodeError
from engine import image_io
from engine.image_io import ImageInfo, decode_image, probe_image
from harness.hostile_images import (
    MIB, jpeg_scan_bomb, jpeg_segment_flood, png_bomb, png_chunk_flood, png_text_bomb, zeros_zlib,
)
from harness.photos import interlaced_png
from helpers import counted_decoder_calls, photo
from server_fixtures import drawn_image, encode_pil


class Work:
    """What probing or decoding did, counted: bytes inflated by engine.decode_work, PNG chunks
    walked, and calls of OpenCV's decoder. The refusal tests bound these, not the time taken."""

    def __init__(self, imdecode):
        self.inflated = 0
        self.chunks = 0
        self._imdecode = imdecode

    @property
    def decoder_calls(self) -> int:
        return self._imdecode.call_count


@pytest.fixture
def work(monkeypatch):
    with counted_decoder_calls() as imdecode:
        counted = Work(imdecode)
        _count_inflating_and_walking(monkeypatch, counted)
        yield counted


def _count_inflating_and_walking(monkeypatch, counted: Work) -> None:
    """engine.decode_work's inflating and the PNG chunk walks, counted into `counted`."""

    class CountingInflater:
        def __init__(self):
            self._inflater = zlib.decompressobj()

        def decompress(self, data, max_length=0):
            out = self._inflater.decompress(data, max_length)
            counted.inflated += len(out)
            return out

        def __getattr__(self, name):  # eof, unconsumed_tail
            return getattr(self._inflater, name)

    class CountingZlib:
        error = zlib.error

        @staticmethod
        def decompressobj():
            return CountingInflater()

    def counting_chunks(data):
        for chunk in real_chunks(data):
            counted.chunks += 1
            yield chunk

    real_chunks = decode_work.png_chunks
    monkeypatch.setattr(decode_work, "zlib", CountingZlib)
    monkeypatch.setattr(decode_work, "png_chunks", counting_chunks)
    monkeypatch.setattr(image_io, "png_chunks", counting_chunks)


def pil_reference(data: bytes) -> np.ndarray:
    """What Pillow shows: EXIF orientation applied, converted to RGB."""
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))


def with_exif(array: np.ndarray, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    return encode_pil(array, fmt, exif=exif.tobytes(), **kwargs)


def assert_rgb_image(img: np.ndarray, h: int, w: int):
    assert img.shape == (h, w, 3) and img.dtype == np.uint8 and img.flags.c_contiguous


# ---- ordinary images ----------------------------------------------------------------------


def test_png_photo_is_decoded_exactly():
    astronaut = photo("astronaut")
    img = decode_image(encode_pil(astronaut, "PNG"))
    assert_rgb_image(img, 512, 512)
    np.testing.assert_array_equal(img, astronaut)


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_photo_matches_pillow(progressive):
    coffee = photo("coffee")
    data = encode_pil(coffee, "JPEG", quality=90, progressive=progressive)
    img = decode_image(data)
    assert_rgb_image(img, 400, 600)
    # Both use libjpeg(-turbo) variants; allow for IDCT/upsampling differences.
    diff = np.abs(img.astype(int) - pil_reference(data).astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 16
    assert np.abs(img.astype(int) - coffee.astype(int)).mean() < 4  # and it is RGB, not BGR


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_bytes_like(kind):
    chelsea = photo("chelsea")
    data = encode_pil(chelsea, "PNG")
    np.testing.assert_array_equal(decode_image(kind(data)), chelsea)
    assert probe_image(kind(data)) == ImageInfo("png", 451, 300, 1)


@pytest.mark.parametrize("value", ["not bytes", None, 42, np.zeros(10, np.uint8)])
def test_rejects_non_bytes(value):
    with pytest.raises(TypeError):
        decode_image(value)
    with pytest.raises(TypeError):
        probe_image(value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_grayscale_becomes_rgb(fmt):
    gray = drawn_image()[:, :, 0].copy()
    img = decode_image(encode_pil(gray, fmt))
    assert_rgb_image(img, *gray.shape)
    assert (img[:, :, 0] == img[:, :, 1]).all() and (img[:, :, 1] == img[:, :, 2]).all()
    if fmt == "PNG":
        np.testing.assert_array_equal(img[:, :, 0], gray)
    else:
        ref = pil_reference(encode_pil(gray, fmt))
        assert np.abs(img.astype(int) - ref.astype(int)).max() <= 4


def test_bilevel_png_becomes_rgb():
    img = decode_image(encode_pil(drawn_image()[:, :, 0] > 128, "PNG"))
    assert set(np.unique(img)) <= {0, 255}


def test_palette_png_matches_pillow():
    data = _palette_png(drawn_image())
    assert Image.open(io.BytesIO(data)).mode == "P"
    np.testing.assert_array_equal(decode_image(data), pil_reference(data))


def _palette_png(rgb: np.ndarray, transparency=None) -> bytes:
    buf = io.BytesIO()
    kwargs = {} if transparency is None else {"transparency": transparency}
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(buf, "PNG", **kwargs)
    return buf.getvalue()


def test_cmyk_jpeg_becomes_rgb():
    rgb = drawn_image()
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=95)
    img = decode_image(buf.getvalue())
    assert_rgb_image(img, *rgb.shape[:2])
    assert np.abs(img.astype(int) - pil_reference(buf.getvalue()).astype(int)).mean() < 2


# ---- 16-bit and transparency -----------------------------------------------------------------


def test_16bit_samples_are_rounded_not_truncated():
    # 257 * k + 129 is k + 0.502 in 8 bits: rounding gives k + 1, truncation (x >> 8) gives k.
    k = np.arange(0, 255, dtype=np.uint16)
    values = np.stack([257 * k + 129, 257 * k, np.full_like(k, 65535)], axis=-1)[None]  # (1, 255, 3)
    ok, png = cv2.imencode(".png", values[:, :, ::-1].copy())  # OpenCV writes BGR
    assert ok
    img = decode_image(png.tobytes())
    np.testing.assert_array_equal(img[0, :, 0], k + 1)
    np.testing.assert_array_equal(img[0, :, 1], k)
    np.testing.assert_array_equal(img[0, :, 2], 255)


def test_16bit_gray_png():
    gray16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    ok, png = cv2.imencode(".png", gray16)
    img = decode_image(png.tobytes())
    expected = np.rint(gray16 / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(img[:, :, 0], expected)
    np.testing.assert_array_equal(img[:, :, 2], expected)


def test_every_16bit_value_is_rounded():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    ok, png = cv2.imencode(".png", values)
    img = decode_image(png.tobytes())
    np.testing.assert_array_equal(img[:, :, 1], ((values.astype(np.uint32) + 128) // 257).astype(np.uint8))


def test_large_rgba_is_composited_band_by_band_like_the_whole():
    """Compositing runs in bands of rows: a picture many bands tall matches the whole-image formula."""
    rng = np.random.default_rng(8)
    rgba = rng.integers(0, 256, (700, 1000, 4), dtype=np.uint8)  # several bands of ~262 rows
    img = decode_image(encode_pil(rgba, "PNG"))
    a = rgba[..., 3:].astype(np.float32) / 255
    expected = np.rint(rgba[..., :3].astype(np.float32) * a + 255 * (1 - a)).astype(np.uint8)
    np.testing.assert_array_equal(img, expected)


def test_rgba_is_composited_over_white():
    rgba = np.zeros((4, 3, 4), np.uint8)
    rgba[..., :3] = (200, 40, 0)
    rgba[0, :, 3] = 0  # transparent -> white
    rgba[1, :, 3] = 255  # opaque -> the colour
    rgba[2, :, 3] = 128  # half -> halfway to white
    rgba[3, :, 3] = 64
    img = decode_image(encode_pil(rgba, "PNG"))
    a = rgba[..., 3:].astype(float) / 255
    expected = np.rint(rgba[..., :3] * a + 255 * (1 - a))
    np.testing.assert_array_equal(img, expected.astype(np.uint8))
    assert (img[0] == 255).all() and (img[1] == (200, 40, 0)).all()


def test_gray_alpha_is_composited_over_white():
    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 0] = 10
    la[0, :, 1] = 0
    la[1, :, 1] = 255
    img = decode_image(encode_pil(la, "PNG"))  # Pillow writes mode LA
    assert (img[0] == 255).all() and (img[1] == 10).all()


def test_16bit_rgba_is_composited_over_white():
    rgba = np.zeros((2, 2, 4), np.uint16)
    rgba[..., :3] = 65535 // 2
    rgba[0, :, 3] = 0
    rgba[1, :, 3] = 65535
    ok, png = cv2.imencode(".png", rgba)  # BGRA, all channels equal so order is moot
    img = decode_image(png.tobytes())
    assert (img[0] == 255).all() and (img[1] == 127).all()


def test_palette_png_with_transparency_matches_pillow_over_white():
    rgb = drawn_image()
    data = _palette_png(rgb, transparency=0)
    ref_rgba = Image.open(io.BytesIO(data)).convert("RGBA")
    white = Image.new("RGBA", ref_rgba.size, (255, 255, 255, 255))
    ref = np.asarray(Image.alpha_composite(white, ref_rgba).convert("RGB"))
    np.testing.assert_array_equal(decode_image(data), ref)
    assert (decode_image(data) == 255).all(axis=-1).any()  # some pixel was transparent


# ---- EXIF orientation -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(fmt, orientation):
    stored = drawn_image(60, 100)  # not square, not symmetric: every orientation differs
    data = with_exif(stored, fmt, orientation)
    ref = pil_reference(data)
    img = decode_image(data)
    assert img.shape == ref.shape
    assert img.shape[:2] == ((100, 60) if orientation >= 5 else (60, 100))
    assert np.abs(img.astype(int) - ref.astype(int)).max() <= (0 if fmt == "PNG" else 20)
    info = probe_image(data)
    assert (info.width, info.height, info.orientation) == (img.shape[1], img.shape[0], orientation)


def test_big_endian_exif_is_read():
    stored = drawn_image(30, 50)
    # A hand-made Motorola-order TIFF block: one IFD0 entry, Orientation = 6 (SHORT).
    tiff = b"MM\x00*" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHI", 0x0112, 3, 1) + struct.pack(">H", 6) + b"\x00\x00" + struct.pack(">I", 0)
    data = encode_pil(stored, "PNG", exif=b"Exif\x00\x00" + tiff)
    assert probe_image(data).orientation == 6
    np.testing.assert_array_equal(decode_image(data), np.rot90(stored, k=-1))


def test_corrupt_exif_is_ignored_not_fatal():
    stored = drawn_image(30, 50)
    data = encode_pil(stored, "JPEG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    assert probe_image(data).orientation == 1
    assert decode_image(data).shape == (30, 50, 3)


def test_opencv_behaviour_this_module_relies_on():
    """OpenCV 5 applies EXIF orientation with IMREAD_COLOR but not with IMREAD_UNCHANGED.

    decode_image therefore decodes with orientation ignored and turns the pixels itself;
    this records the library behaviour that made that necessary.
    """
    for fmt in ("JPEG", "PNG"):
        data = np.frombuffer(with_exif(drawn_image(60, 100), fmt, 6), np.uint8)
        assert cv2.imdecode(data, cv2.IMREAD_UNCHANGED).shape[:2] == (60, 100)
        assert cv2.imdecode(data, cv2.IMREAD_COLOR).shape[:2] == (100, 60)
        assert cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION).shape[:2] == (60, 100)


# ---- probe_image ------------------------------------------------------------------------------


def test_probe_reads_sizes():
    coffee = photo("coffee")
    assert probe_image(encode_pil(coffee, "JPEG")) == ImageInfo("jpeg", 600, 400, 1)
    assert probe_image(encode_pil(coffee, "JPEG", progressive=True)) == ImageInfo("jpeg", 600, 400, 1)
    assert probe_image(encode_pil(coffee, "PNG")) == ImageInfo("png", 600, 400, 1)
    assert probe_image(encode_pil(coffee, "PNG")).megapixels == pytest.approx(0.24)


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk


def _jpeg_header_only(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + b"\xff" + sof  # an extra fill byte before the marker is legal


def test_probe_reads_decompression_bomb_headers_without_decoding():
    # 100000 x 100000 = 10 gigapixels (30 GB of RGB) declared in a few dozen bytes.
    assert probe_image(_png_header_only(100_000, 100_000)) == ImageInfo("png", 100_000, 100_000, 1)
    assert probe_image(_jpeg_header_only(65_000, 60_000)) == ImageInfo("jpeg", 65_000, 60_000, 1)


@pytest.mark.parametrize("data", [
    b"",
    b"hello world, not an image",
    b"GIF89a\x01\x00\x01\x00\x00\x00\x00",
    b"BM" + b"\x00" * 60,
    b"\xff\xd8\xff",  # JPEG magic, nothing else
    b"\xff\xd8\xff\xe0\x00\x10JFIF",  # segment runs past the end
    b"\xff\xd8\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00",  # scan before any frame header
    b"\x89PNG\r\n\x1a\n",  # PNG magic, no IHDR
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00",  # truncated IHDR
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIDAT" + b"\x00" * 17,  # first chunk not IHDR
])
def test_garbage_and_truncated_headers_raise(data):
    with pytest.raises(ImageDecodeError):
        probe_image(data)
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_zero_size_header_raises():
    with pytest.raises(ImageDecodeError, match="empty"):
        probe_image(_png_header_only(0, 10))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_image_data_raises(fmt, keep):
    astronaut = photo("astronaut")
    data = encode_pil(astronaut, fmt)
    cut = data[: int(len(data) * keep)]
    probe_image(cut)  # the header is intact ...
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(cut)  # ... but the pixels are not


def test_corrupt_png_data_raises():
    chelsea = photo("chelsea")
    data = bytearray(encode_pil(chelsea, "PNG"))
    start = data.index(b"IDAT") + 4
    data[start + 100:start + 200] = bytes(100)  # zeroed compressed data, CRC now wrong
    with pytest.raises(ImageDecodeError):
        decode_image(bytes(data))


def test_header_lying_about_size_raises():
    real = encode_pil(drawn_image(20, 30), "PNG")
    # Same pixels, but an IHDR claiming 40x30: libpng runs out of data.
    forged = _png_header_only(30, 40) + real[33:]
    with pytest.raises(ImageDecodeError):
        decode_image(forged)


# ---- decode work bounded by the declared size (engine.decode_work) ----------------------------


def _idat_stream(png: bytes) -> bytes:
    return b"".join(png[pos + 8:pos + 8 + length] for pos, length, ctype in png_chunks(png) if ctype == b"IDAT")


def _pil_png(array: np.ndarray, mode: str | None = None, **kwargs) -> bytes:
    image = Image.fromarray(array)
    if mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=kwargs.pop("colors", 16))
    elif mode:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def _real_pngs() -> dict[str, bytes]:
    chelsea = photo("chelsea")
    gray16 = cv2.imencode(".png", (chelsea[..., 0].astype(np.uint16) * 257))[1].tobytes()
    rgba16 = cv2.imencode(".png", np.dstack([chelsea, chelsea[..., :1]]).astype(np.uint16) * 257)[1].tobytes()
    return {
        "rgb": _pil_png(chelsea), "gray": _pil_png(chelsea, "L"), "gray+alpha": _pil_png(chelsea, "LA"),
        "rgba": _pil_png(chelsea, "RGBA"), "bilevel": _pil_png(chelsea, "1"),
        "palette 4-bit": _pil_png(chelsea, "P", bits=4), "palette 2-bit": _pil_png(chelsea, "P", colors=4, bits=2),
        "16-bit gray": gray16, "16-bit rgba": rgba16,
        "interlaced": interlaced_png(chelsea), "interlaced odd size": interlaced_png(chelsea[:13, :5]),
    }


@pytest.mark.parametrize("name", list(_real_pngs()))
def test_png_raw_size_is_what_real_pngs_inflate_to(name):
    """png_raw_size is exact: real encoders' IDAT streams inflate to exactly that many bytes."""
    data = _real_pngs()[name]
    width, height, depth, colour, _c, _f, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    assert len(zlib.decompress(_idat_stream(data))) == png_raw_size(width, height, depth, colour, interlace == 1)
    assert decode_image(data).shape == (height, width, 3)


@pytest.mark.parametrize("width, height, depth, colour, interlace", [
    (64, 64, 8, 2, 0), (4000, 3000, 8, 2, 0), (64, 64, 8, 2, 1), (333, 17, 16, 6, 1), (64, 64, 16, 2, 0),
    (64, 64, 4, 3, 0), (1, 1, 1, 0, 0), (500, 500, 8, 4, 1),
])
def test_png_idat_bomb_is_refused_by_the_probe_before_decoding(width, height, depth, colour, interlace, work):
    """An IDAT stream inflating far past the declared rows (libpng inflates all of it) is
    refused from the body, inflating no more than the rows (and the slack), before any decoder runs."""
    raw = png_raw_size(width, height, depth, colour, interlace == 1)
    data = png_bomb(width, height, raw // MIB + 256, depth, colour, interlace)
    with pytest.raises(ImageDecodeError, match=rf"declares {width}x{height} pixels .*IDAT.* inflates to more than "
                                               rf"{raw + PNG_INFLATE_SLACK_BYTES} bytes"):
        probe_image(data)
    assert work.inflated <= raw + PNG_INFLATE_SLACK_BYTES + 1
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(data)
    assert work.decoder_calls == 0


def test_png_idat_inflating_to_its_rows_plus_the_slack_is_accepted(work):
    width, height = 1024, 1023  # RGB rows of 3073 bytes: 2049 bytes short of 3 MiB
    raw = png_raw_size(width, height, 8, 2, False)
    fits = 3
    assert raw <= fits * MIB <= raw + PNG_INFLATE_SLACK_BYTES < (fits + 1) * MIB
    assert probe_image(png_bomb(width, height, fits)) == ImageInfo("png", width, height, 1)
    assert work.inflated == fits * MIB and work.chunks > 0  # what the counters of `work` count
    assert (decode_image(png_bomb(width, height, fits)) == 0).all()  # libpng ignores the excess
    assert work.decoder_calls == 1
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        probe_image(png_bomb(width, height, fits + 1))


def test_inflated_size_stops_at_the_limit_and_at_the_end_of_the_stream():
    stream = zeros_zlib(64)
    pieces = [stream[i:i + 1000] for i in range(0, len(stream), 1000)]
    assert inflated_size(pieces, 64 * MIB) == 64 * MIB  # the whole stream, not more
    assert inflated_size(pieces, 5 * MIB) == 5 * MIB + 1  # just past the limit, then it stops
    assert inflated_size([stream + b"trailing garbage"], 100 * MIB) == 64 * MIB
    assert inflated_size([stream[:2000] + b"\xff" * 100], 100 * MIB) < 3 * MIB  # corrupt: stops where libpng does


def test_inflated_size_work_is_bounded_by_the_limit_not_the_stream(work):
    stream = zeros_zlib(2048)  # 2 GiB of zeros in 2 MB
    assert inflated_size([stream], MIB) == MIB + 1
    assert work.inflated == MIB + 1


@pytest.mark.parametrize("ctype", [b"zTXt", b"iTXt"])
@pytest.mark.parametrize("after_idat", [False, True])
def test_compressed_text_bombs_are_refused(ctype, after_idat, work):
    """libpng inflates every compressed text chunk, before or after IDAT, up to a per-chunk
    limit, so hundreds of them cost seconds. Their total is bounded, and so is what the probe inflates."""
    data = png_text_bomb(ctype, 640, 7, after_idat)
    with pytest.raises(ImageDecodeError, match="text chunks"):
        probe_image(data)
    assert work.inflated <= MAX_PNG_TEXT_BYTES + 1
    fits = png_text_bomb(ctype, MAX_PNG_TEXT_BYTES // MIB, 1, after_idat)
    assert decode_image(fits).shape == (64, 64, 3)


def test_ordinary_compressed_text_and_icc_profiles_are_accepted():
    from PIL import ImageCms, PngImagePlugin

    chelsea = photo("chelsea")
    info = PngImagePlugin.PngInfo()
    info.add_text("Description", "a cat " * 5000, zip=True)
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>" * 2000, zip=True)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = _pil_png(chelsea, pnginfo=info, icc_profile=icc)
    assert b"zTXt" in data and b"iTXt" in data and b"iCCP" in data
    np.testing.assert_array_equal(decode_image(data), chelsea)


@pytest.mark.parametrize("flood, refusal", [(png_chunk_flood, f"more than {MAX_PNG_CHUNKS} chunks"),
                                             (jpeg_segment_flood, f"more than {MAX_JPEG_SEGMENTS} marker segments")])
def test_a_flood_of_empty_chunks_or_segments_is_refused_cheaply(flood, refusal, work):
    """Refused by the walk over the body's structure, which stops at the limit; no decoder runs."""
    data = flood(6 * MIB)
    with pytest.raises(ImageDecodeError, match=refusal):
        probe_image(data)
    with pytest.raises(ImageDecodeError, match=refusal):
        decode_image(data)
    # two walks per call at the most (the probe's and check_png's), each stopping at the limit:
    # the flood holds many times more chunks than that
    assert work.chunks <= 4 * (MAX_PNG_CHUNKS + 1) and work.inflated == 0 and work.decoder_calls == 0


def test_real_photos_pass_the_probe_and_decode_as_before():
    astronaut = photo("astronaut")
    np.testing.assert_array_equal(decode_image(interlaced_png(astronaut)), astronaut)
    np.testing.assert_array_equal(decode_image(_pil_png(astronaut)), astronaut)
    for name, data in _real_pngs().items():
        image = decode_image(data)
        if "16-bit" not in name:  # Pillow truncates 16-bit samples where decode_image rounds them
            np.testing.assert_array_equal(image, pil_reference(data), err_msg=name)
    for image in (photo("coffee"), photo("chelsea"), astronaut):
        for progressive in (False, True):
            data = encode_pil(image, "JPEG", quality=90, progressive=progressive)
            assert probe_image(data).width == image.shape[1]
            np.testing.assert_array_equal(
                decode_image(data), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB))


def _scans_counted(data: bytes, monkeypatch) -> int:
    """The number of scans check_jpeg_scans counts: the smallest limit it accepts."""
    for limit in range(0, 400):
        monkeypatch.setattr(decode_work, "MAX_JPEG_SCANS", limit)
        try:
            probe_image(data)
            return limit
        except ImageDecodeError:
            continue
    raise AssertionError("more than 400 scans")


def test_scans_are_counted_exactly(monkeypatch):
    coffee = photo("coffee")
    progressive = cv2.imencode(".jpg", coffee, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert _scans_counted(progressive, monkeypatch) == 10  # libjpeg-turbo's script for YCbCr
    gray = cv2.imencode(".jpg", coffee[..., 0], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert _scans_counted(gray, monkeypatch) == 6
    # restart markers and stuffed 0xFF00 bytes inside the data are not markers
    restarts = cv2.imencode(".jpg", coffee, [cv2.IMWRITE_JPEG_RST_INTERVAL, 1])[1].tobytes()
    assert restarts.count(b"\xff\xd0") > 10 and restarts.count(b"\xff\x00") > 10
    assert _scans_counted(restarts, monkeypatch) == 1
    # bytes that look like a start of scan inside a comment segment between scans are not one
    sos = progressive.index(b"\xff\xda")
    comment = b"\xff\xfe" + struct.pack(">H", 10) + b"\xff\xda\xff\xda\xff\xda\xff\xda"
    assert _scans_counted(progressive[:sos] + comment + progressive[sos:], monkeypatch) == 10
    assert _scans_counted(jpeg_scan_bomb(100, 100, 57), monkeypatch) == 57


@pytest.mark.parametrize("arithmetic", [False, True])
def test_jpeg_with_too_many_scans_is_refused_by_the_probe(arithmetic, work):
    """libjpeg walks the whole frame for every scan, however small, so a small progressive
    JPEG declaring a large frame and carrying many scans costs seconds (arithmetic-coded
    scans, several times more each)."""
    limit = MAX_ARITHMETIC_JPEG_SCANS if arithmetic else MAX_JPEG_SCANS
    np.testing.assert_array_equal(probe_image(jpeg_scan_bomb(6000, 6000, limit, arithmetic)).megapixels, 36.0)
    for scans in (limit + 1, 20_000):
        data = jpeg_scan_bomb(6000, 6000, scans, arithmetic)
        with pytest.raises(ImageDecodeError, match=rf"more than {limit} scans .*6000x6000"):
            probe_image(data)
        with pytest.raises(ImageDecodeError, match="scans"):
            decode_image(data)
    assert work.decoder_calls == 0  # refused from the scan headers: libjpeg never walked the frame


def test_headers_over_the_callers_limit_are_not_walked():
    """The caller refuses those by size; walking them would be work for nothing."""
    data = jpeg_scan_bomb(20_000, 20_000, 1000)
    assert probe_image(data).megapixels == 400  # over MAX_DECODE_MEGAPIXELS: decode_image refuses it
    with pytest.raises(ImageDecodeError, match="scans"):
        probe_image(data, max_megapixels=None)
    with pytest.raises(ImageDecodeError, match="scans"):
        probe_image(jpeg_scan_bomb(2000, 2000, 1000), max_megapixels=40)


def test_decode_image_does_not_repeat_the_checks_of_a_given_probe(monkeypatch):
    """A server probes each body before admitting it and hands the result to decode_image on
    the worker: the body's structure (a PNG's inflate) is not walked a second time."""
    data = encode_pil(photo("astronaut"), "PNG")
    info = probe_image(data)
    walked = []
    monkeypatch.setattr("engine.image_io.check_png", lambda *args: walked.append(args))
    expected = decode_image(data)
    assert len(walked) == 1
    assert np.array_equal(decode_image(data, probed=info), expected) and len(walked) == 1

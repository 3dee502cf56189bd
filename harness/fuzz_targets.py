"""The untrusted-input parsers' fuzz targets: hypothesis strategies and the properties they
must keep, defined once. tests/test_fuzz.py runs each with a few hundred derandomized
examples; benchmarks/fuzz.py runs them for minutes and reports what it found.

* images, big_headers, arbitrary_bytes, non_bytes: engine.image_io.probe_image and
  decode_image on mutated small JPEGs/PNGs, headers declaring huge sizes, random bytes and
  non-bytes. They return a correct result or raise ImageDecodeError (TypeError for non-bytes).
* decode_bombs: PNG IDAT and compressed-text bombs and many-scan JPEGs
  (harness/hostile_images.py) at random declared sizes: probe_image refuses exactly those
  over engine.decode_work's bounds, within REFUSAL_CPU_S of CPU time, and decodes the rest.
* custom_attributes: server.negotiation.parse_custom_attributes gives a RequestOptions or
  raises BadRequest (400), nothing else.
* accept: server.negotiation.choose_response_type gives an offered type or raises
  NotAcceptable (406).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from engine.decode_work import MAX_ARITHMETIC_JPEG_SCANS, MAX_JPEG_SCANS, MAX_PNG_TEXT_BYTES
from engine.decode_work import PNG_INFLATE_SLACK_BYTES, png_raw_size
from engine.errors import ImageDecodeError
from engine.image_io import JPEG_MAGIC, PNG_MAGIC, decode_image, probe_image
from engine.media_types import RESPONSE_TYPES
from harness.hostile_images import MIB, jpeg_scan_bomb, jpeg_with_size, png_bomb, png_text_bomb, png_with_size
from harness.photos import skimage_photo
from server.config import DEFAULT_MAX_MEGAPIXELS, MAX_CUSTOM_ATTRIBUTES_CHARS, MAX_DETECTIONS_LIMIT
from server.errors import BadRequest, NotAcceptable
from server.negotiation import INCLUDABLE, MASK_FORMATS, RequestOptions
from server.negotiation import choose_response_type, parse_custom_attributes

# A refusal by size happens before any pixel is decoded: microseconds. Generous for shared CI.
REFUSAL_S = 1.0
# The CPU time (of the probing thread) that refusing a decode bomb may take: the worst is
# inflating the declared rows of the largest image the strategy declares, milliseconds.
REFUSAL_CPU_S = 0.5
# The stack room the server's JSON parsing has: Python's recursion limit (1000, read here
# before hypothesis raises it to about 2000 around every example, which would hide a
# RecursionError) less the frames above the parser in a waitress worker thread: calibrated
# against a real server, on the nesting depth where its parsing starts to fail (an HTTP 500;
# the depths are in benchmarks/results/FIGURES.md).
SERVER_RECURSION_LIMIT = sys.getrecursionlimit()
SERVER_PARSER_DEPTH = 12


@contextlib.contextmanager
def storage_outside_repo():
    """Hypothesis's storage in a temporary directory for the block (unless
    HYPOTHESIS_STORAGE_DIRECTORY is set): even without an example database it caches the
    constants it finds in local code, by default under ./.hypothesis, i.e. in the repository.
    Scoped, not set on import, so other hypothesis users in the process keep their own."""
    if os.getenv("HYPOTHESIS_STORAGE_DIRECTORY"):
        yield
        return
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "maskrcnn-serve-hypothesis")
    try:
        yield
    finally:
        set_hypothesis_home_dir(None)  # back to the default


# ---- image seeds and strategies ----------------------------------------------------------------


def _pil(array: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
    from PIL import Image

    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode, **({"palette": Image.Palette.ADAPTIVE, "colors": 16} if mode == "P" else {}))
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def seed_images() -> tuple[bytes, ...]:
    """Small real photos (a few KB each, so a decode costs well under a millisecond) in the
    JPEG and PNG variants decode_image handles: baseline/progressive/gray/CMYK/EXIF-rotated
    JPEG; RGB/gray/RGBA/palette+tRNS/16-bit PNG."""
    import cv2
    from PIL import Image

    coffee = cv2.resize(skimage_photo("coffee"), (40, 27), interpolation=cv2.INTER_AREA)
    chelsea = cv2.resize(skimage_photo("chelsea"), (23, 31), interpolation=cv2.INTER_AREA)
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = np.dstack([chelsea, np.linspace(0, 255, chelsea.shape[1], dtype=np.uint8)[None].repeat(chelsea.shape[0], 0)])
    sixteen = cv2.imencode(".png", (coffee[..., ::-1].astype(np.uint16) * 257))[1].tobytes()
    return (
        _pil(coffee, "JPEG", quality=75),
        _pil(chelsea, "JPEG", quality=90, progressive=True, subsampling=0),
        _pil(coffee, "JPEG", "L"),
        _pil(chelsea, "JPEG", "CMYK"),
        _pil(coffee, "JPEG", exif=exif.tobytes()),
        cv2.imencode(".jpg", coffee, [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])[1].tobytes(),
        _pil(chelsea, "PNG"),
        _pil(coffee, "PNG", "L"),
        _pil(rgba, "PNG"),
        _pil(coffee, "PNG", "P", transparency=3),
        _pil(chelsea, "PNG", exif=exif.tobytes()),
        sixteen,
    )


_positions = st.one_of(st.integers(0, 700), st.integers(0, 1 << 16))  # mostly in the headers
_boundary = st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF])
_mutations = st.one_of(
    st.tuples(st.just("flip"), _positions, st.integers(0, 7)),
    st.tuples(st.just("overwrite"), _positions, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("insert"), _positions, st.binary(max_size=16)),
    st.tuples(st.just("delete"), _positions, st.integers(1, 64)),
    st.tuples(st.just("truncate"), _positions),
    st.tuples(st.just("boundary"), _positions, _boundary, st.sampled_from([1, 2, 4])),
    st.tuples(st.just("splice"), _positions, st.integers(0, 63), _positions),
)


def _mutate(data: bytearray, op: tuple, seeds: tuple[bytes, ...]) -> bytearray:
    kind, pos = op[0], op[1] % (len(data) + 1)
    if kind == "flip" and pos < len(data):
        data[pos] ^= 1 << op[2]
    elif kind == "overwrite":
        data[pos:pos + len(op[2])] = op[2]
    elif kind == "insert":
        data[pos:pos] = op[2]
    elif kind == "delete":
        del data[pos:pos + op[2]]
    elif kind == "truncate":
        del data[pos:]
    elif kind == "boundary":  # a size or length field set to an edge value, big-endian
        width = op[3]
        data[pos:pos + width] = (op[2] & ((1 << 8 * width) - 1)).to_bytes(width, "big")
    elif kind == "splice":  # this file's head on another file's body
        other = seeds[op[2] % len(seeds)]
        data = data[:pos] + other[op[3] % (len(other) + 1):]
    return data


@st.composite
def mutated_images(draw) -> bytes:
    """A seed photo with 1-4 byte-level mutations, as bytes, bytearray or memoryview."""
    seeds = seed_images()
    data = bytearray(seeds[draw(st.integers(0, len(seeds) - 1))])
    for op in draw(st.lists(_mutations, min_size=1, max_size=4)):
        data = _mutate(data, op, seeds)
    return draw(st.sampled_from([bytes, bytearray, memoryview]))(bytes(data))


_jpeg_dim = st.one_of(st.integers(1, 64), st.integers(0, 0xFFFF), st.sampled_from([0xFFFF, 0x8000, 32768 - 1]))
_png_dim = st.one_of(st.integers(1, 64), st.integers(0, 0x7FFFFFFF), st.sampled_from([100_000, 0x7FFFFFFF, 1 << 31]))


@st.composite
def big_headers(draw) -> bytes:
    """Headers declaring sizes up to PNG's 2**31-1 and JPEG's 65535, over real or no pixel data."""
    seeds = seed_images()
    if draw(st.booleans()):
        jpegs = [s for s in seeds if s.startswith(JPEG_MAGIC)]
        return jpeg_with_size(draw(st.sampled_from(jpegs)), draw(_jpeg_dim), draw(_jpeg_dim))
    pngs = [s for s in seeds if s.startswith(PNG_MAGIC)]
    body = draw(st.one_of(st.just(b""), st.sampled_from(pngs).map(lambda s: s[33:])))  # chunks after IHDR
    depth, colour = draw(st.sampled_from([(8, 2), (8, 0), (16, 2), (8, 6), (1, 0), (8, 3), (16, 4)]))
    return png_with_size(draw(_png_dim), draw(_png_dim), body, depth, colour, draw(st.integers(0, 1)))


arbitrary_bytes = st.one_of(
    st.binary(max_size=4096),
    st.tuples(st.sampled_from([JPEG_MAGIC, PNG_MAGIC, PNG_MAGIC + b"\x00\x00\x00\x0dIHDR", b"\xff\xd8"]),
              st.binary(max_size=256)).map(b"".join),
)
non_bytes = st.one_of(st.none(), st.text(max_size=20), st.integers(), st.floats(), st.lists(st.integers(0, 255), max_size=8),
                      st.just(np.zeros(16, np.uint8)), st.just(bytes), st.dictionaries(st.text(max_size=3), st.none(), max_size=2))


# ---- image properties ----------------------------------------------------------------------------


def check_image(data, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> str:
    """probe_image and decode_image return correct results or raise ImageDecodeError.

    decode_image runs with the server's megapixel limit, as the server would only decode what
    passed it: headers over it are refused before any pixel is allocated. Any other exception
    propagates: that is a failure. Returns the outcome, for the statistics."""
    try:
        info = probe_image(data)
    except ImageDecodeError:
        info = None
    start = time.perf_counter()
    try:
        image = decode_image(data, max_megapixels=max_megapixels)
    except ImageDecodeError:
        if info is None:
            return "not an image"
        if info.megapixels > max_megapixels:
            assert time.perf_counter() - start < REFUSAL_S, f"refusing {info} took {time.perf_counter() - start:.2f} s"
            return "over the size limit"
        return "undecodable"
    assert info is not None, "decode_image decoded what probe_image refused"
    assert info.megapixels <= max_megapixels, f"decoded {info} over the {max_megapixels} MP limit"
    assert image.shape == (info.height, info.width, 3), f"decoded {image.shape}, probe said {info}"
    assert image.dtype == np.uint8 and image.flags.c_contiguous
    return "decoded"


def check_non_bytes(value) -> str:
    """Anything that is not bytes-like is a TypeError from both functions."""
    for function in (probe_image, decode_image):
        try:
            function(value)
        except TypeError:
            continue
        raise AssertionError(f"{function.__name__}({type(value).__name__}) did not raise TypeError")
    return "TypeError"


@st.composite
def decode_bombs(draw) -> tuple[bytes, bool]:
    """(body, whether it breaks one of engine.decode_work's bounds): a PNG whose IDAT stream
    inflates to 1-64 MiB of zeros for a random declared size and layout, a PNG with 1-40
    compressed text chunks of 1-8 MiB each, or a progressive JPEG with 1-300 scans."""
    kind = draw(st.sampled_from(["idat", "text", "scans"]))
    if kind == "idat":
        depth, colour = draw(st.sampled_from([(8, 2), (8, 0), (16, 2), (8, 6), (1, 0), (4, 3), (16, 4), (2, 3)]))
        width, height, interlace = draw(st.integers(1, 1500)), draw(st.integers(1, 1500)), draw(st.integers(0, 1))
        mib = draw(st.integers(1, 64))
        excess = mib * MIB > png_raw_size(width, height, depth, colour, interlace == 1) + PNG_INFLATE_SLACK_BYTES
        idat_bytes = draw(st.sampled_from([1 << 13, 1 << 16, 1 << 20]))
        return png_bomb(width, height, mib, depth, colour, interlace, idat_bytes), excess
    if kind == "text":
        chunks, mib_each = draw(st.integers(1, 40)), draw(st.integers(1, 8))
        data = png_text_bomb(draw(st.sampled_from([b"zTXt", b"iTXt"])), chunks, mib_each, draw(st.booleans()))
        return data, chunks * mib_each * MIB > MAX_PNG_TEXT_BYTES
    scans, arithmetic = draw(st.integers(1, 300)), draw(st.booleans())
    data = jpeg_scan_bomb(draw(st.integers(1, 2000)), draw(st.integers(1, 2000)), scans, arithmetic)
    return data, scans > (MAX_ARITHMETIC_JPEG_SCANS if arithmetic else MAX_JPEG_SCANS)


def check_bomb(case: tuple[bytes, bool]) -> str:
    """probe_image refuses a body over a bound (within REFUSAL_CPU_S of CPU time) and only
    such a body; decode_image decodes the rest to their declared size or raises
    ImageDecodeError (an IDAT stream shorter than the declared rows)."""
    data, excess = case
    start = time.thread_time()
    try:
        info = probe_image(data)
    except ImageDecodeError as exc:
        seconds = time.thread_time() - start
        assert excess, f"refused a body within the bounds: {exc}"
        assert seconds < REFUSAL_CPU_S, f"refusing took {seconds:.2f} s of CPU: {exc}"
        return "refused"
    assert not excess, f"accepted a body over a bound: {info}"
    try:
        image = decode_image(data)
    except ImageDecodeError:
        return "undecodable"
    assert image.shape == (info.height, info.width, 3)
    return "decoded"


# ---- custom attributes ---------------------------------------------------------------------------

ATTRIBUTE_KEYS = ("response_type", "score_threshold", "max_detections", "classes", "include", "mask_format")
CLASS_NAMES = ("__background__", "person", "Cat", "cat", "N/A", "traffic light", "person")  # cases, duplicates

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),  # floats: NaN/Infinity too
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Values near what the parser accepts, for each real key: right and wrong types, edges, case.
_plausible = st.one_of(
    json_values,
    st.sampled_from(["json", "JPEG", " png ", "jpg", "polygons", "Polygon", "rle", "", "scores", "masks"]),
    st.sampled_from([0, 1, 0.5, -0.0, 1.0000001, 1000, 1001, 1e3, 2 ** 63, True, float("nan"), float("inf")]),
    st.lists(st.sampled_from([*CLASS_NAMES, "PERSON", "dog", "scores", "class_ids", ""]), max_size=4),
)
attribute_objects = st.dictionaries(st.one_of(st.sampled_from(ATTRIBUTE_KEYS), st.text(max_size=10)), _plausible, max_size=6)


def custom_attribute_headers(max_nesting: int = MAX_CUSTOM_ATTRIBUTES_CHARS):
    """Header strings: arbitrary text, any JSON value, attribute objects, deep nesting."""
    return st.one_of(
        st.none(),
        st.text(max_size=MAX_CUSTOM_ATTRIBUTES_CHARS + 50),
        json_values.map(json.dumps),
        st.tuples(attribute_objects, st.booleans()).map(lambda t: json.dumps(t[0], ensure_ascii=t[1])),
        # arrays or objects opened around an attributes object (or nothing), up to as deep
        # as the header's length allows
        st.tuples(st.one_of(st.integers(0, max_nesting), st.just(max_nesting)), st.sampled_from(["[", '{"classes":', " [ "]),
                  st.one_of(st.just(""), st.just("]"), attribute_objects.map(json.dumps)))
        .map(lambda t: t[1] * t[0] + t[2]),
    )


def _stack_depth() -> int:
    """Frames on the stack of the caller, counting it."""
    frame, depth = sys._getframe(1), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def check_custom_attributes(header, class_names=CLASS_NAMES) -> str:
    """A RequestOptions within the documented ranges, or BadRequest (400); nothing else.

    Deliberately silent on which values are accepted: only the outcome's shape is checked.
    Parsed with the stack room it has in the server, whatever the depth of this call."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(SERVER_RECURSION_LIMIT - SERVER_PARSER_DEPTH + _stack_depth() + 1)
    try:
        options = parse_custom_attributes(header, list(class_names))
    except BadRequest as exc:
        assert exc.status == 400 and isinstance(exc.message, str) and exc.message
        return "400"
    finally:
        sys.setrecursionlimit(limit)
    assert isinstance(options, RequestOptions)
    assert options.response_type in (None, *RESPONSE_TYPES)
    assert isinstance(options.score_threshold, float) and 0.0 <= options.score_threshold <= 1.0
    assert isinstance(options.max_detections, int) and 1 <= options.max_detections <= MAX_DETECTIONS_LIMIT
    if options.class_ids is not None:
        assert options.class_ids and list(options.class_ids) == sorted(set(options.class_ids))
        assert all(0 <= i < len(class_names) for i in options.class_ids)
    assert options.include <= set(INCLUDABLE) and options.mask_format in set(MASK_FORMATS.values())
    return "options"


# ---- Accept ------------------------------------------------------------------------------------

_media_ranges = st.one_of(
    st.sampled_from([*RESPONSE_TYPES, "image/*", "application/*", "*/*", "text/html", "image/webp", "*/json", "image",
                     "image/png/x", "", "/"]),
    st.tuples(st.text(max_size=6), st.text(max_size=6)).map("/".join),
).flatmap(lambda r: st.sampled_from([r, r.upper(), f"  {r} ", r.title()]))
_q_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1", "0", "0.000", "1.000", "-0", "1.0001", "nan", "inf", "1e-3", "0x1", "", " 0.5", "1_0", "½"]),
    st.text(max_size=5),
)
_params = st.one_of(
    st.tuples(st.sampled_from(["q", "Q", " q ", "level", "charset"]), _q_values).map("=".join),
    st.text(max_size=8),
)
accept_headers = st.one_of(
    st.none(),
    st.text(max_size=200),
    st.lists(st.tuples(_media_ranges, st.lists(_params, max_size=3)).map(lambda t: ";".join([t[0], *t[1]])),
             max_size=6).flatmap(lambda items: st.sampled_from([",".join(items), ", ".join(items)])),
)
response_types = st.sampled_from([None, *RESPONSE_TYPES])
default_types = st.sampled_from(RESPONSE_TYPES)


def check_accept(accept, response_type, default) -> str:
    """An offered media type, or NotAcceptable (406); an Accept naming one offer alone gets it."""
    try:
        chosen = choose_response_type(accept, response_type, default)
    except NotAcceptable as exc:
        assert exc.status == 406 and exc.message
        return "406"
    assert chosen in RESPONSE_TYPES, chosen
    if accept is not None and accept.strip().lower() in RESPONSE_TYPES:
        assert chosen == accept.strip().lower(), (accept, chosen)
    return chosen


# ---- running -------------------------------------------------------------------------------------

# name -> (strategies, property): each property takes one argument per strategy.
TARGETS = {
    "images": ((mutated_images(),), check_image),
    "big_headers": ((big_headers(),), check_image),
    "arbitrary_bytes": ((arbitrary_bytes,), check_image),
    "non_bytes": ((non_bytes,), check_non_bytes),
    "decode_bombs": ((decode_bombs(),), check_bomb),
    "custom_attributes": ((custom_attribute_headers(),), check_custom_attributes),
    "accept": ((accept_headers, response_types, default_types), check_accept),
}


def run_target(name: str, max_examples: int, derandomize: bool = False, strategies=None,
               outcomes: Counter | None = None, shrink: bool = True) -> Counter:
    """Run one target's property on `max_examples` hypothesis examples; returns the outcomes
    (counted into `outcomes` if given, so they survive a failure).

    No example database (nothing written to disk); no deadline, as decodes of images up to
    the megapixel limit take a good part of a second. A failure raises the property's error,
    with hypothesis's shrunk example in its notes (unshrunk with shrink=False: faster, for a
    failure already known). `strategies` replaces the target's own."""
    default_strategies, prop = TARGETS[name]
    outcomes = Counter() if outcomes is None else outcomes

    phases = [Phase.explicit, Phase.generate, *([Phase.shrink] if shrink else [])]

    @settings(max_examples=max_examples, database=None, deadline=None, derandomize=derandomize,
              print_blob=False, suppress_health_check=list(HealthCheck), phases=phases)
    @given(st.tuples(*(strategies or default_strategies)))
    def run(args):
        outcomes[prop(*args)] += 1

    run()
    return outcomes

"""Property-based fuzzing (hypothesis) of the parsers that read untrusted input.

The strategies and properties live in harness/fuzz_targets.py (benchmarks/fuzz.py runs them
for minutes); here each target runs 200-2000 examples, derandomized so that CI fails on a
code change and not on luck (the long runs explore).

Also here: the findings of the fuzzing, as plain regression tests, and the decode bombs
(engine.decode_work) through the real server.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ImageDecodeError
from engine.image_io import MAX_DECODE_MEGAPIXELS, decode_image, probe_image
from harness.fuzz_targets import (
    TARGETS, check_custom_attributes, custom_attribute_headers, run_target, seed_images, storage_outside_repo,
)
from harness.hostile_images import jpeg_scan_bomb, jpeg_with_size, png_bomb, png_text_bomb, png_with_size
from harness.proc import PeakRss, cpu_seconds
from harness.server import http_call, running_server
from helpers import counted_decoder_calls
from server.config import DEFAULT_MAX_MEGAPIXELS

# Peak RSS growth allowed over one target's run. Decodes run under the server's 40 MP limit:
# the costliest is a tiny progressive 4:4:4 JPEG declaring 40 MP, padded with grey (its peak:
# benchmarks/results/FIGURES.md); everything else is a few MB.
MEMORY_BOUND_MB = 500
EXAMPLES = {"images": 2000, "big_headers": 600, "arbitrary_bytes": 1000, "non_bytes": 200,
            "decode_bombs": 150, "custom_attributes": 2000, "accept": 2000}
# 985 or more nested arrays in the custom attributes were a RecursionError in json.loads, an
# HTTP 500, now a 400 (test_deeply_nested_custom_attributes_are_a_400 below).
SHALLOW = 200

# Outcomes each target must reach, so that a strategy gone degenerate does not pass silently.
EXPECTED_OUTCOMES = {"images": {"decoded", "undecodable", "not an image"},
                     "big_headers": {"decoded", "over the size limit"},
                     "decode_bombs": {"refused", "decoded", "undecodable"},
                     "custom_attributes": {"options", "400"}, "accept": {"406", "image/png"}}


@pytest.fixture(autouse=True, scope="module")
def _hypothesis_storage():
    with storage_outside_repo():
        yield


def _strategies(name):
    return (custom_attribute_headers(max_nesting=SHALLOW),) if name == "custom_attributes" else None


def measured_run(name: str) -> dict:
    """One target's examples and the peak RSS growth over them, in this process: the body of
    test_property's child process."""
    with storage_outside_repo():
        seed_images()  # built before the measurement: the photos are not the parsers' memory
        with PeakRss() as memory:
            outcomes = run_target(name, EXAMPLES[name], derandomize=True, strategies=_strategies(name))
    return {"outcomes": dict(outcomes), "growth_mb": memory.growth_mb}


@pytest.mark.parametrize("name", list(TARGETS))
def test_property(name):
    """Each target's property holds on its examples, within the memory bound. Run in a fresh
    process, as a server runs them: the test process's peak depends on what earlier tests
    (models loaded and freed, their threads' heaps) left behind."""
    tests = Path(__file__).resolve().parent
    result = subprocess.run(
        [sys.executable, "-c", f"import json, test_fuzz; print(json.dumps(test_fuzz.measured_run({name!r})))"],
        capture_output=True, text=True, timeout=600, cwd=tests.parent,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])})
    assert result.returncode == 0, result.stderr[-4000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    outcomes = measured["outcomes"]
    assert sum(outcomes.values()) >= EXAMPLES[name] // 2, outcomes
    assert EXPECTED_OUTCOMES.get(name, set()) <= set(outcomes), outcomes
    assert measured["growth_mb"] < MEMORY_BOUND_MB, f"{name}: peak RSS grew {measured['growth_mb']:.0f} MB"


# ---- findings, as regression tests ---------------------------------------------------------------


def _attempt(function, *args, **kwargs):
    """(exception raised or None, calls of OpenCV's decoder, peak RSS growth MB) of one call:
    the work it did, not the time it took."""
    with counted_decoder_calls() as imdecode, PeakRss() as memory:
        try:
            function(*args, **kwargs)
            error = None
        except Exception as exc:  # noqa: BLE001 (returned to the test to check)
            error = exc
    return error, imdecode.call_count, memory.growth_mb


@pytest.mark.parametrize("width, height", [(30_000, 30_000), (65_535, 65_535), (14_200, 14_200)])
def test_tiny_jpeg_declaring_a_huge_frame_is_refused_before_decoding(width, height):
    """A 1 KB JPEG declaring 30000x30000 used to decode (libjpeg pads the missing data with
    grey) to gigabytes of pixels; decode_image now refuses it from the header."""
    data = jpeg_with_size(seed_images()[0], width, height)
    assert len(data) < 2000
    info = probe_image(data)
    assert (info.width, info.height) == (width, height)
    assert info.megapixels > MAX_DECODE_MEGAPIXELS > DEFAULT_MAX_MEGAPIXELS  # the server refuses it first
    error, decoder_calls, growth_mb = _attempt(decode_image, data)
    assert isinstance(error, ImageDecodeError) and "megapixels" in str(error)
    assert decoder_calls == 0 and growth_mb < 50


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (0x7FFFFFFF, 1), (50_000, 50_000)])
def test_png_header_declaring_a_huge_image_is_refused_before_decoding(width, height):
    data = png_with_size(width, height, seed_images()[6][33:])  # a real image's chunks after the IHDR
    assert probe_image(data).megapixels > DEFAULT_MAX_MEGAPIXELS  # the server refuses it first
    error, decoder_calls, growth_mb = _attempt(decode_image, data)
    assert isinstance(error, ImageDecodeError) and "megapixels" in str(error)
    assert decoder_calls == 0 and growth_mb < 50


@pytest.mark.parametrize("chunk", [b"IDAT", b"tEXt", b"PLTE"])
@pytest.mark.parametrize("length", [0xFFFFFFFF, 0x7FFFFFFF, 10_000_000])
def test_png_chunk_declaring_gigabytes_is_refused_before_opencv_allocates_it(chunk, length):
    """OpenCV 5's PNG reader allocates and zero-fills a chunk's declared length before reading
    it, so a tiny PNG under any megapixel limit cost gigabytes; now refused before OpenCV runs."""
    png = seed_images()[6]
    idat = png.index(b"IDAT") - 4
    if chunk == b"IDAT":
        data = png[:idat] + struct.pack(">I", length) + png[idat + 4:]
    else:
        data = png[:idat] + struct.pack(">I", length) + chunk + png[idat:]
    assert probe_image(data).megapixels < 0.001
    error, decoder_calls, growth_mb = _attempt(decode_image, data)
    assert isinstance(error, ImageDecodeError) and "truncated or corrupt" in str(error)
    assert decoder_calls == 0 and growth_mb < 50


def test_a_shallow_nesting_of_custom_attributes_is_a_400():
    assert check_custom_attributes("[" * SHALLOW) == "400"


def test_deeply_nested_custom_attributes_are_a_400():
    """json.loads raised RecursionError on 985+ nested arrays, an HTTP 500, until fuzzing found it."""
    assert check_custom_attributes("[" * 1000) == "400"


@pytest.mark.parametrize("name, build", [
    ("64x64 PNG, IDAT inflating to 2 GiB", lambda: png_bomb(64, 64, 2048)),
    ("4000x3000 PNG, IDAT inflating to 3 GiB", lambda: png_bomb(4000, 3000, 3072)),
    ("640 zTXt chunks of 7 MiB", lambda: png_text_bomb(b"zTXt", 640, 7)),
    ("6000x6000 JPEG with 1000 scans", lambda: jpeg_scan_bomb(6000, 6000, 1000)),
])
def test_decode_bombs_found_against_the_server_are_refused_from_the_body(name, build):
    """Each of these was answered 200 by the server after seconds of decoder CPU (figures in
    benchmarks/results/decode_bombs.json): decode_image refuses it from the body, its decoder never called."""
    data = build()
    error, decoder_calls, growth_mb = _attempt(decode_image, data)
    assert isinstance(error, ImageDecodeError) and ("decompression bomb" in str(error) or "scans" in str(error)), error
    assert decoder_calls == 0 and growth_mb < 50, name


@pytest.fixture(scope="module")
def server(small_model_dir, tmp_path_factory):
    yield from running_server(small_model_dir, tmp_path_factory.mktemp("bombs"))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the server's CPU time from /proc")
def test_decode_bombs_are_a_400_from_the_real_server_before_admission(server):
    bodies = {"image/png": png_bomb(4000, 3000, 3072), "image/jpeg": jpeg_scan_bomb(6000, 6000, 5000)}
    before = cpu_seconds(server.pid)
    for content_type, body in bodies.items():
        reply = http_call(server.url + "/invocations", body=body, headers={"Content-Type": content_type})
        assert reply.status_code == 400, reply.content[:300]
        assert reply.headers["Content-Type"].startswith("application/json")
        message = reply.json()["error"]
        assert "6000x6000" in message or "4000x3000" in message, message
    assert cpu_seconds(server.pid) - before < 1.0  # decoding them costs seconds each

#!/usr/bin/env python3
"""Decompression and decode-work bombs: what each costs decoded, and what refusing it costs.

    python benchmarks/decode_bombs.py [--output benchmarks/results/decode_bombs.json]

Builds each kind of bomb with harness/hostile_images.py (tests/test_fuzz.py and
tests/test_image_io.py use the same builders), then measures, as process CPU time (not wall time, so that other work on the
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
import io
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.decode_work import MAX_ARITHMETIC_JPEG_SCANS, MAX_JPEG_SCANS, MAX_PNG_TEXT_BYTES  # noqa: E402
from engine.errors import ImageDecodeError  # noqa: E402
from harness.hostile_images import (  # noqa: E402
    MIB, jpeg_declaring, jpeg_scan_bomb, jpeg_segment_flood, png_bomb, png_chunk_flood, png_text_bomb,
)
from harness.photos import interlaced_png, skimage_photo  # noqa: E402
from harness.timing import timed  # noqa: E402


def cpu_s(function, *args) -> tuple[float, object]:
    """(process CPU seconds, result or the ImageDecodeError raised) of one call."""
    def call():
        try:
            return function(*args)
        except ImageDecodeError as exc:
            return exc

    return timed(call, clock=time.process_time)


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
        "astronaut_png_interlaced": interlaced_png(astronaut),
        "coffee_jpeg": pil(coffee, "JPEG", quality=90),
        "coffee_jpeg_progressive": pil(coffee, "JPEG", quality=90, progressive=True),
        "astronaut_4000x4000_png": pil(large, "PNG"),
        "astronaut_4000x4000_jpeg_progressive": pil(large, "JPEG", quality=90, progressive=True),
        "flat_graphics_7000x5000_png": pil(flat, "PNG"),
    }


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

"""One invocation, from request bytes to response bytes: decode, predict, encode.

This is the work the inference executor runs, so decoding and encoding (CPU-heavy for big
images) are bounded by the same worker count as the network itself. Response bodies come
from a table keyed by media type.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from engine.image_io import ImageInfo, decode_image
from engine.detections import format_label
from engine.media_types import IMAGE_FORMATS, JSON
from engine.render import encode_image, render_detections

from .mask_encoding import MASK_ENCODERS
from .metrics import ENGINE_STAGES
from .negotiation import RequestOptions


@dataclass
class InvocationResult:
    body: bytes
    content_type: str
    detections: int
    inference_ms: float  # engine.predict only
    total_ms: float  # decode + predict + encode
    stages_s: dict[str, float]  # seconds per stage, by server.metrics.STAGES names


def detections_to_json(det, options: RequestOptions) -> dict:
    """The seed's JSON: {"labels": [...], "boxes": [[x1, y1, x2, y2], ...]}, plus `include`.

    Boxes are floats in the pixel coordinates of the displayed image, highest score first,
    as the engine returns them. Masks are COCO RLE dicts or lists of polygons.
    """
    scores = det.scores.tolist()
    out = {
        "labels": [format_label(name, s) for name, s in zip(det.labels, scores)],
        "boxes": det.boxes.tolist(),
    }
    if "scores" in options.include:
        out["scores"] = scores
    if "class_ids" in options.include:
        out["class_ids"] = det.class_ids.tolist()
    if "masks" in options.include:
        encode = MASK_ENCODERS[options.mask_format]
        # crop by crop: one mask pasted at a time, never the (N, H, W) array
        out["masks"] = [encode(crop, det.image_size) for crop in det.mask_crops]
    return out


def _json_body(image, det, options, jpeg_quality) -> bytes:
    return json.dumps(detections_to_json(det, options)).encode()


def _image_body(fmt: str):
    def encode(image, det, options, jpeg_quality) -> bytes:
        # the decoded upload is not needed after this: draw on it and convert it to BGR in
        # place, so an image answer holds one image-sized array, not three
        return encode_image(render_detections(image, det, overwrite=True), fmt, jpeg_quality=jpeg_quality,
                            overwrite=True)

    return encode


ENCODERS = {JSON: _json_body, **{media_type: _image_body(fmt) for media_type, fmt in IMAGE_FORMATS.items()}}


def run_invocation(engine, data: bytes, options: RequestOptions, response_type: str,
                   jpeg_quality: int = 90, probed: ImageInfo | None = None) -> InvocationResult:
    """Decode `data`, run `engine.predict` with the request's options, encode the answer.
    `probed`: probe_image(data), where the caller has run it (its checks are not repeated).

    Raises ImageDecodeError for bytes that do not decode (the caller answers 400).
    """
    start = time.perf_counter()
    # the app has checked the size against its own limit
    image = decode_image(data, max_megapixels=None, probed=probed)
    before = time.perf_counter()
    det = engine.predict(image, score_threshold=options.score_threshold,
                         max_detections=options.max_detections, class_ids=options.class_ids)
    after = time.perf_counter()
    body = ENCODERS[response_type](image, det, options, jpeg_quality)
    end = time.perf_counter()
    return InvocationResult(body=body, content_type=response_type, detections=len(det.scores),
                            inference_ms=(after - before) * 1e3, total_ms=(end - start) * 1e3,
                            stages_s=stage_seconds(before - start, det, end - after))


def stage_seconds(decode_s: float, det, encode_s: float) -> dict[str, float]:
    """Seconds per stage (server.metrics.STAGES) of one invocation: the engine's own timings
    (milliseconds per engine stage) summed into the server's stages, and the paste (done
    while encoding, crop by crop, when the answer needs the masks) taken out of the encode."""
    timings = det.timings
    stages = {"decode": decode_s}
    for stage, parts in ENGINE_STAGES.items():
        ms = [timings[p] for p in parts if p in timings]
        if ms:
            stages[stage] = sum(ms) / 1e3
    paste_s = getattr(det.mask_crops, "paste_s", 0.0)
    if paste_s:
        stages["paste"] = paste_s
    stages["encode"] = max(encode_s - paste_s, 0.0)
    return stages

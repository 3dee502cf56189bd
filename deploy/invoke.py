"""One photo through a deployed endpoint with sagemaker-runtime invoke_endpoint."""

from __future__ import annotations

import json
from pathlib import Path

from engine.media_types import RESPONSE_TYPES as ACCEPTS  # noqa: F401  (the --accept choices)
from engine.media_types import SIGNATURES, SUFFIXES

from .errors import InputError

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # real-time endpoints; SageMaker answers 413 above it
MAX_CUSTOM_ATTRIBUTES = 1024


def sniff_content_type(body: bytes, name: str) -> str:
    """image/jpeg or image/png from the first bytes; InputError for anything else."""
    for signature, media_type in SIGNATURES.items():
        if body.startswith(signature):
            return media_type
    raise InputError(f"{name} is neither a JPEG nor a PNG image (by its first bytes)")


def check_custom_attributes(text: str) -> str:
    """The X-Amzn-SageMaker-Custom-Attributes value: a JSON object, ASCII, at most 1024
    characters (SageMaker's limit). ValueError otherwise."""
    if len(text) > MAX_CUSTOM_ATTRIBUTES or not text.isascii():
        raise ValueError(f"must be at most {MAX_CUSTOM_ATTRIBUTES} ASCII characters")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object, e.g. {"score_threshold": 0.7}')
    return text


def read_photo(path: Path) -> tuple[bytes, str]:
    """The photo's bytes and content type; InputError if unreadable, too large or not an image."""
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(body) > MAX_PAYLOAD_BYTES:
        raise InputError(f"{path} is {len(body):,} bytes; an endpoint takes at most {MAX_PAYLOAD_BYTES:,}")
    return body, sniff_content_type(body, str(path))


def invoke(runtime, endpoint_name: str, body: bytes, content_type: str, accept: str,
           custom_attributes: str | None = None) -> tuple[str, bytes]:
    """POST the photo; returns the answer's content type and bytes."""
    request = {"EndpointName": endpoint_name, "Body": body, "ContentType": content_type, "Accept": accept}
    if custom_attributes:
        request["CustomAttributes"] = custom_attributes
    answer = runtime.invoke_endpoint(**request)
    return answer.get("ContentType", accept), answer["Body"].read()


def default_output(photo: Path, accept: str) -> Path:
    """`<photo stem>.segmented.jpg|png` in the current directory."""
    return Path(f"{photo.stem}.segmented{SUFFIXES[accept]}")

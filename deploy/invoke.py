"""One photo through a deployed endpoint with sagemaker-runtime invoke_endpoint (and what
invoking an endpoint asynchronously shares with it: the photo, its type, the answer's file)."""

from __future__ import annotations

import json
from pathlib import Path

from engine.media_types import RESPONSE_TYPES as ACCEPTS  # noqa: F401  (the --accept choices)
from engine.media_types import SIGNATURES, SUFFIXES

from .errors import InputError

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # real-time endpoints; SageMaker answers 413 above it
MAX_CUSTOM_ATTRIBUTES = 1024
MAX_TARGET_MODEL = 1024  # TargetModel: a key under a multi-model endpoint's prefix, e.g. "a.tar.gz"


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


def check_target_model(text: str) -> str:
    """The X-Amzn-SageMaker-Target-Model value: 1..1024 printable ASCII characters, the first
    not a space (the API's pattern). ValueError otherwise."""
    if not 0 < len(text) <= MAX_TARGET_MODEL or not (text.isascii() and text.isprintable()) or text[0] == " ":
        raise ValueError(f"must be 1..{MAX_TARGET_MODEL} printable ASCII characters, not starting with a space")
    return text


def read_photo(path: Path, max_bytes: int = MAX_PAYLOAD_BYTES, endpoint: str = "an endpoint") -> tuple[bytes, str]:
    """The photo's bytes and content type; InputError if unreadable, over `max_bytes` (by its
    size, before reading it) or not an image."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(f"{path} is {size:,} bytes; {endpoint} takes at most {max_bytes:,}")
        body = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    return body, sniff_content_type(body, str(path))


def invoke(runtime, endpoint_name: str, body: bytes, content_type: str, accept: str,
           custom_attributes: str | None = None, target_model: str | None = None) -> tuple[str, bytes]:
    """POST the photo; returns the answer's content type and bytes. `target_model` picks the
    model of a multi-model endpoint (boto3 sends it as X-Amzn-SageMaker-Target-Model)."""
    request = {"EndpointName": endpoint_name, "Body": body, "ContentType": content_type, "Accept": accept}
    if custom_attributes:
        request["CustomAttributes"] = custom_attributes
    if target_model:
        request["TargetModel"] = target_model
    tell_container_errors(runtime)
    answer = runtime.invoke_endpoint(**request)
    return answer.get("ContentType", accept), answer["Body"].read()


def tell_container_errors(runtime) -> None:
    """Make an error answer from the container itself say why.

    SageMaker wraps a container's error in its own (ModelError, with the original message),
    but a local server reached through AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME answers in its own
    JSON, `{"error": "...", "status": 404}`, where botocore looks for "message" and finds
    none; this copies "error" into the ClientError's message before botocore raises it.
    """
    runtime.meta.events.register("after-call.sagemaker-runtime.InvokeEndpoint", _container_message,
                                 unique_id="maskrcnn-sagemaker-container-errors")


def _container_message(http_response, parsed, **_) -> None:
    error = parsed.get("Error") if isinstance(parsed, dict) else None
    if http_response.status_code < 300 or error is None or error.get("Message"):
        return
    try:
        body = json.loads(http_response.content)
    except ValueError:
        return
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        error["Message"] = body["error"]


def default_output(photo: Path, accept: str) -> Path:
    """`<photo stem>.segmented.jpg|png` in the current directory."""
    return Path(f"{photo.stem}.segmented{SUFFIXES[accept]}")

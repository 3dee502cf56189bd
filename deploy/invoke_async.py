"""One photo through an asynchronous endpoint: upload it under an S3 prefix, call
sagemaker-runtime invoke_endpoint_async, and wait for the answer (or the failure) to
appear in S3.

SageMaker answers InvokeEndpointAsync at once with an inference id and the S3 URI where
the answer will be written (and, when the endpoint config names S3FailurePath, where a
failure will be); the request waits in SageMaker's queue, possibly while the endpoint
scales up from zero instances. InvokeEndpointAsync has no TargetModel: asynchronous
endpoints serve one model.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import DeployError
from .names import timestamp
from .s3 import get_if_present, parse_s3_uri

DEFAULT_TIMEOUT_S = 3600  # an async request may run for an hour, after waiting in the queue
POLL_S = 2.0  # a HEAD-sized GET on each location per poll
PROGRESS_S = 10.0
_MAX_LINE = 600
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Submitted:
    inference_id: str
    input_uri: str
    output_uri: str
    failure_uri: str | None  # None when the endpoint config has no S3FailurePath


@dataclass(frozen=True)
class Answer:
    uri: str
    body: bytes
    content_type: str | None
    failed: bool


def input_key(prefix: str, photo: Path) -> str:
    """A key under `prefix` no other request uses: `<prefix>/<UTC time>-<random>-<photo name>`,
    the name cut to characters that pass through an HTTP header (InputLocation) unchanged."""
    name = _KEY_UNSAFE.sub("-", photo.name).strip("-") or "photo"
    return f"{prefix.strip('/')}/{timestamp()}-{uuid.uuid4().hex[:8]}-{name}".lstrip("/")


def submit(s3, runtime, endpoint_name: str, photo: Path, body: bytes, content_type: str, input_prefix: str,
           accept: str, custom_attributes: str | None = None) -> Submitted:
    """Upload the photo under `input_prefix` and queue the request."""
    bucket, prefix = parse_s3_uri(input_prefix)
    key = input_key(prefix, photo)
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    input_uri = f"s3://{bucket}/{key}"
    request = {"EndpointName": endpoint_name, "InputLocation": input_uri, "ContentType": content_type,
               "Accept": accept}
    if custom_attributes:
        request["CustomAttributes"] = custom_attributes
    answer = runtime.invoke_endpoint_async(**request)
    return Submitted(answer["InferenceId"], input_uri, answer["OutputLocation"], answer.get("FailureLocation"))


def wait_for_answer(fetch: Callable[[str], tuple[bytes, str | None] | None], submitted: Submitted, *,
                    deadline_s: float, echo: Callable[[str], None], poll_s: float = POLL_S,
                    progress_s: float = PROGRESS_S, sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> Answer:
    """Look for the output (and the failure) object every `poll_s` until one is there, and
    return it. `fetch(uri)` gives an object's bytes and type, or None while it is missing.

    Prints `[  42 s] waiting for <output>` at the start and every `progress_s`; DeployError
    when the next poll would pass `deadline_s` (the request may still be answered later).
    """
    start = clock()
    last_progress = None
    locations = [(submitted.output_uri, False)]
    if submitted.failure_uri:
        locations.append((submitted.failure_uri, True))
    while True:
        for uri, failed in locations:
            found = fetch(uri)
            if found is not None:
                echo(f"[{clock() - start:5.0f} s] {'failure' if failed else 'answer'} at {uri}")
                return Answer(uri, found[0], found[1], failed)
        elapsed = clock() - start
        if last_progress is None or elapsed - last_progress >= progress_s:
            echo(f"[{elapsed:5.0f} s] waiting for {submitted.output_uri}")
            last_progress = elapsed
        if elapsed + poll_s > deadline_s:
            raise DeployError(f"no answer for inference {submitted.inference_id} after {elapsed:.0f} s (waited at "
                              f"most {deadline_s:.0f} s); it may still come: aws s3 cp {submitted.output_uri} .")
        sleep(poll_s)


def fetcher(s3) -> Callable[[str], tuple[bytes, str | None] | None]:
    return lambda uri: get_if_present(s3, uri)


def failure_text(body: bytes) -> str:
    """A failure object's content as one line: the server's JSON error's message when it is
    one (`{"error": "...", "status": 413}`), else the text itself, cut to a line's length."""
    text = body.decode("utf-8", "replace")
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict):
        message = next((value[k] for k in ("error", "message", "Message") if isinstance(value.get(k), str)), None)
        if message is not None:
            text = f"{message} (status {value['status']})" if "status" in value else message
    line = " ".join(text.split()) or "(an empty failure object)"
    return line if len(line) <= _MAX_LINE else line[: _MAX_LINE - 3] + "..."

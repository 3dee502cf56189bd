"""What `schemathesis run` needs to test this API, as a hooks module (SCHEMATHESIS_HOOKS=this file).

* Image bodies: schemathesis cannot make a JPEG or PNG from a schema (it knows one 1x1 file
  of each, and none for image/jpg or application/x-image), so each request media type gets
  small real images, odd sizes down to 1x1, from `image_bytes`. Only real images: the
  document's schema-valid body is one, and positive_data_acceptance holds the server to it.
* json_header_conformance, a check schemathesis lacks (registered, so `--checks all` runs it).
* Multi-model servers (`before_call`, schema-valid requests only, as the image bodies): what
  a schema-valid request is that JSON Schema cannot say. POST /models loads the model
  directory $SCHEMATHESIS_MODEL_DIR (a `url` is a model directory in the container; a random
  path is a 400); GET /models sends the token of a page ending at the generated text (a
  `next_page_token` is one the server gave); an invocation's `classes` custom attribute is
  null, all classes (the multi-model document cannot name a model's classes).

tests/test_openapi.py runs the CLI with it, and imports the check for its hand-made requests.
"""

from __future__ import annotations

import base64
import json
import os

import cv2
import jsonschema
import numpy as np
import schemathesis
from hypothesis import strategies as st

# request media type -> the file formats it is sent as (application/x-image: either, sniffed)
BODY_FORMATS = {"image/jpeg": ("jpg",), "image/jpg": ("jpg",), "image/png": ("png",),
                "application/x-image": ("jpg", "png")}


@st.composite
def image_bytes(draw, formats: tuple[str, ...]):
    """A small real image of random pixels, 1 to 48 pixels a side, in one of `formats`."""
    fmt = draw(st.sampled_from(formats))
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    pixels = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (h, w, 3), np.uint8)
    ok, data = cv2.imencode("." + fmt, pixels)
    if not ok:
        raise RuntimeError(f"cv2 could not encode a {w}x{h} {fmt}")
    return data.tobytes()


for _media_type, _formats in BODY_FORMATS.items():
    schemathesis.openapi.media_type(_media_type, image_bytes(_formats))


def _resolve(node: dict, doc: dict) -> dict:
    """Follow local $refs ("#/components/...") to what they name."""
    while "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


@schemathesis.check
def json_header_conformance(ctx, response, case) -> None:
    """A response header documented with `content: application/json`
    (X-Amzn-SageMaker-Custom-Attributes) is JSON its schema accepts. schemathesis validates
    only headers documented with `schema`, and this one's presence."""
    doc = case.operation.schema.raw_schema
    operation = doc["paths"][case.operation.path].get(case.method.lower())
    definition = operation and operation["responses"].get(str(response.status_code))
    if definition is None:
        return  # an undocumented method (a 405 probe) or status: other checks report those
    for name, header in _resolve(definition, doc).get("headers", {}).items():
        schema = _resolve(header, doc).get("content", {}).get("application/json", {}).get("schema")
        values = response.headers.get(name.lower())
        if schema is not None and values:
            # the root carries the components, so that the schema's $refs resolve
            validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
            errors = [e.message for e in validator.iter_errors(json.loads(values[0]))]
            assert not errors, f"response header {name} does not conform to its schema: {errors}"


MODEL_DIR_ENV = "SCHEMATHESIS_MODEL_DIR"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
MULTI_MODEL_INVOCATIONS = ("/invocations", "/endpoints/{endpoint_name}/invocations", "/models/{model_name}/invoke")


@schemathesis.hook
def before_call(context, case, kwargs) -> None:
    """Make a schema-valid request to a multi-model server one the server can accept (see the
    module docstring); every other request is sent as generated."""
    doc = case.operation.schema.raw_schema
    meta = case.meta
    if "/models" not in doc["paths"] or meta is None or not meta.generation.mode.is_positive:
        return
    path, method = case.operation.path, case.method.upper()
    if (path, method) == ("/models", "POST") and isinstance(case.body, dict) and isinstance(case.body.get("url"), str):
        case.body = {**case.body, "url": os.environ[MODEL_DIR_ENV]}
    elif (path, method) == ("/models", "GET") and isinstance((case.query or {}).get("next_page_token"), str):
        name = case.query["next_page_token"]
        token = base64.urlsafe_b64encode(name.encode()).decode().rstrip("=") if name else ""
        case.query = {**case.query, "next_page_token": token}
    elif path in MULTI_MODEL_INVOCATIONS and method == "POST" and (case.headers or {}).get(CUSTOM_ATTRIBUTES):
        value = case.headers[CUSTOM_ATTRIBUTES]
        attributes = json.loads(value) if isinstance(value, str) else value
        if isinstance(attributes, dict) and attributes.get("classes") is not None:
            attributes = {**attributes, "classes": None}  # never longer: "null" is no longer than any list
            case.headers = {**case.headers, CUSTOM_ATTRIBUTES: json.dumps(attributes) if isinstance(value, str)
                            else attributes}

"""What `schemathesis run` needs to test this API, as a hooks module (SCHEMATHESIS_HOOKS=this file).

* Image bodies: schemathesis cannot make a JPEG or PNG from a schema (it knows one 1x1 file
  of each, and none for image/jpg or application/x-image), so each request media type gets
  small real images, odd sizes down to 1x1, from `image_bytes`. Only real images: the
  document's schema-valid body is one, and positive_data_acceptance holds the server to it.
* json_header_conformance, a check schemathesis lacks (registered, so `--checks all` runs it).

tests/test_openapi.py runs the CLI with it, and imports the check for its hand-made requests.
"""

from __future__ import annotations

import json

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

"""server/openapi.json: a valid OpenAPI 3.1 document of every route, served at /openapi.json,
that the real server keeps.

The document is hand-written; what keeps it true:

* its routes and methods are the app's (falcon.inspect), and its CustomAttributes schema
  accepts exactly the JSON types server/negotiation.py accepts, value by value;
* schemathesis generates requests from it for every operation and sends them to the real
  `serve` process (the small model), checking each answer against it: no 5xx, a documented
  status, content type, body schema and headers (JSON headers by json_header_conformance,
  which schemathesis lacks). Image bodies are real small JPEGs and PNGs, or arbitrary bytes
  (a documented 400);
* a few hand-made requests reach what fuzzing seldom does (each response type, 406, 413, 415),
  validated the same way, and deliberately wrong documents show that each check does fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import falcon.inspect
import jsonschema
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings, strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

from server import EngineSlot, create_app
from server.app import OPENAPI_PATH
from server.config import MAX_CUSTOM_ATTRIBUTES_CHARS, MAX_DETECTIONS_LIMIT
from server.errors import BadRequest
from server.negotiation import (ATTRIBUTE_TYPES, CUSTOM_ATTRIBUTES_HEADER, INCLUDABLE, MASK_FORMATS,
                                RESPONSE_TYPE_NAMES, parse_custom_attributes)
from server_process import REPO, running_server

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DOC = json.loads(OPENAPI_PATH.read_text())


def _resolve(node: dict, doc: dict) -> dict:
    """Follow local $refs ("#/components/...") to what they name."""
    while "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def json_header_conformance(ctx, response, case) -> None:
    """The check schemathesis lacks: a response header documented with `content:
    application/json` (X-Amzn-SageMaker-Custom-Attributes) is JSON its schema accepts.
    schemathesis validates only headers documented with `schema`, and this one's presence."""
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


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, json_header_conformance]
# Generated requests per operation, on top of schemathesis's explicit and coverage cases; a
# deeper search: OPENAPI_FUZZ_EXAMPLES=500 pytest tests/test_openapi.py
MAX_EXAMPLES = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "12"))


# ---- the document itself -------------------------------------------------------------------------


def test_document_is_valid_openapi_3_1():
    assert DOC["openapi"].startswith("3.1.")
    validate_openapi(DOC)  # raises, with the JSON path, on any violation of the 3.1 schema


def test_document_describes_every_route_and_method():
    app = create_app(EngineSlot())
    routes = {(r.path, m.method.lower()) for r in falcon.inspect.inspect_routes(app)
              for m in r.methods if not m.internal}
    documented = {(path, method) for path, item in DOC["paths"].items() for method in item}
    assert documented == routes


def test_get_openapi_json_serves_the_file_without_torch_even_while_loading():
    """Through the app with no engine yet; in a fresh interpreter, so that torch imported by
    another test cannot hide an import of it."""
    code = ("import sys, falcon.testing; from server import EngineSlot, create_app\n"
            "resp = falcon.testing.TestClient(create_app(EngineSlot())).simulate_get('/openapi.json')\n"
            "assert resp.status_code == 200 and resp.headers['content-type'] == 'application/json', resp\n"
            "sys.stdout.buffer.write(resp.content); assert 'torch' not in sys.modules, 'torch was imported'\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == OPENAPI_PATH.read_bytes()


def test_custom_attributes_schema_says_what_the_parser_enforces():
    attrs = DOC["components"]["schemas"]["CustomAttributes"]
    props = attrs["properties"]
    assert set(props) == set(ATTRIBUTE_TYPES) and attrs["additionalProperties"] is True
    assert set(props["response_type"]["enum"]) == {"", None, *RESPONSE_TYPE_NAMES}
    assert set(props["mask_format"]["enum"]) == {None, *MASK_FORMATS}
    assert props["include"]["items"]["enum"] == list(INCLUDABLE)
    assert props["max_detections"]["maximum"] == MAX_DETECTIONS_LIMIT
    assert str(MAX_CUSTOM_ATTRIBUTES_CHARS) in DOC["components"]["parameters"]["CustomAttributes"]["description"]


SAMPLES = ["", "json", "png", "rle", "polygon", "cat", "scores", 0, 1, 0.5, 7, 7.0, 2.5, -1, 1001, True,
           False, None, [], ["cat"], ["scores", "masks"], ["cat", 1], [1], {}, {"cat": 1}]


@pytest.mark.parametrize("key", sorted(ATTRIBUTE_TYPES))
def test_each_attribute_schema_accepts_exactly_what_the_parser_accepts(key):
    """Value by value, over every JSON type: the schema's verdict is the parser's."""
    validator = jsonschema.Draft202012Validator(DOC["components"]["schemas"]["CustomAttributes"]["properties"][key])
    # every name in the samples is a class: which names a model knows is not the schema's business
    class_names = ["__background__"] + [v for s in SAMPLES if isinstance(s, list) for v in s if isinstance(v, str)]
    for value in SAMPLES:
        try:
            parse_custom_attributes(json.dumps({key: value}), class_names)
            parsed = True
        except BadRequest:
            parsed = False
        assert validator.is_valid(value) == parsed, (key, value)


# ---- schemathesis against the real server -----------------------------------------------------------


@st.composite
def image_bytes(draw, fmt: str):
    """A small real image (odd sizes included, down to 1x1), or bytes that are not one."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=64))
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)
    ok, data = cv2.imencode("." + fmt, pixels)
    assert ok
    return data.tobytes()


for _media_type, _fmt in [("image/jpeg", "jpg"), ("image/jpg", "jpg"), ("image/png", "png"),
                          ("application/x-image", "png")]:
    schemathesis.openapi.media_type(_media_type, image_bytes(_fmt))

CONFIG = schemathesis.Config.from_dict({"generation": {"max-examples": MAX_EXAMPLES}})
schema = schemathesis.openapi.from_dict(DOC, config=CONFIG)


@pytest.fixture(scope="module")
def server(small_model_dir, tmp_path_factory):
    yield from running_server(small_model_dir, tmp_path_factory.mktemp("serve"))


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_real_server_keeps_the_document(case, server):
    case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)


def _png(h: int, w: int) -> bytes:
    return cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8))[1].tobytes()


def _bomb_png(w: int, h: int) -> bytes:
    """A PNG header declaring w x h pixels (no pixel data: refused from the header)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


@pytest.mark.parametrize("headers, body_kind, media_type, status, answer_type", [
    ({"Accept": "application/json"}, "png", "image/png", 200, "application/json"),
    ({"Accept": "image/jpeg"}, "png", "image/png", 200, "image/jpeg"),
    ({"Accept": "image/png"}, "png", "image/png", 200, "image/png"),
    ({CUSTOM_ATTRIBUTES_HEADER: '{"response_type": "png"}'}, "png", "image/png", 200, "image/png"),
    ({"Accept": "application/json", CUSTOM_ATTRIBUTES_HEADER: '{"response_type": "png"}'},
     "png", "image/png", 200, "application/json"),  # Accept wins
    ({CUSTOM_ATTRIBUTES_HEADER: '{"score_threshold": 0, "include": ["scores", "class_ids", "masks"]}'},
     "png", "image/png", 200, "application/json"),
    ({CUSTOM_ATTRIBUTES_HEADER: '{"score_threshold": 0, "include": ["masks"], "mask_format": "polygon"}'},
     "png", "image/png", 200, "application/json"),
    ({"Accept": "text/html"}, "png", "image/png", 406, "application/json"),
    ({CUSTOM_ATTRIBUTES_HEADER: '{"classes": "circle"}'}, "png", "image/png", 400, "application/json"),
    ({}, "bomb", "image/png", 413, "application/json"),
    ({}, "png", "text/plain", 415, "application/json"),
])
def test_hand_made_requests_keep_the_document(server, headers, body_kind, media_type, status, answer_type):
    body = _png(40, 56) if body_kind == "png" else _bomb_png(10000, 10000)
    for path, params in [("/invocations", None), ("/endpoints/{endpoint_name}/invocations", {"endpoint_name": "ep"})]:
        case = schema[path]["POST"].Case(headers=dict(headers), body=body, media_type=media_type,
                                         path_parameters=params)
        resp = case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)
        assert resp.status_code == status
        assert resp.headers["content-type"] == [answer_type]


def _break_batch_strategy(doc):
    doc["components"]["schemas"]["ExecutionParameters"]["properties"]["BatchStrategy"] = {"const": "MultiRecord"}
    return "/execution-parameters", "GET", {}, "Response violates schema"


def _drop_415(doc):
    del doc["paths"]["/invocations"]["post"]["responses"]["415"]
    return "/invocations", "POST", {"body": b"x", "media_type": "text/plain"}, "Undocumented status code"


def _break_page_header(doc):
    doc["components"]["responses"]["Page"]["headers"]["X-Content-Type-Options"]["schema"] = {"const": "sniff"}
    return "/", "GET", {}, "Response header does not conform to the schema"


def _break_invocation_header(doc):
    doc["components"]["schemas"]["InvocationAttributes"]["properties"]["detections"] = {"type": "string"}
    return "/invocations", "POST", {"body": _png(8, 8), "media_type": "image/png"}, \
        "Custom check failed: `json_header_conformance`"


def _drop_png_answer(doc):
    del doc["components"]["responses"]["Invocation"]["content"]["image/png"]
    return "/invocations", "POST", {"body": _png(8, 8), "media_type": "image/png", "headers": {"Accept": "image/png"}}, \
        "Undocumented Content-Type"


@pytest.mark.parametrize("mutate", [_break_batch_strategy, _drop_415, _break_page_header,
                                    _break_invocation_header, _drop_png_answer])
def test_the_checks_fail_on_a_wrong_document(server, mutate):
    """A document that misstates an answer (its body, status or a header) fails the checks."""
    wrong = json.loads(json.dumps(DOC))
    path, method, case_kw, title = mutate(wrong)
    case = schemathesis.openapi.from_dict(wrong, config=CONFIG)[path][method].Case(**case_kw)
    with pytest.raises(schemathesis.errors.FailureGroup) as failed:
        case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)
    assert [f.title for f in failed.value.exceptions] == [title]

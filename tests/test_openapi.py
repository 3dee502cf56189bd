"""/openapi.json: a valid OpenAPI 3.1 document of every route that the real server keeps,
exact about what it accepts.

server/openapi.json is hand-written; server/openapi.py fills in the loaded model's class
names. What keeps the document true:

* its routes and methods are the app's (falcon.inspect), and its CustomAttributes schema
  accepts exactly the values server/negotiation.py accepts, value by value: the packaged
  document's types and ranges, and the `classes` names of the document built for a model;
* `schemathesis run --checks all` (its CLI, as a user runs it) against the real `serve`
  process, for the demo model and a 91-class R50: every generated request, schema-valid or
  not, is answered as the document says: a schema-valid one is accepted and a schema-invalid
  one refused, no 5xx, documented statuses, content types, bodies and headers.
  tests/schemathesis_hooks.py gives it real image bodies and the JSON-header check it lacks;
* a few hand-made requests reach what fuzzing does not (each response type, 406, 413, 415,
  bytes that are no image), validated the same way, and deliberately wrong documents show
  that each check does fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import cv2
import falcon.inspect
import falcon.testing
import jsonschema
import jsonschema_rs
import numpy as np
import pytest
import schemathesis
from hypothesis import given, settings, strategies as st
from openapi_spec_validator import validate as validate_openapi
from schemathesis.checks import (content_type_conformance, not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

from schemathesis_hooks import json_header_conformance
from server import EngineSlot, create_app
from server.config import MAX_CUSTOM_ATTRIBUTES_CHARS, MAX_DETECTIONS_LIMIT
from server.errors import BadRequest
from server.negotiation import (ATTRIBUTE_TYPES, CUSTOM_ATTRIBUTES_HEADER, INCLUDABLE, MASK_FORMATS,
                                RESPONSE_TYPE_NAMES, parse_custom_attributes, selectable_classes)
from server.openapi import OPENAPI_PATH, OpenApiDocuments, for_model
from server_process import REPO, http_call, running_server

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DOC = json.loads(OPENAPI_PATH.read_text())

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, json_header_conformance]
# `schemathesis run`: generated requests per operation, on top of its explicit and coverage
# cases, and the seed, fixed so that CI fails on a change and not on luck. A deeper search:
# OPENAPI_FUZZ_EXAMPLES=500 OPENAPI_FUZZ_SEED=7 pytest tests/test_openapi.py
MAX_EXAMPLES = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("OPENAPI_FUZZ_SEED", "0")
HOOKS = REPO / "tests" / "schemathesis_hooks.py"


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


def test_get_openapi_json_imports_no_torch_while_loading_or_after():
    """Through the app, with no engine yet (the packaged file as it is) and with one (a stub:
    the model's document is built from its class names alone); in a fresh interpreter, so
    that torch imported by another test cannot hide an import of it."""
    code = ("import sys, types, falcon.testing; from server import EngineSlot, create_app\n"
            "slot = EngineSlot(); client = falcon.testing.TestClient(create_app(slot))\n"
            "loading = client.simulate_get('/openapi.json')\n"
            "slot.set(types.SimpleNamespace(class_names=['__background__', 'circle']))\n"
            "loaded = client.simulate_get('/openapi.json')\n"
            "for resp in (loading, loaded):\n"
            "    assert resp.status_code == 200 and resp.headers['content-type'] == 'application/json', resp\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "sys.stdout.buffer.write(loading.content)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == OPENAPI_PATH.read_bytes()


def test_the_served_document_is_the_models_once_loaded_and_built_once():
    slot = EngineSlot()
    client = falcon.testing.TestClient(create_app(slot))
    assert client.simulate_get("/openapi.json").content == OPENAPI_PATH.read_bytes()
    names = ["__background__", "person", "N/A", "traffic light"]
    slot.set(SimpleNamespace(class_names=names))
    served = client.simulate_get("/openapi.json").json
    assert served == for_model(DOC, names)
    validate_openapi(served)
    items = served["components"]["schemas"]["CustomAttributes"]["properties"]["classes"]["items"]
    assert items["anyOf"][0] == {"enum": ["person", "traffic light"]}  # what /ping lists
    assert served["components"]["schemas"]["Ping"]["properties"]["classes"]["const"] == ["person", "traffic light"]

    documents = OpenApiDocuments()
    engine, other = SimpleNamespace(class_names=names), SimpleNamespace(class_names=names[:2])
    assert documents.for_engine(None) == OPENAPI_PATH.read_bytes()
    assert documents.for_engine(engine) is documents.for_engine(engine)  # serialised once
    assert json.loads(documents.for_engine(other)) == for_model(DOC, names[:2])


def test_custom_attributes_schema_says_what_the_parser_enforces():
    attrs = DOC["components"]["schemas"]["CustomAttributes"]
    props = attrs["properties"]
    assert set(props) == set(ATTRIBUTE_TYPES) and attrs["additionalProperties"] is True
    assert set(props["response_type"]["anyOf"][0]["enum"]) == {"", None, *RESPONSE_TYPE_NAMES}
    assert set(props["mask_format"]["anyOf"][0]["enum"]) == {None, *MASK_FORMATS}
    assert props["include"]["items"]["enum"] == list(INCLUDABLE)
    assert props["max_detections"]["maximum"] == MAX_DETECTIONS_LIMIT
    assert str(MAX_CUSTOM_ATTRIBUTES_CHARS) in DOC["components"]["parameters"]["CustomAttributes"]["description"]


def _accepts(schema: dict, value) -> bool:
    """The schema's verdict: jsonschema_rs (ECMA-262 patterns, as JSON Schema names), and
    Python's jsonschema agreeing, except where a newline is involved (Python's `$` matches
    before a final one)."""
    verdict = jsonschema_rs.Draft202012Validator(schema).is_valid(value)
    if "\\n" not in json.dumps(value):
        assert jsonschema.Draft202012Validator(schema).is_valid(value) == verdict, value
    return verdict


def _parses(key: str, value, class_names) -> bool:
    try:
        parse_custom_attributes(json.dumps({key: value}), class_names)
        return True
    except BadRequest:
        return False


# Python's str.strip() whitespace, and what is close to it but not it (U+FEFF, U+200B)
_SPACES = ["\t", "\n", "\x0b", "\x1c", "\x1f", "\x85", "\xa0", "\u1680", "\u2000", "\u200a", "\u2029", "\u3000"]
_NOT_SPACES = ["\ufeff", "\u200b", "\x00", "-"]
_WORDS = ["json", "jpeg", "jpg", "png", "rle", "polygon", "polygons"]
SAMPLES = ["", "json", "png", "rle", "polygon", "cat", "scores", 0, 1, 0.5, 7, 7.0, 2.5, -1, 1001, True,
           False, None, [], ["cat"], ["scores", "masks"], ["cat", 1], [1], {}, {"cat": 1},
           " ", "\n", "JSON", " Png ", "Polygons", "RLE\n", "j son", "jsonx", "pngs",
           *(f"{c}{w}{c}" for c in _SPACES + _NOT_SPACES for w in _WORDS[::3]),
           *(w.upper() for w in _WORDS), *(w.title() for w in _WORDS)]


@pytest.mark.parametrize("key", sorted(ATTRIBUTE_TYPES))
def test_each_attribute_schema_accepts_exactly_what_the_parser_accepts(key):
    """Value by value, over every JSON type: the packaged schema's verdict is the parser's."""
    schema = DOC["components"]["schemas"]["CustomAttributes"]["properties"][key]
    # every name in the samples is a class: which names a model knows is the model document's business
    class_names = ["__background__"] + [v for s in SAMPLES if isinstance(s, list) for v in s if isinstance(v, str)]
    for value in SAMPLES:
        assert _accepts(schema, value) == _parses(key, value, class_names), (key, value)


CLASS_NAME_SETS = {
    "demo": ["__background__", "circle", "square", "triangle"],
    "torchvision": ["__background__", "person", "N/A", "traffic light", "stop sign", "N/A", "scissors"],
    "unicode": ["background", "Straße", "office", "ǰ", "İstanbul", "Kelvin", "a.b*c (x)", "[x]-^\\$|?+{2}/"],
}
_FOLDS = [("ss", "ß"), ("ss", "ẞ"), ("ffi", "ﬃ"), ("fi", "ﬁ"), ("st", "ﬆ"), ("k", "\u212a"), ("s", "ſ"),
          ("i̇", "İ"), ("ǰ", "J̌")]


def _class_samples(names: list[str]) -> list[str]:
    """Each name as written and in other cases, casefold's multi-character spellings, near misses."""
    samples = {"", " ", "unknown", "n/a", "N / A", "__BACKGROUND__", "ss", "SS"}
    for name in names:
        folded = name.casefold()
        samples |= {name, name.upper(), name.lower(), name.swapcase(), name.title(), folded, " " + name,
                    name + " ", name + "\n", name[:-1], name + name[-1:], name.replace(" ", "")}
        samples |= {folded.replace(a, b) for a, b in _FOLDS} | {folded.replace(a, b, 1) for a, b in _FOLDS}
    return sorted(samples)


@pytest.mark.parametrize("names", CLASS_NAME_SETS.values(), ids=CLASS_NAME_SETS.keys())
def test_the_models_classes_schema_accepts_exactly_what_the_parser_accepts(names):
    doc = for_model(DOC, names)
    validate_openapi(doc)
    schema = doc["components"]["schemas"]["CustomAttributes"]["properties"]["classes"]
    assert schema["items"]["anyOf"][0] == {"enum": selectable_classes(names)}
    for sample in _class_samples(names):
        assert _accepts(schema, [sample]) == _parses("classes", [sample], names), repr(sample)
    assert not _accepts(schema, []) and not _parses("classes", [], names)


@pytest.mark.parametrize("names", CLASS_NAME_SETS.values(), ids=CLASS_NAME_SETS.keys())
def test_every_spelling_the_classes_pattern_allows_is_accepted(names):
    pattern = for_model(DOC, names)["components"]["schemas"]["CustomAttributes"]["properties"]["classes"]["items"][
        "anyOf"][-1]["pattern"]

    @given(st.from_regex(pattern, fullmatch=True))
    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    def check(spelling):
        assert _parses("classes", [spelling], names), repr(spelling)

    check()


# ---- `schemathesis run --checks all` against the real server --------------------------------------

# torchvision's R50-FPN with its 91 COCO class names ("N/A" gaps included) and seeded random
# weights, at a small input size with few proposals and detections: many classes, answered
# quickly on a CPU.
R50_SETTINGS = {"min_size": 96, "max_size": 128, "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100,
                "box_detections_per_img": 10}


@pytest.fixture(scope="module")
def demo_server(demo_model_dir, tmp_path_factory):
    yield from running_server(demo_model_dir, tmp_path_factory.mktemp("serve-demo"))


@pytest.fixture(scope="module")
def r50_server(torch_cpu, tmp_path_factory):
    from exporter import export
    from exporter.weights import coco_class_names, random_model

    model = random_model("maskrcnn_resnet50_fpn", seed=0, model_kwargs=R50_SETTINGS)
    path = export(model, tmp_path_factory.mktemp("models") / "r50-coco-small", coco_class_names(),
                  arch="maskrcnn_resnet50_fpn", quiet=True, weights_info={"source": "random", "seed": 0, "trained": False})
    yield from running_server(path, tmp_path_factory.mktemp("serve-r50"))


def http_get(url: str) -> bytes:
    reply = http_call(url, "GET")
    assert reply.status_code == 200, reply.content
    return reply.content


@pytest.mark.parametrize("server_fixture", ["demo_server", "r50_server"])
def test_schemathesis_run_with_every_check_finds_nothing(request, server_fixture, tmp_path):
    """The CLI as a user runs it, on the document the server serves for its model."""
    server = request.getfixturevalue(server_fixture)
    served = json.loads(http_get(server.url + "/openapi.json"))
    listed = json.loads(http_get(server.url + "/ping"))["classes"]
    assert served["components"]["schemas"]["CustomAttributes"]["properties"]["classes"]["items"]["anyOf"][0] == \
        {"enum": listed}
    command = [sys.executable, "-m", "schemathesis.cli", "run", server.url + "/openapi.json", "--url", server.url,
               "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", SEED,
               "--generation-database", "none", "--no-color"]
    out = subprocess.run(command, cwd=tmp_path, env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
                         capture_output=True, text=True, timeout=600)
    report = out.stdout + out.stderr
    assert out.returncode == 0 and "No issues found" in report, report


# ---- hand-made requests, and the checks failing on a wrong document -----------------------------------

schema = schemathesis.openapi.from_dict(DOC)


def _png(h: int, w: int) -> bytes:
    return cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8))[1].tobytes()


def _bomb_png(w: int, h: int) -> bytes:
    """A PNG header declaring w x h pixels (no pixel data: refused from the header)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


BODIES = {"png": lambda: _png(40, 56), "bomb": lambda: _bomb_png(10000, 10000),
          "not an image": lambda: b"GIF89a\x01\x00\x01\x00", "empty": lambda: b""}


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
    ({}, "not an image", "application/x-image", 400, "application/json"),
    ({}, "empty", "image/jpeg", 400, "application/json"),
])
def test_hand_made_requests_keep_the_document(demo_server, headers, body_kind, media_type, status, answer_type):
    body = BODIES[body_kind]()
    for path, params in [("/invocations", None), ("/endpoints/{endpoint_name}/invocations", {"endpoint_name": "ep"})]:
        case = schema[path]["POST"].Case(headers=dict(headers), body=body, media_type=media_type,
                                         path_parameters=params)
        resp = case.call_and_validate(base_url=demo_server.url, checks=CHECKS, timeout=60)
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
def test_the_checks_fail_on_a_wrong_document(demo_server, mutate):
    """A document that misstates an answer (its body, status or a header) fails the checks."""
    wrong = json.loads(json.dumps(DOC))
    path, method, case_kw, title = mutate(wrong)
    case = schemathesis.openapi.from_dict(wrong)[path][method].Case(**case_kw)
    with pytest.raises(schemathesis.errors.FailureGroup) as failed:
        case.call_and_validate(base_url=demo_server.url, checks=CHECKS, timeout=60)
    assert [f.title for f in failed.value.exceptions] == [title]

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

A multi-model server (SAGEMAKER_MULTI_MODEL=true) serves server/openapi.json with
server/openapi_multi_model.json merged in (server.openapi.with_multi_model). The same holds of
that document: valid, the multi-model app's routes and methods, its limits the server's, and
`schemathesis run --checks all` against a real multi-model `serve` with the demo model loaded
under the name the document's examples use (the hooks make a schema-valid load request load a
real model directory, as they make a schema-valid image a real image); hand-made requests reach
the statuses fuzzing does not (409, 507, pagination, unloading).
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

from harness.server import REPO, ServerProcess, http_call, running_server
from schemathesis_hooks import MODEL_DIR_ENV, json_header_conformance
from server import EngineSlot, ServerConfig, create_app
from server.app import MAX_LOAD_REQUEST_BYTES
from server.config import MAX_CUSTOM_ATTRIBUTES_CHARS, MAX_DETECTIONS_LIMIT
from server.errors import BadRequest
from server.models import DEFAULT_PAGE_SIZE, MAX_MODEL_NAME_CHARS, MAX_PAGE_SIZE, TARGET_MODEL_HEADER, check_model_name
from server.negotiation import (ATTRIBUTE_TYPES, CUSTOM_ATTRIBUTES_HEADER, INCLUDABLE, MASK_FORMATS,
                                RESPONSE_TYPE_NAMES, parse_custom_attributes, selectable_classes)
from server.openapi import MULTI_MODEL_OPENAPI_PATH, OPENAPI_PATH, OpenApiDocuments, for_model, with_multi_model

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DOC = json.loads(OPENAPI_PATH.read_text())
FRAGMENT = json.loads(MULTI_MODEL_OPENAPI_PATH.read_text())
MULTI_MODEL_DOC = with_multi_model(DOC, FRAGMENT)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, json_header_conformance]
# `schemathesis run`: generated requests per operation, on top of its explicit and coverage
# cases, and the seed, fixed so that CI fails on a change and not on luck. A deeper search:
# OPENAPI_FUZZ_EXAMPLES=500 OPENAPI_FUZZ_SEED=7 pytest tests/test_openapi.py
MAX_EXAMPLES = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("OPENAPI_FUZZ_SEED", "0")
HOOKS = REPO / "tests" / "schemathesis_hooks.py"


# ---- the document itself -------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [DOC, MULTI_MODEL_DOC], ids=["single-model", "multi-model"])
def test_document_is_valid_openapi_3_1(doc):
    assert doc["openapi"].startswith("3.1.")
    validate_openapi(doc)  # raises, with the JSON path, on any violation of the 3.1 schema


@pytest.mark.parametrize("app_args, doc", [
    ((EngineSlot(),), DOC),
    ((None, ServerConfig(multi_model=True)), MULTI_MODEL_DOC),
], ids=["single-model", "multi-model"])
def test_document_describes_every_route_and_method(app_args, doc):
    app = create_app(*app_args)
    routes = {(r.path, m.method.lower()) for r in falcon.inspect.inspect_routes(app)
              for m in r.methods if not m.internal}
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
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


def test_a_multi_model_server_serves_the_merged_document_whatever_is_loaded():
    """The document names no model's classes: the same bytes with none loaded and for any engine."""
    client = falcon.testing.TestClient(create_app(None, ServerConfig(multi_model=True)))
    served = client.simulate_get("/openapi.json")
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    assert served.json == MULTI_MODEL_DOC
    documents = OpenApiDocuments(multi_model=True)
    assert json.loads(documents.for_engine(None)) == MULTI_MODEL_DOC
    assert documents.for_engine(SimpleNamespace(class_names=["__background__", "cat"])) is documents.for_engine(None)


def test_the_fragment_changes_what_a_multi_model_server_changes_and_nothing_else():
    """Its paths replace the three that differ and add the /models routes; its components are
    new names only, so no definition the single-model routes use is changed under them."""
    replaced = {"/ping", "/invocations", "/endpoints/{endpoint_name}/invocations"}
    assert set(FRAGMENT["paths"]) == replaced | {"/models", "/models/{model_name}", "/models/{model_name}/invoke"}
    for section, entries in FRAGMENT["components"].items():
        assert not set(entries) & set(DOC["components"].get(section, {})), section
    for path, item in DOC["paths"].items():
        assert MULTI_MODEL_DOC["paths"][path] == (FRAGMENT["paths"][path] if path in replaced else item)
    assert list(MULTI_MODEL_DOC["paths"])[:len(DOC["paths"])] == list(DOC["paths"])  # the base's order kept
    assert json.loads(OPENAPI_PATH.read_text()) == DOC  # the base document itself is untouched
    assert MULTI_MODEL_DOC["info"]["description"].startswith(DOC["info"]["description"] + "\n\n")
    assert [t["name"] for t in MULTI_MODEL_DOC["tags"]] == [t["name"] for t in DOC["tags"]] + ["models"]


def test_the_multi_model_documents_limits_are_the_servers():
    schemas, parameters = MULTI_MODEL_DOC["components"]["schemas"], MULTI_MODEL_DOC["components"]["parameters"]
    model_name = schemas["ModelLoad"]["properties"]["model_name"]
    assert model_name["maxLength"] == MAX_MODEL_NAME_CHARS
    listing = {p["name"]: p["schema"] for p in MULTI_MODEL_DOC["paths"]["/models"]["get"]["parameters"]}
    assert (listing["limit"]["minimum"], listing["limit"]["maximum"], listing["limit"]["default"]) == \
        (1, MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE)
    assert schemas["ModelList"]["properties"]["models"]["maxItems"] == MAX_PAGE_SIZE
    assert parameters["TargetModel"]["name"] == TARGET_MODEL_HEADER
    assert f"{MAX_LOAD_REQUEST_BYTES // 1024} KiB ({MAX_LOAD_REQUEST_BYTES} bytes)" in \
        MULTI_MODEL_DOC["paths"]["/models"]["post"]["responses"]["413"]["description"]
    # every name the schema accepts is one the server accepts (it accepts more: any printable
    # character, which the schema's pattern cannot name in both regex dialects)
    for name in ["a", " ", "my-model", "a.b_c~d", "x" * MAX_MODEL_NAME_CHARS, "x" * (MAX_MODEL_NAME_CHARS + 1), "",
                 "a/b", "/", "tab\t", "nl\n", "\x7f", "é", "\u200b", "zero\x00"]:
        if _accepts(model_name, name):
            assert check_model_name(name) == name
        else:
            assert name == "é" or not _name_accepted(name), repr(name)


def _name_accepted(name) -> bool:
    try:
        check_model_name(name)
        return True
    except BadRequest:
        return False


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


# ---- multi-model: `schemathesis run` against a real multi-model server, hand-made requests -------------

# The run's budget: each schema-valid POST /models loads the demo model again (about 100 MB each;
# the hooks make its `url` the demo model's directory), so that a model load is tested like any
# other request; past the budget a load is a 507, as it should be. The default run loads a dozen.
MULTI_MODEL_BUDGET_MB = 3000
MULTI_MODEL_MAX_EXAMPLES = int(os.environ.get("OPENAPI_FUZZ_EXAMPLES", "10"))
# what `--checks all` must allow that it counts as failures by default: a 507 from POST /models
# is SageMaker's contract (it unloads a model and retries), not a server error
MULTI_MODEL_CONFIG = """\
[[operations]]
include-path = "/models"
include-method = "POST"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "507"]
"""
EXAMPLE_MODEL = MULTI_MODEL_DOC["components"]["parameters"]["ModelName"]["example"]
multi_model_schema = schemathesis.openapi.from_dict(MULTI_MODEL_DOC)


def multi_model_serve_env(budget_mb: int) -> dict[str, str]:
    return {"SAGEMAKER_MULTI_MODEL": "true", "MASKRCNN_MEMORY_BUDGET_MB": str(budget_mb)}


@pytest.fixture(scope="module")
def multi_model_server(tmp_path_factory):
    """`serve` with SAGEMAKER_MULTI_MODEL=true and no model loaded, started in an empty directory
    (a relative `url` a request names resolves to nothing there)."""
    yield from running_server(None, tmp_path_factory.mktemp("serve-multi-model"),
                              cwd=tmp_path_factory.mktemp("serve-multi-model-cwd"),
                              extra_env=multi_model_serve_env(MULTI_MODEL_BUDGET_MB))


def call_multi_model(server, path: str, method: str, checks=CHECKS, **case_kw):
    """A hand-made request, validated against the multi-model document with `checks`."""
    case = multi_model_schema[path][method].Case(**case_kw)
    return case.call_and_validate(base_url=server.url, checks=checks, timeout=120)


def load_model(server, name: str, url, status: int = 200):
    # a 507 is what the contract asks for, which not_a_server_error would count as a failure
    checks = [check for check in CHECKS if check is not not_a_server_error] if status == 507 else CHECKS
    resp = call_multi_model(server, "/models", "POST", checks=checks, body={"model_name": name, "url": str(url)},
                            media_type="application/json")
    assert resp.status_code == status, resp.text
    return resp


def ensure_loaded(server, name: str, model_dir) -> None:
    """Load `model_dir` as `name` unless a model of that name is loaded already (409)."""
    resp = call_multi_model(server, "/models", "POST", body={"model_name": name, "url": str(model_dir)},
                            media_type="application/json")
    assert resp.status_code in (200, 409), resp.text


def metric(exposition: str, series: str) -> float:
    """One sample of a /metrics exposition, by its name and labels as written; 0 if absent."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_schemathesis_run_on_a_multi_model_server_finds_nothing(multi_model_server, demo_model_dir, tmp_path):
    """The CLI on the multi-model document, the demo model loaded under the name its examples
    use: every generated request answered as the document says, model loads and unloads
    included (its stateful phase follows the links it infers: load, describe, invoke, unload)."""
    server = multi_model_server
    ensure_loaded(server, EXAMPLE_MODEL, demo_model_dir)
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(MULTI_MODEL_DOC))
    (tmp_path / "schemathesis.toml").write_text(MULTI_MODEL_CONFIG)  # found in the working directory
    command = [sys.executable, "-m", "schemathesis.cli", "run", str(document), "--url", server.url,
               "--checks", "all", "--max-examples", str(MULTI_MODEL_MAX_EXAMPLES), "--seed", SEED,
               "--generation-database", "none", "--no-color"]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), MODEL_DIR_ENV: str(demo_model_dir)}
    out = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    report = out.stdout + out.stderr
    assert out.returncode == 0 and "No issues found" in report, report
    # the run reached what matters, as the server counted it: models loaded by the fuzzer (more
    # than the one loaded above) and invocations answered through each route
    exposition = http_get(server.url + "/metrics").decode()
    assert metric(exposition, 'maskrcnn_model_loads_total{outcome="loaded"}') > 1, exposition
    for route in ("/invocations", "/endpoints/{endpoint_name}/invocations", "/models/{model_name}/invoke"):
        answered = sum(metric(exposition, f'maskrcnn_requests_total{{response_type="{answer_type}",route="{route}",'
                                          f'status="200"}}')
                       for answer_type in ("application/json", "image/jpeg", "image/png"))
        assert answered > 0, (route, exposition)


IMAGE = {"body": lambda: _png(40, 56), "media_type": "image/png"}
INVOCATION_ROUTES = [("/invocations", None), ("/endpoints/{endpoint_name}/invocations", {"endpoint_name": "ep"})]


@pytest.mark.parametrize("target, status", [(EXAMPLE_MODEL, 200), (EXAMPLE_MODEL + ".tar.gz", 200),
                                            (None, 400), ("not-loaded", 404)])
def test_multi_model_invocations_keep_the_document(multi_model_server, demo_model_dir, target, status):
    """The target-model header on both invocation routes, and the model's own route."""
    ensure_loaded(multi_model_server, EXAMPLE_MODEL, demo_model_dir)
    headers = {} if target is None else {TARGET_MODEL_HEADER: target}
    for path, params in INVOCATION_ROUTES:
        for accept in ("application/json", "image/png"):
            resp = call_multi_model(multi_model_server, path, "POST", body=IMAGE["body"](),
                                    media_type=IMAGE["media_type"], path_parameters=params,
                                    headers={**headers, "Accept": accept})
            assert resp.status_code == status, resp.text
            assert resp.headers["content-type"] == [accept if status == 200 else "application/json"]
    if target is not None and not target.endswith(".tar.gz"):  # the path takes the name exactly
        resp = call_multi_model(multi_model_server, "/models/{model_name}/invoke", "POST", body=IMAGE["body"](),
                                media_type=IMAGE["media_type"], path_parameters={"model_name": target})
        assert resp.status_code == status, resp.text


def test_multi_model_ping_and_metrics_keep_the_document(multi_model_server, demo_server):
    resp = call_multi_model(multi_model_server, "/ping", "GET")
    assert resp.status_code == 200 and resp.json()["multi_model"] is True
    for server, schema_ in [(multi_model_server, multi_model_schema), (demo_server, schema)]:
        resp = schema_["/metrics"]["GET"].Case().call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)
        assert resp.status_code == 200 and b"maskrcnn_requests_total" in resp.content


def test_loading_listing_and_unloading_keep_the_document(multi_model_server, demo_model_dir, tmp_path):
    """What a fuzzer reaches rarely or never: 409, a directory that is no model, following the
    pages of the list to its end, unloading, and the 404s after it."""
    server = multi_model_server
    ensure_loaded(server, EXAMPLE_MODEL, demo_model_dir)
    load_model(server, EXAMPLE_MODEL, demo_model_dir, status=409)
    load_model(server, "no-model", tmp_path, status=400)  # a directory, without model.json
    load_model(server, "no-directory", tmp_path / "missing", status=400)
    described = load_model(server, "hand-made", demo_model_dir).json()
    assert described["modelName"] == described["model"] == "hand-made" and described["demo"] is True

    names, token, pages = [], None, 0
    while True:
        query = {"limit": 1} if token is None else {"limit": 1, "next_page_token": token}
        page = call_multi_model(server, "/models", "GET", query=query)
        assert page.status_code == 200, page.text
        names += [m["modelName"] for m in page.json()["models"]]
        pages += 1
        token = page.json().get("nextPageToken")
        if token is None:
            break
    assert pages == len(names) and names == sorted(names) and {EXAMPLE_MODEL, "hand-made"} <= set(names)
    for query in ({"limit": 0}, {"limit": MAX_PAGE_SIZE + 1}, {"next_page_token": "a"}):
        assert call_multi_model(server, "/models", "GET", query=query).status_code == 400

    described = call_multi_model(server, "/models/{model_name}", "GET", path_parameters={"model_name": "hand-made"})
    assert described.status_code == 200 and described.json()["modelUrl"] == str(demo_model_dir)
    unloaded = call_multi_model(server, "/models/{model_name}", "DELETE", path_parameters={"model_name": "hand-made"})
    assert unloaded.status_code == 200 and unloaded.json()["modelName"] == "hand-made"
    for path, method in [("/models/{model_name}", "GET"), ("/models/{model_name}", "DELETE")]:
        resp = call_multi_model(server, path, method, path_parameters={"model_name": "hand-made"})
        assert resp.status_code == 404
    resp = call_multi_model(server, "/models/{model_name}/invoke", "POST", body=IMAGE["body"](),
                            media_type=IMAGE["media_type"], path_parameters={"model_name": "hand-made"})
    assert resp.status_code == 404


def test_a_load_past_the_memory_budget_is_a_507_as_documented(demo_model_dir, tmp_path):
    """With a budget of 1 MB the first model loads (a server with none loaded always tries) and
    the second does not fit."""
    server = ServerProcess(None, tmp_path / "server.log", cwd=tmp_path, extra_env=multi_model_serve_env(1))
    try:
        server.wait_ready()
        load_model(server, "first", demo_model_dir)
        resp = load_model(server, "second", demo_model_dir, status=507)
        assert "memory budget" in resp.json()["error"]
    finally:
        server.kill()


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

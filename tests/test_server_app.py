"""The HTTP layer with a fake engine: negotiation rows, every error, concurrency, shutdown."""

import io
import json
import logging
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import falcon.testing
import numpy as np
import pycocotools.mask as mask_utils
import pytest
from PIL import Image

from engine.image_io import decode_image
from server import EngineSlot, ServerConfig, create_app
from server.app import read_body
from server.config import MIB
from server.errors import PayloadTooLarge
from server.inference import InferenceExecutor, QueueFullError
from server.negotiation import choose_response_type, parse_custom_attributes
from server_fixtures import FAKE_CLASSES, FakeEngine, drawn_image, encode_pil, fake_detections

CA = "X-Amzn-SageMaker-Custom-Attributes"
JSON, JPEG, PNG = "application/json", "image/jpeg", "image/png"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def client(engine):
    return falcon.testing.TestClient(create_app(engine, ServerConfig()))


@pytest.fixture(scope="module")
def jpeg_body():
    return encode_pil(drawn_image(120, 160), "JPEG", quality=90)


@pytest.fixture(scope="module")
def png_body():
    return encode_pil(drawn_image(120, 160), "PNG")


def post(client, body, content_type=JPEG, accept=None, attrs=None, path="/invocations", **headers):
    h = {"Content-Type": content_type} if content_type else {}
    if accept is not None:
        h["Accept"] = accept
    if attrs is not None:
        h[CA] = attrs if isinstance(attrs, str) else json.dumps(attrs)
    h.update(headers)
    return client.simulate_post(path, body=body, headers=h)


def assert_error(resp, status, *words):
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == JSON
    assert set(resp.json) == {"error", "status"} and resp.json["status"] == status
    for word in words:
        assert word in resp.json["error"]
    assert "Traceback" not in resp.text


# ---- the happy path, as the seed shows it ---------------------------------------------------


def test_json_response_is_exactly_the_seed_shape(client, jpeg_body):
    resp = post(client, jpeg_body, attrs={"response_type": "json"})
    assert resp.status_code == 200 and resp.headers["content-type"] == JSON
    assert resp.json == {"labels": ["person 95%", "cat 61%"],
                         "boxes": [[40.0, 30.0, 120.0, 90.0], [0.0, 0.0, 80.0, 60.0]]}


@pytest.mark.parametrize("path", ["/invocations", "/endpoints/my-instance-segmentation/invocations",
                                  "/invocations/"])
def test_invocation_paths(client, jpeg_body, path):
    assert post(client, jpeg_body, path=path).status_code == 200


@pytest.mark.parametrize("accept, fmt", [(JPEG, "jpeg"), (PNG, "png")])
def test_image_response_is_the_segmented_input(client, jpeg_body, accept, fmt):
    resp = post(client, jpeg_body, accept=accept)
    assert resp.status_code == 200 and resp.headers["content-type"] == accept
    out = decode_image(resp.content)
    original = decode_image(jpeg_body)
    assert out.shape == original.shape
    assert not np.array_equal(out, original)  # masks and boxes were drawn
    # a corner far from every detection of the fake is untouched (up to JPEG noise)
    corner = (slice(100, 118), slice(2, 30))
    assert np.abs(out[corner].astype(int) - original[corner].astype(int)).mean() < (3 if fmt == "jpeg" else 0.01)


def test_response_custom_attributes_header(client, jpeg_body):
    resp = post(client, jpeg_body)
    meta = json.loads(resp.headers[CA.lower()])
    assert meta["model"] == "fake-maskrcnn" and meta["detections"] == 2
    assert isinstance(meta["inference_ms"], float)
    assert len(resp.headers[CA.lower()]) <= 1024


def test_boxes_are_in_displayed_coordinates_after_exif_rotation(client, engine):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 160 wide x 120 high, displayed 120 wide x 160 high
    body = encode_pil(drawn_image(120, 160), "JPEG", exif=exif.tobytes())
    resp = post(client, body)
    assert engine.calls[-1]["shape"] == (160, 120, 3)
    assert resp.json["boxes"][0] == [30.0, 40.0, 90.0, 120.0]
    assert decode_image(post(client, body, accept=PNG).content).shape == (160, 120, 3)


def test_no_detections_is_an_ordinary_answer(client, jpeg_body):
    attrs = {"score_threshold": 0.99, "include": ["scores", "class_ids", "masks"]}
    resp = post(client, jpeg_body, attrs=attrs)
    assert resp.status_code == 200
    assert resp.json == {"labels": [], "boxes": [], "scores": [], "class_ids": [], "masks": []}
    for accept in (JPEG, PNG):
        image_resp = post(client, jpeg_body, accept=accept, attrs=attrs)
        assert image_resp.status_code == 200
        assert decode_image(image_resp.content).shape == (120, 160, 3)


# ---- content negotiation: every row -------------------------------------------------------------


@pytest.mark.parametrize("accept, response_type, default, expected", [
    # Accept decides when it names a type
    (JPEG, None, JSON, JPEG),
    (PNG, None, JSON, PNG),
    (JSON, None, JSON, JSON),
    ("Image/JPEG", None, JSON, JPEG),
    ("image/png; q=0.9", None, JSON, PNG),
    (JSON, "png", JSON, JSON),  # Accept first: custom attributes do not override it
    (JPEG, "json", JSON, JPEG),
    # lists by preference
    ("image/png;q=0.5, application/json;q=0.9", None, JSON, JSON),
    ("image/png, image/jpeg", None, JSON, PNG),  # equal q: the earlier one
    ("image/jpeg, image/png", None, JSON, JPEG),
    ("text/html, image/png;q=0.8, */*;q=0.1", None, JSON, PNG),
    ("text/html, */*;q=0.1", None, JSON, JSON),  # only the wildcard matches: default
    ("text/html, */*;q=0.1", "jpeg", JSON, JPEG),  # ... or the response_type
    ("image/*", None, JSON, JPEG),
    ("image/*", "png", JSON, PNG),  # a tie inside Accept goes to response_type
    ("image/*;q=0.2, image/png;q=0", None, JSON, JPEG),  # the specific q=0 wins over image/*
    ("application/*", None, PNG, JSON),
    # Accept absent or */*: response_type decides
    (None, "jpeg", JSON, JPEG),
    (None, "png", JSON, PNG),
    (None, "json", JSON, JSON),
    ("*/*", "png", JSON, PNG),
    ("*/*", "jpg", JSON, JPEG),
    ("", "png", JSON, PNG),
    # neither: JSON, or SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
    (None, None, JSON, JSON),
    ("*/*", None, JSON, JSON),
    (None, None, PNG, PNG),
    ("*/*", None, JPEG, JPEG),
])
def test_negotiation_rows(jpeg_body, accept, response_type, default, expected):
    client = falcon.testing.TestClient(create_app(FakeEngine(), ServerConfig(default_accept=default)))
    attrs = None if response_type is None else {"response_type": response_type}
    resp = post(client, jpeg_body, accept=accept, attrs=attrs)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == expected


@pytest.mark.parametrize("accept", ["text/html", "image/gif", "application/json;q=0", "*/*;q=0",
                                    "image/*;q=0, application/json;q=0", "nonsense", "text/*"])
def test_unsatisfiable_accept_is_406(client, jpeg_body, accept):
    assert_error(post(client, jpeg_body, accept=accept, attrs={"response_type": "json"}), 406, "Accept")


def test_negotiation_function_directly():
    assert choose_response_type(None, None, JSON) == JSON
    assert choose_response_type("application/json;q=0.1, image/jpeg;q=0.1", "image/jpeg", JSON) == JPEG
    assert choose_response_type("image/png;q=abc, image/jpeg", None, JSON) == JPEG  # bad q: skipped


@pytest.mark.parametrize("content_type, body_kind", [
    ("image/jpeg", "jpeg"), ("image/png", "png"), ("image/jpeg; charset=binary", "jpeg"),
    ("IMAGE/PNG", "png"), ("application/x-image", "jpeg"), ("application/x-image", "png"),
    ("image/jpg", "jpeg"),
])
def test_accepted_content_types(client, jpeg_body, png_body, content_type, body_kind):
    resp = post(client, jpeg_body if body_kind == "jpeg" else png_body, content_type=content_type)
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", "image/gif",
                                          "application/json", None])
def test_unsupported_content_type_is_415(client, jpeg_body, content_type):
    assert_error(post(client, jpeg_body, content_type=content_type), 415, "image/jpeg")


# ---- custom attributes ---------------------------------------------------------------------------


def test_options_reach_the_engine(client, engine, jpeg_body):
    attrs = {"score_threshold": 0.25, "max_detections": 7, "classes": ["cat", "Dog"], "future_key": 1}
    resp = post(client, jpeg_body, attrs=attrs)
    assert resp.status_code == 200
    assert engine.calls[-1] == {"shape": (120, 160, 3), "score_threshold": 0.25, "max_detections": 7,
                                "class_ids": [2, 3]}
    assert resp.json["labels"] == ["cat 61%", "dog 30%"]


def test_defaults_reach_the_engine(client, engine, jpeg_body):
    post(client, jpeg_body)
    assert engine.calls[-1] == {"shape": (120, 160, 3), "score_threshold": 0.5, "max_detections": 100,
                                "class_ids": None}


def test_class_names_occurring_twice_map_to_every_index():
    options = parse_custom_attributes('{"classes": ["N/A", "person"]}', FAKE_CLASSES + ["N/A"])
    assert options.class_ids == (1, 4, 6)


def test_include_scores_and_class_ids(client, jpeg_body):
    resp = post(client, jpeg_body, attrs={"include": ["scores", "class_ids"], "score_threshold": 0.1})
    body = resp.json
    assert list(body) == ["labels", "boxes", "scores", "class_ids"]
    assert body["scores"] == pytest.approx([0.953, 0.61, 0.3])
    assert body["scores"] == sorted(body["scores"], reverse=True)
    assert body["class_ids"] == [1, 2, 3]


def test_include_masks_as_coco_rle(client, jpeg_body):
    resp = post(client, jpeg_body, attrs={"include": "masks", "score_threshold": 0.1})
    masks = resp.json["masks"]
    expected = fake_detections(120, 160).masks
    assert len(masks) == 3
    for rle, mask in zip(masks, expected):
        assert rle["size"] == [120, 160]
        np.testing.assert_array_equal(mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}),
                                      mask.astype(np.uint8))


def test_include_masks_as_polygons(client, jpeg_body):
    resp = post(client, jpeg_body, attrs={"include": ["masks"], "mask_format": "polygon"})
    masks = resp.json["masks"]
    assert len(masks) == 2
    for polygons in masks:
        assert polygons and all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
    xs = masks[0][0][0::2]
    assert 40 <= min(xs) and max(xs) <= 120  # the person disc lies inside its box


@pytest.mark.parametrize("attrs, words", [
    ("{not json", ["not valid JSON"]),
    ('["response_type", "json"]', ["JSON object"]),
    ('"json"', ["JSON object"]),
    ({"response_type": "gif"}, ["response_type"]),
    ({"response_type": 3}, ["response_type"]),
    ({"score_threshold": -0.1}, ["score_threshold"]),
    ({"score_threshold": 1.5}, ["score_threshold"]),
    ({"score_threshold": "0.5"}, ["score_threshold"]),
    ({"score_threshold": True}, ["score_threshold"]),
    ({"max_detections": 0}, ["max_detections"]),
    ({"max_detections": 1001}, ["max_detections", "1000"]),
    ({"max_detections": 2.5}, ["max_detections"]),
    ({"max_detections": "3"}, ["max_detections"]),
    ({"classes": ["cat", "unicorn"]}, ["classes", "unicorn"]),
    ({"classes": []}, ["classes"]),
    ({"classes": 5}, ["classes"]),
    ({"classes": ["cat", 5]}, ["classes"]),
    ({"include": ["masks", "polygons"]}, ["include", "polygons"]),
    ({"include": {"masks": True}}, ["include"]),
    ({"mask_format": "bitmap"}, ["mask_format"]),
])
def test_bad_custom_attributes_are_400_naming_the_key(client, engine, jpeg_body, attrs, words):
    assert_error(post(client, jpeg_body, attrs=attrs), 400, *words)
    assert engine.calls == []


def test_custom_attributes_over_1024_chars_is_400(client, jpeg_body):
    attrs = json.dumps({"response_type": "json", "padding": "x" * 1000})
    assert len(attrs) > 1024
    assert_error(post(client, jpeg_body, attrs=attrs), 400, "1024")


def test_valid_edge_values(client, engine, jpeg_body):
    for attrs in ({"score_threshold": 0}, {"score_threshold": 1}, {"max_detections": 1000},
                  {"max_detections": 1.0}, {"response_type": ""}, {"classes": "cat"}, {}):
        assert post(client, jpeg_body, attrs=attrs).status_code == 200, attrs


# ---- bad bodies ------------------------------------------------------------------------------------


def test_empty_body_is_400(client):
    assert_error(post(client, b""), 400, "empty")


@pytest.mark.parametrize("body", [b"definitely not an image", b"GIF89a" + bytes(40), b"\xff\xd8\xff\xe0"])
def test_undecodable_body_is_400(client, body):
    assert_error(post(client, body), 400)


def test_truncated_image_is_400_and_the_server_keeps_serving(client, jpeg_body):
    assert_error(post(client, jpeg_body[: len(jpeg_body) // 2]), 400, "truncated")
    assert post(client, jpeg_body).status_code == 200


def test_body_over_the_limit_is_413(engine, jpeg_body):
    config = ServerConfig(max_body_bytes=len(jpeg_body) - 1)
    client = falcon.testing.TestClient(create_app(engine, config))
    assert_error(post(client, jpeg_body), 413, str(len(jpeg_body) - 1))
    assert engine.calls == []


def test_body_limit_is_also_enforced_while_reading():
    with pytest.raises(PayloadTooLarge):
        read_body(io.BytesIO(b"x" * 101), None, 100)  # no Content-Length to trust
    assert read_body(io.BytesIO(b"x" * 100), None, 100) == b"x" * 100


def test_body_limit_from_sagemaker_environment():
    config = ServerConfig.from_env({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"})
    assert config.max_body_bytes == MIB and config.max_payload_mb == 1
    assert ServerConfig().max_body_bytes == 6291456


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
            + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + bytes(64))


def test_decompression_bomb_is_413_from_the_header(client, engine):
    resp = post(client, _png_header_only(8000, 6000), content_type=PNG)  # 48 MP in ~100 bytes
    assert_error(resp, 413, "8000x6000", "megapixels")
    assert engine.calls == []


def test_megapixel_limit_is_configurable(engine, jpeg_body):
    client = falcon.testing.TestClient(create_app(engine, ServerConfig(max_megapixels=0.01)))
    assert_error(post(client, jpeg_body), 413, "160x120")  # 0.0192 MP


# ---- the web page -------------------------------------------------------------------------------


STATIC_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",),
                ".svg": ("image/svg+xml",), ".jpg": ("image/jpeg",)}


def test_web_page_and_its_assets(client):
    import re

    resp = client.simulate_get("/")
    assert resp.status_code == 200 and resp.headers["content-type"] == "text/html; charset=utf-8"
    assert "default-src 'self'" in resp.headers["content-security-policy"]
    page = resp.text
    assert 'type="file"' in page and 'type="range"' in page and "<table" in page
    assets = set(re.findall(r'(?:src|href)="(/static/[^"]+)"', page)) | {"/static/sample.jpg"}
    assert {"/static/app.js", "/static/style.css"} <= assets
    for path in assets:
        asset = client.simulate_get(path)
        assert asset.status_code == 200, path
        assert asset.headers["content-type"].split(";")[0] in STATIC_TYPES[path[path.rindex("."):]], path
    assert client.simulate_head("/").status_code == 200


def test_web_page_is_served_while_the_model_loads():
    client = falcon.testing.TestClient(create_app(EngineSlot(), ServerConfig()))
    assert client.simulate_get("/ping").status_code == 503
    assert client.simulate_get("/").status_code == 200
    assert client.simulate_get("/static/app.js").status_code == 200


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/../app.py", "/static/%2e%2e/app.py",
                                  "/static/"])
def test_static_route_stays_in_its_directory(client, path):
    assert_error(client.simulate_get(path), 404)


def test_web_page_only_answers_get(client):
    assert_error(client.simulate_post("/", body=b"x"), 405, "POST")


# ---- routes, methods, readiness ----------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [("GET", "/invocations"), ("PUT", "/invocations"),
                                          ("DELETE", "/endpoints/x/invocations"), ("POST", "/ping"),
                                          ("POST", "/execution-parameters"), ("OPTIONS", "/invocations"),
                                          ("OPTIONS", "/ping")])
def test_other_methods_are_405_with_json(client, method, path):
    resp = client.simulate_request(method, path)
    assert_error(resp, 405, method)
    assert "allow" in resp.headers


def test_unknown_path_is_404_with_json(client):
    assert_error(client.simulate_get("/predict"), 404, "/predict")


def test_ping_and_execution_parameters(engine):
    config = ServerConfig(workers=2, max_body_bytes=20 * MIB)
    client = falcon.testing.TestClient(create_app(engine, config))
    assert client.simulate_get("/ping").json == {"status": "ok", "model": "fake-maskrcnn", "backend": "fake",
                                                 "demo": False}
    assert client.simulate_get("/execution-parameters").json == {
        "MaxConcurrentTransforms": 2, "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 20}


def test_execution_parameters_stay_inside_the_transform_api_limits(engine):
    # Asynchronous inference raises the body limit to 1 GB; CreateTransformJob allows 100 MB.
    config = ServerConfig(max_body_bytes=1024 * MIB)
    client = falcon.testing.TestClient(create_app(engine, config))
    assert client.simulate_get("/execution-parameters").json["MaxPayloadInMB"] == 100


def test_ping_is_503_until_the_engine_is_ready(engine, jpeg_body):
    slot = EngineSlot()
    client = falcon.testing.TestClient(create_app(slot, ServerConfig()))
    resp = client.simulate_get("/ping")
    assert_error(resp, 503, "loading")
    assert resp.headers["retry-after"] == "2"
    assert_error(post(client, jpeg_body), 503, "loading")
    slot.set(engine)
    assert client.simulate_get("/ping").status_code == 200
    assert post(client, jpeg_body).status_code == 200


# ---- concurrency: a full queue is 503, pings never wait --------------------------------------------


def test_full_queue_is_503_with_retry_after_and_ping_stays_fast(engine, jpeg_body):
    config = ServerConfig(workers=1, queue_size=1, retry_after_s=3)
    executor = InferenceExecutor(config.workers, config.queue_size)
    client = falcon.testing.TestClient(create_app(engine, config, executor))
    engine.gate = threading.Event()
    results = []

    def call():
        results.append(post(client, jpeg_body))

    threads = [threading.Thread(target=call) for _ in range(2)]  # one running, one waiting
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while executor.admitted < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        assert executor.admitted == 2
        resp = post(client, jpeg_body)
        assert_error(resp, 503, "busy")
        assert resp.headers["retry-after"] == "3"
        start = time.perf_counter()
        assert client.simulate_get("/ping").status_code == 200
        assert time.perf_counter() - start < 0.5
    finally:
        engine.gate.set()
        for t in threads:
            t.join(10)
    assert [r.status_code for r in results] == [200, 200]


def test_executor_refuses_beyond_capacity():
    executor = InferenceExecutor(workers=1, queue_size=0)
    gate, started = threading.Event(), threading.Event()

    def job():
        started.set()
        gate.wait(10)
        return "done"

    out = []
    t = threading.Thread(target=lambda: out.append(executor.run(job)))
    t.start()
    assert started.wait(10)
    with pytest.raises(QueueFullError):
        executor.run(job)
    gate.set()
    t.join(10)
    assert out == ["done"] and executor.admitted == 0
    assert executor.run(lambda: 42) == 42  # the slot was released
    with pytest.raises(ZeroDivisionError):
        executor.run(lambda: 1 / 0)
    assert executor.admitted == 0  # released on errors too


def test_waiting_longer_than_the_timeout_is_504(engine, jpeg_body):
    client = falcon.testing.TestClient(create_app(engine, ServerConfig(timeout_s=0.2)))
    engine.gate = threading.Event()
    first = threading.Thread(target=post, args=(client, jpeg_body))
    first.start()
    try:
        assert engine.started.wait(10)  # the only worker is busy ...
        assert_error(post(client, jpeg_body), 504, "0.2")  # ... for longer than the timeout
    finally:
        engine.gate.set()
        first.join(10)
    assert len(engine.calls) == 1  # the refused request never reached the engine


# ---- internal errors and logging ---------------------------------------------------------------------


def test_internal_error_is_500_without_details_and_logged(client, engine, jpeg_body, caplog):
    engine.fail = RuntimeError("secret internal detail")
    with caplog.at_level(logging.INFO):
        resp = post(client, jpeg_body)
    assert_error(resp, 500, "internal server error")
    assert "secret" not in resp.text
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "secret internal detail" in str(logged[0].exc_info[1])
    engine.fail = None
    assert post(client, jpeg_body).status_code == 200  # and the server keeps serving


def test_one_structured_log_record_per_request(client, jpeg_body, caplog):
    with caplog.at_level(logging.INFO, logger="server.app"):
        post(client, jpeg_body, accept=PNG)
        post(client, b"", accept=PNG)
        client.simulate_get("/ping")
    records = [r for r in caplog.records if r.name == "server.app"]
    assert len(records) == 3
    ok, bad, ping = (r.fields for r in records)
    assert ok["method"] == "POST" and ok["path"] == "/invocations" and ok["status"] == 200
    assert ok["content_type"] == JPEG and ok["response_type"] == PNG and ok["accept"] == PNG
    assert ok["image_size"] == [160, 120] and ok["detections"] == 2
    assert ok["ms"] >= ok["inference_ms"] >= 0
    assert bad["status"] == 400 and "empty" in bad["error"]
    assert ping["path"] == "/ping" and ping["status"] == 200
    json.dumps([ok, bad, ping])  # JSON-serialisable as logged


# ---- configuration -------------------------------------------------------------------------------------


def test_engine_settings_come_from_the_settings_table_too():
    config = ServerConfig.from_env({"MASKRCNN_BACKEND": "onnxruntime-cpu", "MASKRCNN_THREADS": "6",
                                    "MASKRCNN_CUDA_TF32": "1", "SAGEMAKER_MODEL_SERVER_WORKERS": "2"})
    assert (config.backend, config.threads, config.cuda_tf32) == ("onnxruntime-cpu", 6, True)
    assert config.threads_per_worker(available=2) == 3  # MASKRCNN_THREADS shared by the workers
    defaults = ServerConfig.from_env({})
    assert (defaults.backend, defaults.threads, defaults.cuda_tf32) == ("auto", None, False)
    assert defaults.threads_per_worker(available=2) == 2
    for env, message in [({"MASKRCNN_THREADS": "0"}, "threads must be at least 1"),
                         ({"MASKRCNN_THREADS": "two"}, "MASKRCNN_THREADS='two' is not a valid int"),
                         ({"MASKRCNN_CUDA_TF32": "yes"}, "MASKRCNN_CUDA_TF32='yes' must be 0 or 1")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            ServerConfig.from_env(env)


def test_every_variable_the_settings_table_reads_is_in_its_table_and_the_readme():
    import server.config as config_module

    source = Path(config_module.__file__).read_text()
    table, code = source.split('"""', 2)[1], source.split('"""', 2)[2]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in sorted(set(re.findall(r'"((?:MASKRCNN|SAGEMAKER)_[A-Z0-9_]+)"', code))):
        assert name in table, f"{name} is read but not in server/config.py's table"
        assert name in readme, f"{name} is read but not in the README"


def test_config_from_environment():
    env = {"SAGEMAKER_MODEL_SERVER_WORKERS": "2", "MASKRCNN_QUEUE_SIZE": "3",
           "SAGEMAKER_MODEL_SERVER_TIMEOUT": "30", "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "image/PNG",
           "MASKRCNN_MAX_MEGAPIXELS": "12.5", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "10",
           "MASKRCNN_MAX_BODY_BYTES": "12345"}
    config = ServerConfig.from_env(env)
    assert (config.workers, config.queue_size, config.timeout_s) == (2, 3, 30.0)
    assert config.default_accept == PNG and config.max_megapixels == 12.5
    assert config.max_body_bytes == 12345  # the exact figure wins over the MiB one
    assert config.http_threads == 2 + 3 + 2
    assert ServerConfig.from_env({}) == ServerConfig()


@pytest.mark.parametrize("env, word", [
    ({"SAGEMAKER_MODEL_SERVER_WORKERS": "many"}, "SAGEMAKER_MODEL_SERVER_WORKERS"),
    ({"SAGEMAKER_MODEL_SERVER_WORKERS": "0"}, "workers"),
    ({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}, "default_accept"),
    ({"SAGEMAKER_MAX_PAYLOAD_IN_MB": "nan"}, "SAGEMAKER_MAX_PAYLOAD_IN_MB"),
    ({"MASKRCNN_QUEUE_SIZE": "-1"}, "queue_size"),
])
def test_bad_environment_names_the_setting(env, word):
    with pytest.raises(ValueError, match=word):
        ServerConfig.from_env(env)


# ---- graceful shutdown of a real waitress server (fake engine) -----------------------------------------


def test_serve_until_finishes_in_flight_requests_then_refuses(engine, jpeg_body):
    import waitress

    from server.serving import serve_until

    app = create_app(engine, ServerConfig())
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)
    port = server.effective_port
    stop = threading.Event()
    drained = []
    loop = threading.Thread(target=lambda: drained.append(serve_until(server, stop, grace_s=10, poll_s=0.05)))
    loop.start()
    engine.gate = threading.Event()
    answers = []

    def call():
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=jpeg_body,
                                     headers={"Content-Type": JPEG}, method="POST")
        with urllib.request.urlopen(req, timeout=20) as resp:
            answers.append((resp.status, json.loads(resp.read())))

    client = threading.Thread(target=call)
    client.start()
    assert engine.started.wait(10)  # the request is in flight ...
    stop.set()  # ... when the shutdown begins
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the listening socket closes promptly
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the server kept accepting connections after stop")
    engine.gate.set()
    client.join(20)
    loop.join(20)
    assert answers and answers[0][0] == 200 and answers[0][1]["labels"] == ["person 95%", "cat 61%"]
    assert drained == [True]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)

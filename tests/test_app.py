"""server/app.py: routes, the seed's happy path, bad bodies, the web page, readiness, errors and logs (fake engine)."""

from __future__ import annotations

import io
import json
import logging
import re
import struct
import zlib

import falcon.testing
import numpy as np
import pytest
from PIL import Image

from engine.image_io import decode_image
from server import EngineSlot, ServerConfig, create_app
from server.app import read_body
from server.config import MIB
from server.errors import PayloadTooLarge
from server_fixtures import CA, JSON, JPEG, PNG, FakeEngine, post, assert_error, drawn_image, encode_pil
from server_fixtures import engine, client, jpeg_body  # noqa: F401  (fixtures)


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
                                                 "precision": "fp32", "demo": False,
                                                 "classes": ["person", "cat", "dog", "traffic light"]}
    assert client.simulate_get("/execution-parameters").json == {
        "MaxConcurrentTransforms": 2, "BatchStrategy": "SingleRecord", "MaxPayloadInMB": 20}


def test_ping_lists_the_served_models_own_classes_for_the_class_filter(jpeg_body):
    # A user's model: index 0 is the background whatever its name; "N/A" gaps and a name
    # given twice are offered once or not at all, in the model's order.
    engine = FakeEngine(["background", "pedestrian", "N/A", "cyclist", "__background__", "pedestrian"])
    client = falcon.testing.TestClient(create_app(engine, ServerConfig()))
    classes = client.simulate_get("/ping").json["classes"]
    assert classes == ["pedestrian", "cyclist"]
    # every listed name is one the class filter accepts
    assert post(client, jpeg_body, attrs={"classes": classes}).status_code == 200
    assert engine.calls[-1]["class_ids"] == [1, 3, 5]


def test_ping_does_not_wait_behind_an_inference(engine, jpeg_body):
    import threading

    engine.gate = threading.Event()
    client = falcon.testing.TestClient(create_app(engine, ServerConfig()))
    worker = threading.Thread(target=post, args=(client, jpeg_body))
    worker.start()
    try:
        assert engine.started.wait(10)  # an inference holds the only worker
        ping = client.simulate_get("/ping")
        assert ping.status_code == 200 and ping.json["classes"] == ["person", "cat", "dog", "traffic light"]
    finally:
        engine.gate.set()
        worker.join(10)


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

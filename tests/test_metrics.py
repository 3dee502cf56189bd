"""GET /metrics (server/metrics.py): every count checked against the requests that made it.

In-process (a fake engine, Falcon's test client) for the refusal reasons that need a held
worker or a tiny budget; then the real `serve` process with the demo model, scraped by a
real Prometheus server (tests/prometheus_server.py, Debian's `prometheus`), every value read
back through PromQL and compared with what the test sent and what the server answered.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
import cv2
import falcon.testing
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.server import REPO, http_call, running_server
from helpers import wait_until
from prometheus_server import PrometheusServer, require_prometheus
from server import EngineSlot, ServerConfig, create_app
from server.inference import InferenceExecutor
from server.metrics import REFUSAL_REASONS, STAGES, Metrics
from server_fixtures import CA, JPEG, PNG, FakeEngine, drawn_image, encode_pil, post

SAMPLE = REPO / "server" / "static" / "sample.jpg"  # the demo model's scene: shapes it detects


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label items): value} of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels) -> float:
    """One sample's value (0 when absent, as a counter that never moved)."""
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client) -> str:
    resp = client.simulate_get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=")
    return resp.text


# ---- in-process: the exposition and each refusal reason -----------------------------------------


def test_metrics_is_prometheus_text_with_every_family_and_no_created_series():
    client = falcon.testing.TestClient(create_app(FakeEngine(), ServerConfig()))
    text = scrape(client)
    names = {family.name for family in text_string_to_metric_families(text)}
    for family in ["maskrcnn_requests", "maskrcnn_request_duration_seconds", "maskrcnn_stage_duration_seconds",
                   "maskrcnn_queue_wait_seconds", "maskrcnn_refusals", "maskrcnn_queue_depth",
                   "maskrcnn_inflight_inferences", "maskrcnn_model_info", "maskrcnn_inference_memory_bytes",
                   "maskrcnn_memory_budget_bytes", "process_resident_memory_bytes"]:
        assert family in names, family
    assert "_created" not in text  # CloudWatch would store each as one more metric
    for reason in REFUSAL_REASONS:  # present at 0 from the start, so that rate() works at once
        assert value(text, "maskrcnn_refusals_total", reason=reason) == 0
    assert value(text, "maskrcnn_model_info", model="fake-maskrcnn", backend="fake", precision="fp32",
                 demo="false") == 1
    assert value(text, "maskrcnn_memory_budget_bytes") == ServerConfig().memory_budget_mb * 2**20


def test_requests_are_counted_by_route_template_status_and_response_type():
    client = falcon.testing.TestClient(create_app(FakeEngine(), ServerConfig()))
    body = encode_pil(drawn_image(120, 160), "JPEG")
    for _ in range(3):
        assert post(client, body).status_code == 200
    assert post(client, body, accept=PNG).status_code == 200
    assert post(client, body, path="/endpoints/any-name/invocations").status_code == 200
    assert client.simulate_get("/ping").status_code == 200
    assert client.simulate_get("/no/such/path").status_code == 404
    text = scrape(client)
    assert value(text, "maskrcnn_requests_total", route="/invocations", status="200",
                 response_type="application/json") == 3
    assert value(text, "maskrcnn_requests_total", route="/invocations", status="200", response_type=PNG) == 1
    assert value(text, "maskrcnn_requests_total", route="/endpoints/{endpoint_name}/invocations", status="200",
                 response_type="application/json") == 1
    assert value(text, "maskrcnn_requests_total", route="/ping", status="200", response_type="application/json") == 1
    assert value(text, "maskrcnn_requests_total", route="unmatched", status="404",
                 response_type="application/json") == 1  # one label value for every unknown path
    assert value(text, "maskrcnn_request_duration_seconds_count", route="/invocations") == 4
    # every answered invocation observed each stage it ran (the fake engine reports none of
    # the engine's own, and its masks are stored crops: nothing to paste)
    for stage in ("decode", "encode"):
        assert value(text, "maskrcnn_stage_duration_seconds_count", stage=stage) == 5
    assert value(text, "maskrcnn_stage_duration_seconds_count", stage="paste") == 0
    assert value(text, "maskrcnn_queue_wait_seconds_count") == 5
    assert value(text, "maskrcnn_detections_count") == 5
    assert value(text, "maskrcnn_detections_sum") == 5 * 2  # the fake engine's two instances


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height (its data is never reached)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


@pytest.mark.parametrize("reason, request_kwargs, status", [
    ("payload_too_large", dict(body=b"\xff\xd8" + b"\0" * 2000), 413),
    ("too_many_pixels", dict(body=_png_header_only(3000, 2000), content_type=PNG), 413),
    ("unsupported_media_type", dict(content_type="text/plain"), 415),
    ("not_acceptable", dict(accept="text/csv"), 406),
    ("bad_request", dict(attrs='{"score_threshold": 7}'), 400),
    ("undecodable_image", dict(body=b"\xff\xd8\xff\xe0 not a jpeg"), 400),
])
def test_each_refusal_is_counted_once_under_its_reason(reason, request_kwargs, status):
    config = ServerConfig(max_body_bytes=1000, max_megapixels=4)
    client = falcon.testing.TestClient(create_app(FakeEngine(), config))
    kwargs = {"body": encode_pil(drawn_image(20, 20), "JPEG"), **request_kwargs}
    resp = post(client, kwargs.pop("body"), **kwargs)
    assert resp.status_code == status, resp.text
    text = scrape(client)
    for other in REFUSAL_REASONS:
        assert value(text, "maskrcnn_refusals_total", reason=other) == (other == reason), other


def test_queue_depth_inflight_and_the_busy_refusals():
    """A held worker: one in flight, one waiting, then queue_full; a tiny memory budget
    refuses under memory_budget; draining refuses the waiting one under shutting_down."""
    engine = FakeEngine()
    engine.gate = threading.Event()
    executor = InferenceExecutor(workers=1, queue_size=1)
    # a budget below the idle size: the first request is always taken, a second one is not
    config = ServerConfig(workers=1, queue_size=1, memory_budget_mb=1)
    client = falcon.testing.TestClient(create_app(engine, config, executor))
    body = encode_pil(drawn_image(40, 40), "JPEG")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, client, body)
        wait_until(engine.started.is_set)
        text = scrape(client)
        assert value(text, "maskrcnn_inflight_inferences") == 1
        assert value(text, "maskrcnn_queue_depth") == 0
        assert post(client, body).status_code == 503  # over the memory budget
        assert value(scrape(client), "maskrcnn_refusals_total", reason="memory_budget") == 1
        engine.gate.set()
        assert first.result().status_code == 200
    # the queue, with a budget that admits everything
    engine = FakeEngine()
    engine.gate = threading.Event()
    executor = InferenceExecutor(workers=1, queue_size=1)
    client = falcon.testing.TestClient(create_app(engine, ServerConfig(workers=1, queue_size=1), executor))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, client, body)
        wait_until(engine.started.is_set)
        second = pool.submit(post, client, body)
        wait_until(lambda: executor.waiting == 1)
        text = scrape(client)
        assert value(text, "maskrcnn_inflight_inferences") == 1 and value(text, "maskrcnn_queue_depth") == 1
        assert post(client, body).status_code == 503  # one running, one waiting: full
        executor.drain(0.0)  # a deadline already past: the waiting one is refused at once
        assert second.result().status_code == 503
        engine.gate.set()
        assert first.result().status_code == 200
    text = scrape(client)
    assert value(text, "maskrcnn_refusals_total", reason="queue_full") == 1
    assert value(text, "maskrcnn_refusals_total", reason="shutting_down") == 1
    assert value(text, "maskrcnn_queue_depth") == 0 and value(text, "maskrcnn_inflight_inferences") == 0


def test_model_loading_is_a_refusal_and_model_info_appears_once_loaded():
    slot = EngineSlot()
    client = falcon.testing.TestClient(create_app(slot, ServerConfig()))
    assert client.simulate_get("/ping").status_code == 503
    assert post(client, encode_pil(drawn_image(20, 20), "JPEG")).status_code == 503
    text = scrape(client)
    # the invocation was refused; /ping's 503 is a health check's answer, not a refusal
    assert value(text, "maskrcnn_refusals_total", reason="model_loading") == 1
    assert not [s for s in samples(text) if s[0] == "maskrcnn_model_info"]
    slot.set(FakeEngine(), inference_bytes=12345)
    text = scrape(client)
    assert value(text, "maskrcnn_model_info", model="fake-maskrcnn", backend="fake", precision="fp32",
                 demo="false") == 1
    assert value(text, "maskrcnn_inference_memory_bytes", model="fake-maskrcnn") == 12345


def test_two_apps_in_one_process_keep_their_own_counts():
    a = falcon.testing.TestClient(create_app(FakeEngine(), ServerConfig()))
    b = falcon.testing.TestClient(create_app(FakeEngine(), ServerConfig(), metrics=Metrics()))
    a.simulate_get("/ping")
    assert value(scrape(a), "maskrcnn_requests_total", route="/ping", status="200",
                 response_type="application/json") == 1
    assert value(scrape(b), "maskrcnn_requests_total", route="/ping", status="200",
                 response_type="application/json") == 0


# ---- the real server, scraped by a real Prometheus ---------------------------------------------


@pytest.fixture(scope="module")
def prometheus_binary():
    return require_prometheus()


@pytest.fixture(scope="module")
def metered_server(tmp_path_factory):
    """The demo model behind `serve`, with small limits so that 413s are cheap to provoke."""
    env = {"MASKRCNN_MAX_BODY_BYTES": str(2_000_000), "MASKRCNN_MAX_MEGAPIXELS": "4"}
    yield from running_server(None, tmp_path_factory.mktemp("metered"), extra_env=env)


def query_one(prom: PrometheusServer, expr: str) -> float:
    result = prom.query(expr)
    assert len(result) == 1, (expr, result)
    return result[0]["value"]


def test_a_real_prometheus_scrapes_counts_that_match_the_requests_sent(prometheus_binary, metered_server,
                                                                       tmp_path):
    srv = metered_server
    url = srv.url + "/invocations"
    photo = SAMPLE.read_bytes()
    detections = 0
    statuses = []
    for accept in ["application/json"] * 3 + [PNG] * 2:
        reply = http_call(url, body=photo, headers={"Content-Type": JPEG, "Accept": accept})
        assert reply.status_code == 200
        detections += json.loads(reply.headers[CA])["detections"]
    assert detections > 0  # the sample scene's shapes: the PNG answers paste masks
    big = np.random.default_rng(0).integers(0, 256, (1000, 1000, 3), np.uint8)  # noise: > 2 MB as PNG
    wide = np.zeros((2000, 3000, 3), np.uint8)  # 6 megapixels, a small file
    for body, headers in [
        (photo, {"Content-Type": "text/plain"}),
        (cv2.imencode(".png", big)[1].tobytes(), {"Content-Type": PNG}),
        (cv2.imencode(".png", wide)[1].tobytes(), {"Content-Type": PNG}),
        (b"\xff\xd8\xff\xe0 not a jpeg", {"Content-Type": JPEG}),
        (photo, {"Content-Type": JPEG, CA: '{"max_detections": 0}'}),
        (photo, {"Content-Type": JPEG, "Accept": "text/csv"}),
    ]:
        statuses.append(http_call(url, body=body, headers=headers).status_code)
    assert statuses == [415, 413, 413, 400, 400, 406]
    ping = http_call(srv.url + "/ping", method="GET").json()

    with PrometheusServer([f"127.0.0.1:{srv.port}"], tmp_path) as prom:
        prom.wait_for_scrape(time.time())
        job = '{job="maskrcnn"}'

        def by(expr: str, label: str) -> dict[str, float]:
            return {r["metric"][label]: r["value"] for r in prom.query(expr)}

        answered = by('sum by (response_type) (maskrcnn_requests_total{route="/invocations",status="200"})',
                      "response_type")
        assert answered == {"application/json": 3, PNG: 2}
        refused = by('sum by (status) (maskrcnn_requests_total{route="/invocations",status!="200"})', "status")
        assert refused == {"415": 1, "413": 2, "400": 2, "406": 1}
        reasons = {k: v for k, v in by("maskrcnn_refusals_total", "reason").items() if v}
        assert reasons == {"unsupported_media_type": 1, "payload_too_large": 1, "too_many_pixels": 1,
                           "undecodable_image": 1, "bad_request": 1, "not_acceptable": 1}
        stages = by("maskrcnn_stage_duration_seconds_count", "stage")
        assert stages == {"decode": 5, "preprocess": 5, "dense": 5, "heads": 5, "paste": 2, "encode": 5}
        assert set(stages) == set(STAGES)
        # the stages happen inside the requests, so their time is part of the requests' time
        assert (query_one(prom, "sum(maskrcnn_stage_duration_seconds_sum)")
                <= query_one(prom, 'maskrcnn_request_duration_seconds_sum{route="/invocations"}'))
        assert query_one(prom, 'maskrcnn_request_duration_seconds_count{route="/invocations"}') == 11
        assert query_one(prom, "maskrcnn_detections_sum") == detections
        assert query_one(prom, "maskrcnn_detections_count") == 5
        assert query_one(prom, "maskrcnn_queue_wait_seconds_count") == 5
        assert query_one(prom, "maskrcnn_queue_depth") == 0
        assert query_one(prom, "maskrcnn_inflight_inferences") == 0
        info = prom.query("maskrcnn_model_info")
        assert len(info) == 1 and info[0]["value"] == 1
        labels = info[0]["metric"]
        assert (labels["model"], labels["backend"], labels["precision"], labels["demo"]) == (
            ping["model"], ping["backend"], ping["precision"], "true")
        ready = next(r for r in srv.log_records() if r["message"] == "model ready")
        inference_mb = query_one(prom, "maskrcnn_inference_memory_bytes") / 2**20
        assert inference_mb > 0 and abs(inference_mb - ready["inference_mb"]) <= 0.5
        rss = query_one(prom, f"process_resident_memory_bytes{job}")
        assert abs(rss / 1024 - srv.memory_kb()) < 0.2 * srv.memory_kb()  # it moves a little between reads
        assert query_one(prom, 'up{job="maskrcnn"}') == 1

"""Multi-model mode (server/models.py): SageMaker's model API, routing by target model, and
every model keeping the single-model behaviour.

The registry on its own (a fake loader, so that paging, 409, 507 and concurrent loads are
exact), then the real `serve` process started as AWS's containers are for multi-model
endpoints (SAGEMAKER_MULTI_MODEL=true) with two different real models: the trained demo model
and a small custom one. The built image is tested the same way in tests/test_container.py.
"""

from __future__ import annotations

import json
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import falcon.testing
import pytest

from engine import Engine
from harness.server import REPO, ServerProcess, http_call
from helpers import wait_until
from server import ModelRegistry, ServerConfig, create_app
from server.inference import MemoryBudget
from server.responses import detections_to_json
from server.negotiation import RequestOptions
from server_fixtures import CA, JPEG, PNG, FakeEngine
from test_metrics import scrape, value

SAMPLE = REPO / "server" / "static" / "sample.jpg"
TARGET = "X-Amzn-SageMaker-Target-Model"
MB = 2**20


# ---- the registry, with a fake loader ----------------------------------------------------------


class FakeLoads:
    """load(path, config) -> (FakeEngine, inference_bytes); `gate` holds a load until set."""

    def __init__(self):
        self.gate: threading.Event | None = None
        self.started = threading.Event()
        self.count = 0

    def __call__(self, path, config):
        self.count += 1
        self.started.set()
        if self.gate is not None:
            self.gate.wait(30)
        return FakeEngine(), 10 * MB


def registry_app(tmp_path, budget_mb=100_000, measure=lambda: 50 * MB, load=None):
    """A multi-model app on a FakeLoads loader; model directories under tmp_path."""
    load = load or FakeLoads()
    registry = ModelRegistry(ServerConfig(multi_model=True), load=load, measure=measure)
    app = create_app(registry, ServerConfig(multi_model=True, memory_budget_mb=budget_mb))
    return falcon.testing.TestClient(app), registry, load


def model_dir(tmp_path, name: str, weights_mb: float = 1) -> str:
    path = tmp_path / name
    path.mkdir()
    (path / "model.json").write_text("{}")  # the fake loader never reads it
    (path / "dense.onnx").write_bytes(b"\0" * int(weights_mb * MB))
    return str(path)


def load(client, name, url):
    return client.simulate_post("/models", json={"model_name": name, "url": url})


def test_list_pages_through_every_model_once_in_name_order(tmp_path):
    client, _, _ = registry_app(tmp_path)
    names = [f"model-{i}" for i in (5, 1, 6, 0, 3, 2, 4)]
    for name in names:
        assert load(client, name, model_dir(tmp_path, name)).status_code == 200
    seen, token, pages = [], None, 0
    while True:
        params = {"limit": 3, **({"next_page_token": token} if token else {})}
        resp = client.simulate_get("/models", params=params)
        assert resp.status_code == 200
        seen += [m["modelName"] for m in resp.json["models"]]
        pages += 1
        token = resp.json.get("nextPageToken")
        if token is None:
            break
    assert seen == sorted(names) and pages == 3
    assert client.simulate_get("/models").json["models"][0] == {"modelName": "model-0",
                                                                 "modelUrl": str(tmp_path / "model-0")}
    assert "nextPageToken" not in client.simulate_get("/models").json  # one page holds them all
    for params in ({"limit": 0}, {"limit": "x"}, {"next_page_token": "%%%"}):
        assert client.simulate_get("/models", params=params).status_code == 400


@pytest.mark.parametrize("body, fragment", [
    (b"not json", "JSON"),
    (b"[]", "JSON object"),
    (b'{"model_name": "a"}', "JSON object"),
    (b'{"model_name": "", "url": "/tmp"}', "model_name"),
    (b'{"model_name": "a/b", "url": "/tmp"}', "model_name"),
    (b'{"model_name": 7, "url": "/tmp"}', "model_name"),
    (b'{"model_name": "a", "url": "/no/such/dir"}', "not a directory"),
])
def test_bad_load_requests_are_400_and_load_nothing(tmp_path, body, fragment):
    client, registry, loads = registry_app(tmp_path)
    resp = client.simulate_post("/models", body=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and fragment in resp.json["error"]
    assert len(registry) == 0 and loads.count == 0


def test_a_model_directory_that_does_not_load_is_a_400_naming_the_file(tmp_path):
    registry = ModelRegistry(ServerConfig(multi_model=True))  # the real loader
    client = falcon.testing.TestClient(create_app(registry, ServerConfig(multi_model=True)))
    empty = tmp_path / "empty"
    empty.mkdir()
    resp = load(client, "empty", str(empty))
    assert resp.status_code == 400 and "no model.json" in resp.json["error"]
    resp = load(client, "broken", model_dir(tmp_path, "broken"))  # a model.json, but no graphs
    assert resp.status_code == 400 and "cannot load model 'broken'" in resp.json["error"]
    assert client.simulate_get("/models").json == {"models": []}
    text = scrape(client)
    assert value(text, "maskrcnn_model_loads_total", outcome="failed") == 1


def test_409_for_a_loaded_name_and_for_one_being_loaded(tmp_path):
    client, _, loads = registry_app(tmp_path)
    url = model_dir(tmp_path, "a")
    loads.gate = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(load, client, "a", url)
        wait_until(loads.started.is_set)
        resp = load(client, "a", url)
        assert resp.status_code == 409 and "being loaded" in resp.json["error"]
        loads.gate.set()
        assert first.result().status_code == 200
    resp = load(client, "a", url)
    assert resp.status_code == 409 and "already loaded" in resp.json["error"]
    assert loads.count == 1


def test_507_when_a_load_would_pass_the_memory_budget_and_room_after_an_unload(tmp_path):
    resident = [300 * MB]
    client, registry, _ = registry_app(tmp_path, budget_mb=400, measure=lambda: resident[0])
    # the first model always loads: with nothing loaded there is nothing SageMaker could unload
    assert load(client, "a", model_dir(tmp_path, "a", weights_mb=100)).status_code == 200
    # 300 MB in use + 2 x 60 MB of weights + the 10 MB one inference of "a" needs > 400 MB
    resp = load(client, "b", model_dir(tmp_path, "b", weights_mb=60))
    assert resp.status_code == 507, resp.text
    assert "400 MB memory budget" in resp.json["error"] and len(registry) == 1
    assert registry.estimated_bytes(tmp_path / "b") == 2 * 60 * MB + 10 * MB
    assert client.simulate_delete("/models/a").status_code == 200
    resident[0] = 200 * MB  # what unloading gave back
    assert load(client, "b", str(tmp_path / "b")).status_code == 200
    text = scrape(client)
    assert value(text, "maskrcnn_refusals_total", reason="insufficient_memory") == 1
    assert value(text, "maskrcnn_model_loads_total", outcome="insufficient_memory") == 1
    assert value(text, "maskrcnn_model_loads_total", outcome="loaded") == 2


def test_describe_unload_and_the_metrics_follow_what_is_loaded(tmp_path):
    client, _, _ = registry_app(tmp_path)
    assert load(client, "a", model_dir(tmp_path, "a")).status_code == 200
    assert load(client, "b", model_dir(tmp_path, "b")).status_code == 200
    described = client.simulate_get("/models/a").json
    assert described["modelName"] == "a" and described["modelUrl"] == str(tmp_path / "a")
    assert described["backend"] == "fake" and described["inferenceMemoryBytes"] == 10 * MB
    text = scrape(client)
    for name in ("a", "b"):
        assert value(text, "maskrcnn_model_info", model=name, backend="fake", precision="fp32", demo="false") == 1
    resp = client.simulate_delete("/models/a")
    assert resp.status_code == 200 and resp.json["modelName"] == "a"
    assert client.simulate_get("/models/a").status_code == 404
    assert client.simulate_delete("/models/a").status_code == 404
    text = scrape(client)
    assert value(text, "maskrcnn_model_info", model="a", backend="fake", precision="fp32", demo="false") == 0
    assert value(text, "maskrcnn_model_info", model="b", backend="fake", precision="fp32", demo="false") == 1
    assert client.simulate_get("/ping").json == {"status": "ok", "multi_model": True, "models": 1}


def test_invocations_name_their_model_by_header_or_route(tmp_path):
    from server_fixtures import drawn_image, encode_pil

    client, _, _ = registry_app(tmp_path)
    body = encode_pil(drawn_image(60, 80), "JPEG")
    assert client.simulate_get("/ping").status_code == 200  # healthy before any model is loaded
    assert load(client, "a", model_dir(tmp_path, "a")).status_code == 200
    ok = {"Content-Type": JPEG}
    for path, headers in [("/models/a/invoke", ok), ("/invocations", {**ok, TARGET: "a"}),
                          ("/invocations", {**ok, TARGET: "a.tar.gz"}),  # TargetModel as the archive's name
                          ("/endpoints/ep/invocations", {**ok, TARGET: "a"})]:
        resp = client.simulate_post(path, body=body, headers=headers)
        assert resp.status_code == 200, (path, resp.text)
        assert json.loads(resp.headers[CA])["model"] == "a"
    resp = client.simulate_post("/invocations", body=body, headers=ok)
    assert resp.status_code == 400 and TARGET in resp.json["error"]
    for path, headers in [("/models/b/invoke", ok), ("/invocations", {**ok, TARGET: "b"})]:
        resp = client.simulate_post(path, body=body, headers=headers)
        assert resp.status_code == 404 and "not loaded" in resp.json["error"]
    assert client.simulate_get("/models/a/invoke").status_code == 405


def test_single_model_mode_has_no_model_api(tmp_path):
    client = falcon.testing.TestClient(create_app(FakeEngine(), ServerConfig()))
    assert client.simulate_get("/models").status_code == 404
    assert client.simulate_post("/models", json={"model_name": "a", "url": str(tmp_path)}).status_code == 404


def test_the_environment_switch_is_read_the_way_aws_containers_read_it():
    for raw in ("true", "TRUE", "True", " true "):
        config = ServerConfig.from_env({"SAGEMAKER_MULTI_MODEL": raw})
        assert config.multi_model
    assert not ServerConfig.from_env({"SAGEMAKER_MULTI_MODEL": "false"}).multi_model
    assert not ServerConfig.from_env({}).multi_model
    with pytest.raises(ValueError, match="SAGEMAKER_MULTI_MODEL"):
        ServerConfig.from_env({"SAGEMAKER_MULTI_MODEL": "yes"})
    # the budget then covers the container's memory, unless set
    assert ServerConfig.from_env({"SAGEMAKER_MULTI_MODEL": "true"}).memory_budget_mb > 1800
    assert ServerConfig.from_env({"SAGEMAKER_MULTI_MODEL": "true",
                                  "MASKRCNN_MEMORY_BUDGET_MB": "900"}).memory_budget_mb == 900


def test_container_memory_reads_the_cgroup_limit(tmp_path):
    from server.config import container_memory_bytes

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree: 1 kB\n")
    (tmp_path / "memory.max").write_text("2147483648\n")
    assert container_memory_bytes(str(tmp_path), str(meminfo)) == 2 * 1024**3
    (tmp_path / "memory.max").write_text("max\n")
    assert container_memory_bytes(str(tmp_path), str(meminfo)) == 16000000 * 1024


# ---- the real server, two real models ----------------------------------------------------------


@pytest.fixture(scope="module")
def mme_server(tmp_path_factory):
    srv = ServerProcess(None, tmp_path_factory.mktemp("mme") / "server.log",
                        extra_env={"SAGEMAKER_MULTI_MODEL": "true", "MASKRCNN_MEMORY_BUDGET_MB": "8000"})
    srv.wait_ready()
    yield srv
    srv.kill()


def post_model(srv, name, url):
    return http_call(srv.url + "/models", body=json.dumps({"model_name": name, "url": str(url)}).encode(),
                     headers={"Content-Type": "application/json"})


def expected_json(model_dir, photo: bytes) -> dict:
    """What the single-model engine answers for this photo (the default options)."""
    from engine.image_io import decode_image

    options = RequestOptions()
    engine = Engine.load(model_dir)
    det = engine.predict(decode_image(photo), score_threshold=options.score_threshold,
                         max_detections=options.max_detections)
    return detections_to_json(det, options)


def test_two_models_load_answer_concurrently_as_themselves_and_unload(mme_server, demo_model_dir,
                                                                      small_model_dir):
    srv = mme_server
    photo = SAMPLE.read_bytes()
    assert http_call(srv.url + "/ping", method="GET").json()["models"] == 0
    for name, url in [("shapes", demo_model_dir), ("small", small_model_dir)]:
        reply = post_model(srv, name, url)
        assert reply.status_code == 200, reply.content
        assert reply.json()["modelName"] == name and reply.json()["inferenceMemoryBytes"] > 0
    assert post_model(srv, "shapes", demo_model_dir).status_code == 409
    listed = http_call(srv.url + "/models", method="GET").json()["models"]
    assert listed == [{"modelName": "shapes", "modelUrl": str(demo_model_dir)},
                      {"modelName": "small", "modelUrl": str(small_model_dir)}]

    def invoke(name):
        return http_call(f"{srv.url}/models/{name}/invoke", body=photo,
                         headers={"Content-Type": JPEG, TARGET: f"{name}.tar.gz"})

    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(invoke, ["shapes", "small"] * 3))
    assert all(r.status_code == 200 for r in replies), [r.content[:200] for r in replies]
    expected = {"shapes": expected_json(demo_model_dir, photo), "small": expected_json(small_model_dir, photo)}
    for name, reply in zip(["shapes", "small"] * 3, replies):
        assert reply.json() == expected[name], name
    assert expected["shapes"]["labels"]  # the demo model finds the sample's shapes

    # the full single-model behaviour on a model's route
    url = f"{srv.url}/models/shapes/invoke"
    png = http_call(url, body=photo, headers={"Content-Type": JPEG, "Accept": PNG})
    assert png.status_code == 200 and png.headers["Content-Type"] == PNG and png.content.startswith(b"\x89PNG")
    some = http_call(url, body=photo, headers={"Content-Type": JPEG,
                                               CA: json.dumps({"classes": ["circle"], "include": ["scores"]})})
    assert some.status_code == 200 and all(label.startswith("circle") for label in some.json()["labels"])
    assert http_call(url, body=photo, headers={"Content-Type": "text/plain"}).status_code == 415
    assert http_call(url, body=photo, headers={"Content-Type": JPEG, CA: "{"}).status_code == 400

    # boto3's TargetModel, against the local server
    import boto3

    runtime = boto3.client("sagemaker-runtime", endpoint_url=srv.url, region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
    answer = runtime.invoke_endpoint(EndpointName="my-mme", TargetModel="small", Body=photo, ContentType=JPEG)
    assert json.loads(answer["Body"].read()) == expected["small"]

    assert http_call(srv.url + "/models/small", method="DELETE").status_code == 200
    gone = http_call(f"{srv.url}/models/small/invoke", body=photo, headers={"Content-Type": JPEG})
    assert gone.status_code == 404 and "not loaded" in gone.json()["error"]
    assert invoke("shapes").status_code == 200  # the other one is untouched
    records = [r for r in srv.log_records() if r.get("path") == "/models/shapes/invoke" and r["status"] == 200]
    assert records and records[0]["target_model"] == "shapes.tar.gz"  # the header is logged


def test_507_from_the_real_server_under_a_small_memory_budget(tmp_path, demo_model_dir, small_model_dir):
    srv = ServerProcess(None, tmp_path / "server.log",
                        extra_env={"SAGEMAKER_MULTI_MODEL": "true", "MASKRCNN_MEMORY_BUDGET_MB": "64"})
    try:
        srv.wait_ready()
        assert post_model(srv, "shapes", demo_model_dir).status_code == 200
        refused = post_model(srv, "small", small_model_dir)
        assert refused.status_code == 507 and "memory budget" in refused.json()["error"]
        assert http_call(srv.url + "/models/shapes", method="DELETE").status_code == 200
        # SageMaker's answer to a 507: unload, then load again (the first model always loads)
        assert post_model(srv, "small", small_model_dir).status_code == 200
    finally:
        srv.kill()


def test_sigterm_drains_multi_model_invocations(tmp_path, demo_model_dir):
    srv = ServerProcess(None, tmp_path / "server.log", extra_env={"SAGEMAKER_MULTI_MODEL": "true"})
    try:
        srv.wait_ready()
        assert post_model(srv, "shapes", demo_model_dir).status_code == 200
        photo = SAMPLE.read_bytes()
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(http_call, f"{srv.url}/models/shapes/invoke", "POST", photo,
                                   {"Content-Type": JPEG, "Accept": PNG}) for _ in range(4)]
            wait_until(lambda: any('"/models/shapes/invoke"' in line for line in srv.log().splitlines()), 30)
            srv.proc.send_signal(signal.SIGTERM)
            statuses = [f.result().status_code for f in futures]
        assert set(statuses) <= {200, 503} and 200 in statuses
        assert srv.proc.wait(30) == 0
    finally:
        srv.kill()


def test_metrics_of_a_multi_model_server_name_each_model(mme_server, demo_model_dir):
    srv = mme_server
    reply = post_model(srv, "shapes-2", demo_model_dir)
    assert reply.status_code == 200
    text = http_call(srv.url + "/metrics", method="GET").content.decode()
    info = [line for line in text.splitlines() if line.startswith("maskrcnn_model_info{")]
    assert any('model="shapes-2"' in line for line in info)
    assert value(text, "maskrcnn_model_loads_total", outcome="loaded") >= 1
    assert value(text, "maskrcnn_model_load_seconds_count") == value(text, "maskrcnn_model_loads_total",
                                                                      outcome="loaded")
    assert http_call(srv.url + "/models/shapes-2", method="DELETE").status_code == 200
    text = http_call(srv.url + "/metrics", method="GET").content.decode()
    assert 'model="shapes-2"' not in text


def test_memory_budget_object_is_the_apps(tmp_path):
    """The registry checks loads against the same budget the invocations are admitted by."""
    client, registry, _ = registry_app(tmp_path, budget_mb=1234)
    assert isinstance(registry.budget, MemoryBudget) and registry.budget.budget_bytes == 1234 * MB
    assert value(scrape(client), "maskrcnn_memory_budget_bytes") == 1234 * MB


def test_a_model_flag_in_multi_model_mode_is_a_one_line_error(demo_model_dir):
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "server", "--model-dir", str(demo_model_dir), "--port", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO), "SAGEMAKER_MULTI_MODEL": "true"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("serve: error: with SAGEMAKER_MULTI_MODEL=true")

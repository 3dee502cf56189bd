"""The built image, run the way SageMaker runs it: `docker run IMAGE serve`, the unpacked
model.tar.gz read-only at /opt/ml/model, then real clients (boto3, the SageMaker Python SDK's
local mode, which hosts a bring-your-own container as the service does, and plain HTTP).

The image is $MASKRCNN_TEST_IMAGE (.ci/run builds it with docker/build-image.sh), else it is
built here with that script. Without a usable Docker engine every test skips with the
reason, except where $MASKRCNN_REQUIRE_DOCKER=1 (CI): there a missing engine is a failure.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from engine.image_io import decode_image
from harness.server import REPO, free_port, http_call
from server_fixtures import encode_pil

IMAGE_ENV = "MASKRCNN_TEST_IMAGE"
REQUIRE_ENV = "MASKRCNN_REQUIRE_DOCKER"
DEFAULT_TEST_IMAGE = "maskrcnn-serve:test"
# SageMaker fails an endpoint whose /ping has not passed 4 minutes after the container started.
SAGEMAKER_STARTUP_WINDOW_S = 240.0
# ... and sends SIGKILL 30 s after SIGTERM.
SAGEMAKER_STOP_WINDOW_S = 30.0
ENDPOINT = "my-instance-segmentation"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # the SDK v2 is what this file tests


def docker(*args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def docker_unavailable() -> str | None:
    """Why Docker cannot be used here, or None when it can."""
    if shutil.which("docker") is None:
        return "docker is not installed (Debian: apt-get install docker.io; .ci/run does)"
    try:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if info.returncode != 0:
        return f"no Docker engine reachable (start dockerd as root): {info.stderr.strip()[:300]}"
    return None


@pytest.fixture(scope="session")
def image() -> str:
    """The serving image's tag: $MASKRCNN_TEST_IMAGE, else built by docker/build-image.sh."""
    reason = docker_unavailable()
    if reason:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
        pytest.skip(reason)
    tag = os.environ.get(IMAGE_ENV)
    if tag:
        if docker("image", "inspect", tag, check=False).returncode != 0:
            pytest.fail(f"{IMAGE_ENV}={tag} names no local image")
        return tag
    build = subprocess.run([str(REPO / "docker" / "build-image.sh"), DEFAULT_TEST_IMAGE], cwd=REPO,
                           capture_output=True, text=True, timeout=1800)
    if build.returncode != 0:
        pytest.fail(f"docker/build-image.sh failed:\n{(build.stdout + build.stderr)[-4000:]}")
    return DEFAULT_TEST_IMAGE


class Container:
    """One `docker run -d IMAGE serve` with its port published on a free loopback port."""

    def __init__(self, image: str, model_dir: Path | None = None, env: dict[str, str] | None = None,
                 port: int = 8080, mounts: dict[str, Path] | None = None):
        self.name = f"maskrcnn-test-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        args = ["run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:{port}"]
        for key, value in (env or {}).items():
            args += ["-e", f"{key}={value}"]
        if model_dir is not None:  # SageMaker mounts the unpacked model.tar.gz read-only
            args += ["-v", f"{model_dir}:/opt/ml/model:ro"]
        for target, source in (mounts or {}).items():  # container path -> host path, read-only
            args += ["-v", f"{source}:{target}:ro"]
        self.started = time.monotonic()
        docker(*args, image, "serve")
        self.url = f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def state(self) -> dict:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.name).stdout)

    def wait_ready(self, deadline_s: float = SAGEMAKER_STARTUP_WINDOW_S) -> float:
        """Poll /ping (2 s timeout each, as SageMaker does) until 200; seconds since `docker run`."""
        while time.monotonic() - self.started < deadline_s:
            if not self.state()["Running"]:
                pytest.fail(f"container exited ({self.state()['ExitCode']}):\n{self.logs()}")
            try:
                status, _ = self.get("/ping")
            except OSError:  # not listening yet, or docker-proxy's connection reset
                status = None
            if status == 200:
                return time.monotonic() - self.started
            time.sleep(0.1)  # a polling interval, bounded by the deadline
        pytest.fail(f"/ping not 200 within {deadline_s:.0f} s of start:\n{self.logs()}")

    def logs(self) -> str:
        result = docker("logs", self.name, check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


@pytest.fixture
def run_container(image):
    """run_container(model_dir=None, env=None, port=8080, mounts=None): a started container,
    removed after."""
    started = []

    def run(model_dir=None, env=None, port=8080, mounts=None) -> Container:
        container = Container(image, model_dir, env, port, mounts)
        started.append(container)
        return container

    yield run
    for container in started:
        container.remove()


def package(model_dir: Path, output: Path) -> Path:
    """model.tar.gz through the deploy tool, as a user would make it."""
    result = subprocess.run([sys.executable, "-m", "deploy", "package", str(model_dir), "--output", str(output)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return output


def unpack_like_sagemaker(tarball: Path, target: Path) -> Path:
    """What SageMaker does with ModelDataUrl: extract into the directory it mounts."""
    target.mkdir(parents=True)
    with tarfile.open(tarball) as tar:
        tar.extractall(target, filter="data")
    target.chmod(0o755)  # the server runs as an unprivileged user
    return target


@pytest.fixture(scope="module")
def r50_model_dir(tmp_path_factory) -> Path:
    """An R50-FPN v1 model directory from `build_engine.py --weights random` (the real CLI)."""
    out = tmp_path_factory.mktemp("r50") / "random-r50"
    result = subprocess.run([sys.executable, "build_engine.py", "--weights", "random", "--seed", "0",
                             "--output", str(out)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def mounted_models(r50_model_dir, demo_model_dir, tmp_path_factory) -> dict[str, Path]:
    """{"r50": dir, "demo": dir}: each packaged as model.tar.gz, then unpacked as SageMaker does."""
    root = tmp_path_factory.mktemp("opt-ml")
    return {name: unpack_like_sagemaker(package(src, root / f"{name}.tar.gz"), root / name)
            for name, src in [("r50", r50_model_dir), ("demo", demo_model_dir)]}


@pytest.fixture(scope="module")
def photo_jpeg() -> bytes:
    from skimage import data

    return encode_pil(data.astronaut(), "JPEG", quality=90)  # 512x512


def runtime_client(url: str):
    import boto3

    return boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def assert_seed_json(result: dict, class_names: list[str], width: int, height: int) -> None:
    """The seed's JSON shape: {"labels": ["name NN%", ...], "boxes": [[x1, y1, x2, y2], ...]}."""
    assert set(result) == {"labels", "boxes"}
    assert len(result["labels"]) == len(result["boxes"])
    for label, box in zip(result["labels"], result["boxes"]):
        name, score = label.rsplit(" ", 1)
        assert name in class_names and score.endswith("%") and 0 <= int(score[:-1]) <= 100
        x1, y1, x2, y2 = box
        assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height


def test_image_holds_no_torch_and_runs_as_a_non_root_user(image):
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["Entrypoint"] == ["serve"]  # exec form: the server itself gets SIGTERM
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.accept-bind-to-port"] == "true"
    assert config["Labels"]["com.amazonaws.sagemaker.capabilities.multi-models"] == "true"
    probe = docker("run", "--rm", "--entrypoint", "python3", image, "-c",
                   "import importlib.util as u, os; print(os.getuid(), u.find_spec('torch') is None, "
                   "u.find_spec('torchvision') is None)").stdout.split()
    assert probe[0] != "0" and probe[1:] == ["True", "True"]


@pytest.mark.parametrize("model", ["r50", "demo"])
def test_serve_an_unpacked_model_tarball_read_only(run_container, mounted_models, model, photo_jpeg):
    """The seed's two boto3 calls and a PNG answer, on /opt/ml/model mounted read-only."""
    from engine import Engine

    model_dir = mounted_models[model]
    container = run_container(model_dir)
    container.wait_ready()
    status, body = container.get("/ping")
    engine = Engine.load(model_dir)
    assert status == 200 and json.loads(body)["model"] == engine.model_name

    runtime = runtime_client(container.url)
    response = runtime.invoke_endpoint(EndpointName=ENDPOINT, Accept="image/jpeg",
                                       ContentType="image/jpeg", Body=bytearray(photo_jpeg))
    assert response["ContentType"] == "image/jpeg"
    assert decode_image(response["Body"].read()).shape == (512, 512, 3)

    response = runtime.invoke_endpoint(EndpointName=ENDPOINT, ContentType="image/jpeg",
                                       Body=bytearray(photo_jpeg), CustomAttributes='{"response_type": "json"}')
    result = json.loads(response["Body"].read())
    assert_seed_json(result, engine.class_names, 512, 512)
    # The container answers what the engine in this process answers on the same bytes.
    det = engine.predict(decode_image(photo_jpeg))
    assert len(det) > 0
    assert result["labels"] == [f"{n} {round(float(s) * 100)}%" for n, s in zip(det.labels, det.scores)]
    np.testing.assert_allclose(np.array(result["boxes"]).reshape(-1, 4), det.boxes, atol=1e-2)

    from skimage import data

    png = encode_pil(data.coffee(), "PNG")  # 600x400
    response = runtime.invoke_endpoint(EndpointName=ENDPOINT, Accept="image/png", ContentType="image/png",
                                       Body=bytearray(png))
    assert response["ContentType"] == "image/png"
    assert decode_image(response["Body"].read()).shape == (400, 600, 3)


def test_no_model_serves_the_bundled_demo_model(run_container, photo_jpeg):
    container = run_container()
    container.wait_ready()
    status, body = container.get("/ping")
    assert status == 200 and json.loads(body)["model"] == "shapes-demo"
    response = runtime_client(container.url).invoke_endpoint(
        EndpointName=ENDPOINT, ContentType="image/jpeg", Body=bytearray(photo_jpeg),
        CustomAttributes='{"response_type": "json"}')
    assert_seed_json(json.loads(response["Body"].read()), ["circle", "square", "triangle"], 512, 512)


def test_bind_to_port_and_batch_environment(run_container, mounted_models):
    """SAGEMAKER_BIND_TO_PORT moves the server; Batch Transform's variables reach
    /execution-parameters in the spelling both SageMaker and the SDK's local mode accept."""
    container = run_container(mounted_models["demo"], port=9123, env={
        "SAGEMAKER_BIND_TO_PORT": "9123", "SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "12",
        "SAGEMAKER_BATCH_STRATEGY": "SINGLE_RECORD", "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "1"})
    container.wait_ready()
    status, body = container.get("/execution-parameters")
    assert status == 200
    assert json.loads(body) == {"MaxConcurrentTransforms": 1, "BatchStrategy": "SingleRecord",
                                "MaxPayloadInMB": 12}
    # Nothing listens on 8080 inside the container any more.
    probe = docker("exec", container.name, "python3", "-c",
                   "import socket; s = socket.socket(); print(s.connect_ex(('127.0.0.1', 8080)))")
    assert probe.stdout.strip() != "0"


def test_docker_stop_finishes_requests_in_flight_and_exits_0(run_container, mounted_models, photo_jpeg):
    """SIGTERM with one request still arriving and one being inferred: both answer 200 and
    the container exits 0 by itself, inside SageMaker's 30 s."""
    container = run_container(mounted_models["r50"])
    container.wait_ready()
    headers = {"Content-Type": "image/jpeg", "Accept": "application/json", "Content-Length": str(len(photo_jpeg))}

    def open_request(body: bytes) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", container.port, timeout=120)
        conn.putrequest("POST", "/invocations")
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders()
        conn.send(body)
        return conn

    inferring = open_request(photo_jpeg)  # whole request sent: it is being inferred
    arriving = open_request(photo_jpeg[:-1])  # all but the last byte: still being received
    stop = {}

    def docker_stop():
        start = time.monotonic()
        stop["result"] = docker("stop", "-t", str(int(SAGEMAKER_STOP_WINDOW_S)), container.name, check=False,
                                timeout=SAGEMAKER_STOP_WINDOW_S + 30)
        stop["seconds"] = time.monotonic() - start

    stopper = threading.Thread(target=docker_stop)
    stopper.start()
    deadline = time.monotonic() + 20
    while "received SIGTERM" not in container.logs():
        assert time.monotonic() < deadline, f"no SIGTERM seen in the log:\n{container.logs()}"
        time.sleep(0.05)
    arriving.send(photo_jpeg[-1:])
    for conn in (inferring, arriving):
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        assert set(json.loads(resp.read())) == {"labels", "boxes"}
        conn.close()
    stopper.join(SAGEMAKER_STOP_WINDOW_S + 40)
    state = container.state()
    assert stop["result"].returncode == 0 and not state["Running"]
    assert state["ExitCode"] == 0 and not state["OOMKilled"], container.logs()  # 137 would be SIGKILL
    assert stop["seconds"] < SAGEMAKER_STOP_WINDOW_S


# --- Multi-model endpoints ---------------------------------------------------------------------

# SageMaker unpacks each target model under /opt/ml/models/<model_name>/model, model_name
# being its own opaque identifier, and tells the container with POST /models.
MULTI_MODEL_ROOT = "/opt/ml/models"
OPAQUE_NAMES = {"r50": "5d0f3a7c1b2e", "demo": "9e4c2b8a7f61"}


def load_model(container, key: str):
    name = OPAQUE_NAMES[key]
    return http_call(container.url + "/models", body=json.dumps(
        {"model_name": name, "url": f"{MULTI_MODEL_ROOT}/{name}/model"}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"})


@pytest.fixture(scope="module")
def multi_model_mounts(mounted_models) -> dict[str, Path]:
    return {f"{MULTI_MODEL_ROOT}/{OPAQUE_NAMES[key]}/model": path for key, path in mounted_models.items()}


def test_multi_model_endpoint_loads_lists_invokes_both_and_unloads(run_container, mounted_models,
                                                                   multi_model_mounts, photo_jpeg):
    """The container started as SageMaker starts a multi-model one: two different models
    loaded, listed, invoked at once (each answering as the engine does here), boto3's
    TargetModel, then unloaded: 404 after."""
    from engine import Engine

    container = run_container(env={"SAGEMAKER_MULTI_MODEL": "true"}, mounts=multi_model_mounts)
    container.wait_ready()  # healthy with no model loaded
    assert json.loads(container.get("/ping")[1]) == {"status": "ok", "multi_model": True, "models": 0}
    for key in ("r50", "demo"):
        reply = load_model(container, key)
        assert reply.status_code == 200, reply.content
    assert load_model(container, "demo").status_code == 409
    status, body = container.get("/models")
    assert status == 200 and sorted(m["modelName"] for m in json.loads(body)["models"]) == sorted(OPAQUE_NAMES.values())

    expected = {}
    for key in ("r50", "demo"):
        det = Engine.load(mounted_models[key]).predict(decode_image(photo_jpeg))
        expected[key] = [f"{n} {round(float(s) * 100)}%" for n, s in zip(det.labels, det.scores)]

    def invoke(key: str):  # as SageMaker does: the opaque name in the path, TargetModel in the header
        return http_call(f"{container.url}/models/{OPAQUE_NAMES[key]}/invoke", body=photo_jpeg,
                         headers={"Content-Type": "image/jpeg", "X-Amzn-SageMaker-Target-Model": f"{key}.tar.gz"})

    with ThreadPoolExecutor(4) as pool:
        keys = ["r50", "demo"] * 2
        replies = list(pool.map(invoke, keys))
    for key, reply in zip(keys, replies):
        assert reply.status_code == 200, reply.content
        assert reply.json()["labels"] == expected[key], key
    answer = runtime_client(container.url).invoke_endpoint(
        EndpointName=ENDPOINT, TargetModel=OPAQUE_NAMES["demo"], ContentType="image/jpeg",
        Accept="image/png", Body=bytearray(photo_jpeg))
    assert answer["ContentType"] == "image/png" and decode_image(answer["Body"].read()).shape == (512, 512, 3)

    assert http_call(f"{container.url}/models/{OPAQUE_NAMES['r50']}", method="DELETE").status_code == 200
    assert invoke("r50").status_code == 404
    assert container.get(f"/models/{OPAQUE_NAMES['r50']}")[0] == 404
    assert invoke("demo").status_code == 200


def test_multi_model_507_under_a_small_memory_budget(run_container, multi_model_mounts):
    container = run_container(env={"SAGEMAKER_MULTI_MODEL": "true", "MASKRCNN_MEMORY_BUDGET_MB": "200"},
                              mounts=multi_model_mounts)
    container.wait_ready()
    assert load_model(container, "demo").status_code == 200  # the first model always loads
    refused = load_model(container, "r50")
    assert refused.status_code == 507 and "memory budget" in refused.json()["error"]
    status, body = container.get("/metrics")
    assert status == 200 and b'maskrcnn_refusals_total{reason="insufficient_memory"} 1.0' in body


# --- The SageMaker Python SDK v2's local mode -------------------------------------------------


@pytest.fixture
def local_session(tmp_path, monkeypatch):
    """A LocalSession on a free port, with no way to reach AWS (telemetry off, and every AWS
    endpoint pointed at a closed loopback port, so a stray call fails here, not on the internet)."""
    pytest.importorskip("sagemaker", reason="the SageMaker Python SDK v2 comes with the test extra")
    if shutil.which("docker-compose") is None and docker("compose", "version", check=False).returncode != 0:
        pytest.fail("the SDK's local mode needs docker compose (Debian: apt-get install docker-compose)")
    config = tmp_path / "sagemaker-config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")
    for key, value in {"SAGEMAKER_USER_CONFIG_OVERRIDE": str(config), "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    from sagemaker.local import LocalSession

    session = LocalSession()
    root = tmp_path / "container-root"
    root.mkdir()
    session.config = {"local": {"local_code": True, "serving_port": free_port(), "container_root": str(root)}}
    return session


@pytest.fixture
def sdk_model(image, local_session, demo_model_dir, tmp_path):
    from sagemaker.model import Model

    # Local mode unpacks model.tar.gz beside itself and mounts that folder as /opt/ml/model:
    # it must be readable by the image's unprivileged user (pytest's tmp_path is 0700).
    folder = tmp_path / "model-data"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    tarball = package(demo_model_dir, folder / "model.tar.gz")
    return Model(image_uri=image, model_data=f"file://{tarball}", role="arn:aws:iam::111111111111:role/SageMakerRole",
                 sagemaker_session=local_session)


def test_sdk_local_mode_endpoint_answers_the_seed_examples(sdk_model, local_session, photo_jpeg):
    name = f"maskrcnn-local-{uuid.uuid4().hex[:8]}"
    sdk_model.deploy(initial_instance_count=1, instance_type="local", endpoint_name=name)
    try:
        runtime = local_session.sagemaker_runtime_client
        payload = bytearray(photo_jpeg)
        response = runtime.invoke_endpoint(EndpointName=name, Accept="image/jpeg", ContentType="image/jpeg",
                                           Body=payload)
        assert decode_image(response["Body"].read()).shape == (512, 512, 3)
        response = runtime.invoke_endpoint(EndpointName=name, ContentType="image/jpeg", Body=payload,
                                           CustomAttributes='{"response_type": "json"}')
        assert_seed_json(json.loads(response["Body"].read()), ["circle", "square", "triangle"], 512, 512)
    finally:
        local_session.delete_endpoint(name)


@pytest.fixture
def photo_dir(tmp_path) -> tuple[Path, dict[str, tuple[int, int]]]:
    """A folder of JPEG photos as a transform job's input, and each one's (height, width)."""
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    sizes = {}
    for name in ("astronaut", "coffee", "chelsea"):
        image = getattr(data, name)()
        (folder / f"{name}.jpg").write_bytes(encode_pil(image, "JPEG", quality=90))
        sizes[f"{name}.jpg"] = image.shape[:2]
    return folder, sizes


@pytest.mark.parametrize("accept", [None, "image/jpeg"])
def test_sdk_local_mode_batch_transform_writes_one_answer_per_photo(sdk_model, photo_dir, tmp_path, accept):
    """model.transformer(...).transform("file://DIR", content_type="image/jpeg"), no strategy
    given: the job takes BatchStrategy from /execution-parameters."""
    folder, sizes = photo_dir
    out = tmp_path / "transform-out"
    transformer = sdk_model.transformer(instance_count=1, instance_type="local", output_path=f"file://{out}",
                                        accept=accept)
    transformer.transform(f"file://{folder}", content_type="image/jpeg", wait=True, logs=False)
    outputs = sorted(p.name for p in out.iterdir())
    assert outputs == sorted(f"{name}.out" for name in sizes)
    for name, (h, w) in sizes.items():
        body = (out / f"{name}.out").read_bytes()
        if accept is None:  # no Accept header: the JSON default
            assert_seed_json(json.loads(body), ["circle", "square", "triangle"], w, h)
        else:
            assert decode_image(body).shape == (h, w, 3)

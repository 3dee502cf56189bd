"""The deploy tool (`maskrcnn-sagemaker`, package `deploy/`) against moto as a real HTTP server.

moto runs as its own process (`tests/moto_with_update_endpoint.py`: moto's server plus the
UpdateEndpoint moto lacks) on a free loopback port; the CLI runs as a real subprocess
(`python -m deploy`) with boto3 pointed at moto by AWS_ENDPOINT_URL and dummy credentials,
and every resource it makes is read back with describe_* through boto3. `invoke` talks to
the real `serve` process (the demo model) through AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME.
tests/test_deploy_names.py, test_deploy_multi_model.py and test_deploy_async.py use the
fixtures and helpers of this module, each with a moto of its own.

What moto (5.2) lacks, and how the tests get by:
- UpdateEndpoint: not implemented (its server answers 500); the launcher adds it.
- CreateEndpointConfig's MetricsConfig: accepted and dropped (describe_endpoint_config
  answers no MetricsConfig). The test reads the request the CLI sent from moto's request
  recorder (`/moto-api/recorder/...`, written to MOTO_RECORDER_FILEPATH) instead.
- CreateModel: creating a Model whose name exists replaces it, where SageMaker refuses
  ("Cannot create already existing model"); the tests check that the CLI never asks.
- sagemaker-runtime InvokeEndpoint: answers a canned body for any endpoint name, and 500s
  on a body that is not UTF-8 (it decodes every request body), so it cannot take a photo
  nor say "no such endpoint"; the real server takes the photos, and a stub that answers as
  SageMaker Runtime does stands in for the missing endpoint.
- Transform jobs are Completed at once and write nothing: the test puts the `.out` objects
  the job would have written, to check that they are counted.
- Endpoints are InService at once (no Creating/Updating/Failed): the waiting loop is
  tested on its own, with a fake describe and clock.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from harness.server import REPO, ServerProcess, free_port
from helpers import photo
from engine.model_directory.directory import ModelDir

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

from botocore.exceptions import ClientError, ParamValidationError  # noqa: E402

from deploy import packaging  # noqa: E402
from deploy.aws import failure_line  # noqa: E402
from deploy.errors import DeployError  # noqa: E402
from deploy.waiting import wait_for_status  # noqa: E402

REGION = "us-east-1"
BUCKET = "maskrcnn-deploy-tests"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/maskrcnn-serve:test"
DEMO_FILES = ["box_head.onnx", "dense.onnx", "mask_head.onnx", "model.json"]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
PREFIX = "maskrcnn-sagemaker: error: "


# ---- moto, the CLI, and what they answer -------------------------------------------------

class MotoServer:
    """moto's server in a child process on a free port, polled for readiness with a deadline."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")
        self.log_path = log_path
        # where moto's request recorder writes, once a test starts it (see `recorded`)
        env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(log_path.with_name("recording.jsonl"))}
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "moto_with_update_endpoint.py"), "-H", "127.0.0.1",
             "-p", str(self.port)], stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, deadline_s: float = 30.0) -> None:
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"moto exited with {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/moto-api/")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                time.sleep(0.05)  # a polling interval, bounded by the deadline
        pytest.fail(f"moto did not answer within {deadline_s} s:\n{self.log_path.read_text()}")

    def post(self, path: str, body: bytes = b"") -> bytes:
        """POST to moto's own API (`/moto-api/...`); its answer's body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            assert answer.status < 300, (path, answer.status)
            return answer.read()
        finally:
            conn.close()

    def recorded(self, run) -> list[dict]:
        """The requests moto received while `run()` ran, in order (the recorder's log, reset
        first): {"method", "path", "target": X-Amz-Target or None, "body": a JSON request's
        body, else None}."""
        self.post("/moto-api/recorder/reset-recording")
        self.post("/moto-api/recorder/start-recording")
        try:
            run()
        finally:
            self.post("/moto-api/recorder/stop-recording")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", "/moto-api/recorder/download-recording")
            lines = conn.getresponse().read().decode().splitlines()
        finally:
            conn.close()
        requests = []
        for line in filter(None, lines):
            entry = json.loads(line)
            target, body = entry["headers"].get("X-Amz-Target"), None
            if target:
                body = base64.b64decode(entry["body"]) if entry.get("body_encoded") else entry["body"]
                body = json.loads(body or "{}")
            requests.append({"method": entry["method"], "path": urlsplit(entry["url"]).path, "target": target,
                             "body": body})
        return requests

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def clean_env(**extra: str | None) -> dict:
    """os.environ without any AWS setting (and no ~/.aws), plus `extra` (None removes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/nonexistent/aws-config", AWS_SHARED_CREDENTIALS_FILE="/nonexistent/aws-credentials",
               AWS_EC2_METADATA_DISABLED="true", PYTHONPATH=str(REPO))
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


@pytest.fixture(scope="module")
def aws_env(moto):
    return clean_env(**CREDENTIALS, AWS_DEFAULT_REGION=REGION, AWS_ENDPOINT_URL=moto.url)


@pytest.fixture(scope="module")
def clients(moto):
    """boto3 clients on moto, for setting up and reading back (never through os.environ)."""
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)

    def client(service: str):
        return session.client(service, endpoint_url=moto.url)

    return {name: client(name) for name in ("sagemaker", "s3", "iam", "application-autoscaling", "cloudwatch")}


@pytest.fixture(scope="module")
def role_arn(clients):
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "sagemaker.amazonaws.com"}}]}
    return clients["iam"].create_role(RoleName="maskrcnn-sagemaker-test",
                                      AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]


@pytest.fixture(scope="module")
def bucket(clients):
    clients["s3"].create_bucket(Bucket=BUCKET)
    return BUCKET


def cli(*args: str, env: dict, cwd: Path = REPO, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m deploy ARGS` as a child process; `check` asserts exit status 0."""
    result = subprocess.run([sys.executable, "-m", "deploy", *map(str, args)], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
        assert result.stderr == ""
    return result


def assert_one_error(result: subprocess.CompletedProcess, status: int, *fragments: str) -> str:
    """Exit `status`, exactly one line on stderr (the error), no traceback anywhere."""
    assert result.returncode == status, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def fields(stdout: str) -> dict[str, str]:
    """The `key: value` lines the CLI prints at the end."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line and not line.startswith(" "))


def deploy_args(name: str, role: str, *more: str) -> list[str]:
    return ["deploy", "--endpoint-name", name, "--image-uri", IMAGE, "--role", role, *more]


def packaging_bytes(model_dir: Path) -> bytes:
    """What `package` writes for model_dir (deterministic, so equal to any upload of it)."""
    with tempfile.TemporaryDirectory() as tmp:
        return packaging.package_model_dir(model_dir, Path(tmp) / "m.tar.gz").path.read_bytes()


# ---- package ------------------------------------------------------------------------------

def test_package_writes_a_deterministic_root_level_tarball(tmp_path, demo_model_dir):
    first, second = tmp_path / "a" / "model.tar.gz", tmp_path / "b" / "model.tar.gz"
    first.parent.mkdir()
    second.parent.mkdir()
    result = cli("package", demo_model_dir, "--output", first, env=clean_env())
    assert str(first) in result.stdout and "4 files" in result.stdout
    for name in DEMO_FILES:
        assert name in result.stdout
    packaging.package_model_dir(demo_model_dir, second)
    assert first.read_bytes() == second.read_bytes()  # the same directory, the same bytes
    assert sorted(p.name for p in first.parent.iterdir()) == ["model.tar.gz"]  # no temp file left

    raw = first.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip, no timestamp in its header
    with gzip.open(first) as gz:
        assert gz.read(1)  # the gzip stream is whole
    with tarfile.open(first) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == DEMO_FILES  # at the root, sorted, no "./"
        for m in members:
            assert m.isreg() and m.mode == 0o644 and (m.uid, m.gid) == (0, 0)
            assert m.mtime == packaging.FIXED_MTIME and m.uname == m.gname == ""
        tar.extractall(tmp_path / "unpacked", filter="data")
    unpacked = ModelDir.open(tmp_path / "unpacked", verify_checksums=True)
    assert unpacked.config.to_json() == json.loads((demo_model_dir / "model.json").read_text())


def test_package_leaves_out_pycache_and_links_that_leave_the_directory(tmp_path, demo_model_dir):
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    (model / "__pycache__").mkdir()
    (model / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (model / "notes").mkdir()
    (model / "notes" / "README.txt").write_text("how this model was built\n")
    (tmp_path / "outside.txt").write_text("not part of the model\n")
    (model / "outside-link.txt").symlink_to(tmp_path / "outside.txt")
    (model / "inside-link.json").symlink_to(model / "model.json")

    package = packaging.package_model_dir(model, tmp_path / "model.tar.gz")
    assert package.skipped == ("outside-link.txt (link to outside the directory)",)
    with tarfile.open(package.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == sorted(DEMO_FILES + ["inside-link.json", "notes", "notes/README.txt"])
    assert members["notes"].isdir() and members["notes"].mode == 0o755
    assert members["inside-link.json"].isreg()  # read through: no symlinks in the archive

    (model / "dense.onnx").unlink()  # a graph that is a link to outside cannot be packaged
    shutil.copy(demo_model_dir / "dense.onnx", tmp_path / "dense.onnx")
    (model / "dense.onnx").symlink_to(tmp_path / "dense.onnx")
    with pytest.raises(DeployError, match="dense.onnx would be left out"):
        packaging.package_model_dir(model, tmp_path / "other.tar.gz")
    assert not (tmp_path / "other.tar.gz").exists()


@pytest.mark.parametrize("damage", ["no directory", "no model.json", "corrupt graph"])
def test_package_refuses_a_bad_model_dir(tmp_path, demo_model_dir, damage):
    model = tmp_path / "model"
    if damage != "no directory":
        shutil.copytree(demo_model_dir, model)
    if damage == "no model.json":
        (model / "model.json").unlink()
    if damage == "corrupt graph":
        graph = bytearray((model / "dense.onnx").read_bytes())
        graph[len(graph) // 2] ^= 0xFF
        (model / "dense.onnx").write_bytes(bytes(graph))
    result = cli("package", model, "--output", tmp_path / "model.tar.gz", env=clean_env(), check=False)
    expected = {"no directory": "not found", "no model.json": "missing", "corrupt graph": "dense.onnx is corrupt"}
    assert_one_error(result, 2, expected[damage])
    assert not (tmp_path / "model.tar.gz").exists()


def test_without_boto3_package_works_and_aws_commands_say_how_to_install(tmp_path, demo_model_dir):
    """Without boto3, `package` still works and the AWS commands say how to install it."""
    def without_boto3(*args):
        code = ("import sys; sys.modules['boto3'] = None; from deploy.cli import main; "
                f"raise SystemExit(main({[str(a) for a in args]!r}))")
        return subprocess.run([sys.executable, "-c", code], env=clean_env(), cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    assert without_boto3("package", demo_model_dir, "-o", tmp_path / "m.tar.gz").returncode == 0
    result = without_boto3("delete", "--endpoint-name", "anything")
    line = assert_one_error(result, 2)
    assert line == PREFIX + "boto3 is not installed: pip install 'maskrcnn-serve[deploy]'"


# ---- deploy -------------------------------------------------------------------------------

def test_deploy_from_a_model_dir_creates_model_config_and_endpoint(aws_env, clients, role_arn, bucket,
                                                                   demo_model_dir):
    sm = clients["sagemaker"]
    result = cli(*deploy_args("demo-instances", role_arn, "--model-dir", demo_model_dir, "--bucket", bucket,
                              "--instance-type", "ml.m5.large", "--instance-count", "2",
                              "--startup-timeout", "600", "--model-name", "demo"), env=aws_env)
    out = fields(result.stdout)
    assert "endpoint demo-instances: InService" in result.stdout  # a progress line

    model_name = out["model"]
    assert model_name == "demo"  # --model-name is the Model's exact name
    key = f"maskrcnn-serve/{model_name}/model.tar.gz"
    head = clients["s3"].head_object(Bucket=bucket, Key=key)
    package = packaging_bytes(demo_model_dir)
    assert head["ContentLength"] == len(package)
    assert head["Metadata"] == {"sha256": hashlib.sha256(package).hexdigest()}  # for a later reuse check

    model = sm.describe_model(ModelName=model_name)
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == f"s3://{bucket}/{key}"
    assert model["ExecutionRoleArn"] == role_arn

    (variant,) = sm.describe_endpoint_config(EndpointConfigName=out["config"])["ProductionVariants"]
    assert variant["VariantName"] == "AllTraffic" and variant["ModelName"] == model_name
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.large", 2)
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 600

    endpoint = sm.describe_endpoint(EndpointName="demo-instances")
    assert endpoint["EndpointStatus"] == "InService"
    assert endpoint["EndpointConfigName"] == out["config"]
    assert (out["endpoint"], out["arn"]) == ("demo-instances", endpoint["EndpointArn"])


def test_deploy_updates_an_existing_endpoint_and_manages_autoscaling(aws_env, clients, role_arn, bucket):
    sm, aas = clients["sagemaker"], clients["application-autoscaling"]
    data = f"s3://{bucket}/prebuilt/model.tar.gz"
    rid = "endpoint/demo-scaled/variant/AllTraffic"
    first = fields(cli(*deploy_args("demo-scaled", role_arn, "--model-data", data, "--instance-type", "ml.m5.large"),
                       env=aws_env).stdout)

    second_run = cli(*deploy_args("demo-scaled", role_arn, "--model-data", data, "--instance-type", "ml.m5.xlarge",
                                  "--min-instances", "2", "--max-instances", "5", "--target-invocations", "50"),
                     env=aws_env)
    second = fields(second_run.stdout)
    assert "updating endpoint demo-scaled" in second_run.stdout
    assert second["config"] != first["config"] and second["model"] != first["model"]
    endpoint = sm.describe_endpoint(EndpointName="demo-scaled")
    assert endpoint["EndpointConfigName"] == second["config"] and endpoint["EndpointArn"] == first["arn"]
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=second["config"])["ProductionVariants"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"]) == ("ml.m5.xlarge", 2)  # min-instances
    sm.describe_endpoint_config(EndpointConfigName=first["config"])  # the old config stays, to roll back to

    (target,) = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 5)
    (policy,) = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert tracking["TargetValue"] == 50.0
    assert tracking["ScaleInCooldown"] > 0 and tracking["ScaleOutCooldown"] > 0

    third = cli(*deploy_args("demo-scaled", role_arn, "--model-data", data, "--instance-type", "ml.m5.large"),
                env=aws_env)
    assert "removed scalable target" in third.stdout  # an update without scaling flags drops it
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"] == []
    assert sm.describe_endpoint(EndpointName="demo-scaled")["EndpointConfigName"] == fields(third.stdout)["config"]


def test_deploy_serverless(aws_env, clients, role_arn, bucket):
    result = cli(*deploy_args("demo-serverless", role_arn, "--model-data", f"s3://{bucket}/m/model.tar.gz",
                              "--instance-type", "ml.m5.large",  # given, and not used
                              "--serverless-memory", "3072", "--serverless-max-concurrency", "8", "--no-wait"),
                 env=aws_env)
    out = fields(result.stdout)
    (variant,) = clients["sagemaker"].describe_endpoint_config(EndpointConfigName=out["config"])["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 8}
    assert "InstanceType" not in variant and "InitialInstanceCount" not in variant
    assert clients["sagemaker"].describe_endpoint(EndpointName="demo-serverless")["EndpointConfigName"] == out["config"]
    assert out["endpoint"] == "demo-serverless" and out["arn"].endswith(":endpoint/demo-serverless")


@pytest.mark.parametrize("flag, sent", [("--detailed-metrics", True), ("--no-detailed-metrics", False), (None, None)])
def test_deploy_detailed_metrics_sets_the_metrics_config(moto, aws_env, clients, role_arn, bucket, flag, sent):
    """--detailed-metrics sets MetricsConfig.EnableDetailedObservability; without either flag
    the request leaves MetricsConfig out (the service's default). moto drops the field, so
    the request is read from moto's recorder."""
    name = {True: "demo-metrics-on", False: "demo-metrics-off", None: "demo-metrics-default"}[sent]
    args = deploy_args(name, role_arn, "--model-data", f"s3://{bucket}/m/model.tar.gz", "--instance-type",
                       "ml.m5.large", "--no-wait", *([flag] if flag else []))
    results = []
    requests = moto.recorded(lambda: results.append(cli(*args, env=aws_env)))
    config_name = fields(results[0].stdout)["config"]
    (create,) = [r["body"] for r in requests if r["target"] == "SageMaker.CreateEndpointConfig"]
    assert create["EndpointConfigName"] == config_name
    if sent is None:
        assert "MetricsConfig" not in create
    else:
        assert create["MetricsConfig"] == {"EnableDetailedObservability": sent}
    described = clients["sagemaker"].describe_endpoint_config(EndpointConfigName=config_name)
    assert described.get("MetricsConfig", create.get("MetricsConfig")) == create.get("MetricsConfig")

@pytest.mark.parametrize("flags, fragment", [
    (["--model-dir", "demo/model", "--instance-type", "ml.m5.large"], "--model-dir needs --bucket"),
    (["--model-dir", "demo/model", "--model-data", "s3://b/k", "--instance-type", "ml.m5.large"], "not allowed with"),
    (["--model-data", "s3://b/k"], "give --instance-type (or --serverless-memory"),
    (["--model-data", "s3://b/k", "--serverless-memory", "2048", "--min-instances", "1", "--max-instances", "2"],
     "does not apply to a serverless endpoint"),
    (["--model-data", "s3://b/k", "--serverless-memory", "1500"], "is not one of"),
    (["--model-data", "s3://b/k", "--serverless-memory", "2048", "--serverless-max-concurrency", "201"], "not in 1..200"),
    (["--model-data", "s3://b/k", "--instance-type", "ml.m5.large", "--min-instances", "1"], "both --min-instances"),
    (["--model-data", "s3://b/k", "--instance-type", "ml.m5.large", "--min-instances", "3", "--max-instances", "2"],
     "above --max-instances"),
    (["--model-data", "s3://b/k", "--instance-type", "ml.m5.large", "--target-invocations", "10"],
     "--target-invocations needs"),
    (["--model-data", "s3://b/k", "--instance-type", "ml.m5.large", "--min-instances", "1", "--max-instances", "2",
      "--no-wait"], "drop --no-wait"),
    (["--model-data", "s3://b/k", "--instance-type", "ml.m5.large", "--startup-timeout", "30"], "not in 60..3600"),
    (["--model-data", "b/k", "--instance-type", "ml.m5.large"], "not an s3:// URI"),
    (["--model-data", "s3://b/k", "--instance-type", "ml.m5.large", "--min-instances", "0", "--max-instances", "2"],
     "--min-instances 0 needs --async-output"),
    (["--model-data", "s3://b/k", "--instance-type", "ml.m5.large", "--model-name", "my_model"],
     "'my_model' is not a SageMaker name"),
    (["--model-data", "s3://b/k", "--instance-type", "ml.m5.large", "--model-name=model-"], "not a SageMaker name"),
    (["--model-data", "s3://b/k", "--instance-type", "ml.m5.large", "--model-name", "m" * 64],
     "is 64 characters; SageMaker allows at most 63"),
    (["--model-data", "s3://b/k", "--instance-type", "ml.m5.large", "--detailed-metrics", "--no-detailed-metrics",
      "--bucket", "b"], "--bucket and --prefix go with --model-dir, not --model-data"),
])
def test_deploy_refuses_bad_flag_combinations(flags, fragment):
    result = cli(*deploy_args("x", "arn:aws:iam::123456789012:role/r", *flags), env=clean_env(), check=False)
    assert_one_error(result, 2, fragment)


def test_deploy_to_a_missing_bucket_fails_in_one_line(aws_env, clients, role_arn, demo_model_dir):
    result = cli(*deploy_args("demo-nobucket", role_arn, "--model-dir", demo_model_dir, "--bucket",
                              "no-such-bucket-here", "--instance-type", "ml.m5.large"), env=aws_env, check=False)
    assert_one_error(result, 1, "PutObject: NoSuchBucket:")
    models = clients["sagemaker"].list_models()["Models"]  # (moto ignores NameContains here)
    assert not [m for m in models if m["ModelName"].startswith("demo-nobucket")]  # nothing half made


def test_deploy_reports_a_parameter_botocore_refuses(aws_env):
    result = cli(*deploy_args("demo-badrole", "", "--model-data", "s3://b/k", "--instance-type", "ml.m5.large"),
                 env=aws_env, check=False)
    assert_one_error(result, 1, "CreateModel: ParamValidationError:", "ExecutionRoleArn")


# ---- transform ----------------------------------------------------------------------------

def test_transform_job_parameters_and_summary(aws_env, clients, role_arn, bucket):
    sm, s3 = clients["sagemaker"], clients["s3"]
    sm.create_model(ModelName="demo-batch", ExecutionRoleArn=role_arn,
                    PrimaryContainer={"Image": IMAGE, "ModelDataUrl": f"s3://{bucket}/m/model.tar.gz"})
    # moto completes the job at once and writes nothing: put what the job would have written
    for key in ("out/a.png.out", "out/b.png.out", "out/notes.txt"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"{}")
    result = cli("transform", "--model-name", "demo-batch", "--input", f"s3://{bucket}/in/",
                 "--output", f"s3://{bucket}/out/", "--instance-type", "ml.m5.xlarge", "--instance-count", "2",
                 "--content-type", "image/png", "--accept", "image/png", "--job-name", "demo-batch-1", env=aws_env)
    out = fields(result.stdout)
    assert (out["status"], out["job"], out["output"]) == ("Completed", "demo-batch-1", f"s3://{bucket}/out/")
    assert out["outputs"].startswith("2 ") and out["duration"].endswith(" s")

    job = sm.describe_transform_job(TransformJobName="demo-batch-1")
    assert job["ModelName"] == "demo-batch"
    assert job["BatchStrategy"] == "SingleRecord" and job["MaxPayloadInMB"] == 6
    assert job["TransformInput"]["DataSource"]["S3DataSource"] == {"S3DataType": "S3Prefix",
                                                                   "S3Uri": f"s3://{bucket}/in/"}
    assert (job["TransformInput"]["ContentType"], job["TransformInput"]["SplitType"]) == ("image/png", "None")
    assert job["TransformOutput"] == {"S3OutputPath": f"s3://{bucket}/out/", "Accept": "image/png",
                                      "AssembleWith": "None"}
    assert job["TransformResources"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2}

    started = fields(cli("transform", "--model-name", "demo-batch", "--input", f"s3://{bucket}/in/", "--output",
                         f"s3://{bucket}/out2/", "--instance-type", "ml.m5.large", "--no-wait", env=aws_env).stdout)
    assert started["job"].startswith("demo-batch-")  # the model name plus a timestamp
    job = sm.describe_transform_job(TransformJobName=started["job"])
    assert job["TransformInput"]["ContentType"] == "image/jpeg"  # the defaults
    assert job["TransformOutput"]["Accept"] == "application/json"
    assert job["TransformResources"] == {"InstanceType": "ml.m5.large", "InstanceCount": 1}


# ---- delete -------------------------------------------------------------------------------

def test_delete_removes_endpoint_config_models_and_autoscaling(aws_env, clients, role_arn, bucket):
    sm, aas = clients["sagemaker"], clients["application-autoscaling"]
    out = fields(cli(*deploy_args("demo-gone", role_arn, "--model-data", f"s3://{bucket}/m/model.tar.gz",
                                  "--instance-type", "ml.m5.large", "--min-instances", "1", "--max-instances", "2"),
                     env=aws_env).stdout)
    result = cli("delete", "--endpoint-name", "demo-gone", env=aws_env)
    for what in ("scaling policy", "scalable target", "endpoint demo-gone", f"endpoint config {out['config']}",
                 f"model {out['model']}"):
        assert f"deleted {what}" in result.stdout
    for describe in (lambda: sm.describe_endpoint(EndpointName="demo-gone"),
                     lambda: sm.describe_endpoint_config(EndpointConfigName=out["config"]),
                     lambda: sm.describe_model(ModelName=out["model"])):
        with pytest.raises(ClientError):
            describe()
    rid = "endpoint/demo-gone/variant/AllTraffic"
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"] == []


def test_delete_keep_model(aws_env, clients, role_arn, bucket):
    sm = clients["sagemaker"]
    out = fields(cli(*deploy_args("demo-keep", role_arn, "--model-data", f"s3://{bucket}/m/model.tar.gz",
                                  "--instance-type", "ml.m5.large"), env=aws_env).stdout)
    result = cli("delete", "--endpoint-name", "demo-keep", "--keep-model", env=aws_env)
    assert f"kept model {out['model']}" in result.stdout and "scal" not in result.stdout  # none registered
    assert sm.describe_model(ModelName=out["model"])["ModelName"] == out["model"]
    with pytest.raises(ClientError):
        sm.describe_endpoint(EndpointName="demo-keep")


def test_delete_a_missing_endpoint(aws_env):
    result = cli("delete", "--endpoint-name", "no-such-endpoint", env=aws_env, check=False)
    assert_one_error(result, 1, "DescribeEndpoint: ValidationException:", "no-such-endpoint")


# ---- the AWS settings -----------------------------------------------------------------------

@pytest.mark.parametrize("setting", ["no credentials", "no region", "no connection", "unknown profile"])
def test_aws_settings_errors_are_one_line(moto, setting):
    env = {"no credentials": clean_env(AWS_DEFAULT_REGION=REGION, AWS_ENDPOINT_URL=moto.url),
           "no region": clean_env(**CREDENTIALS, AWS_ENDPOINT_URL=moto.url),
           "no connection": clean_env(**CREDENTIALS, AWS_DEFAULT_REGION=REGION, AWS_MAX_ATTEMPTS="1",
                                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"),
           "unknown profile": clean_env(AWS_PROFILE="nobody", AWS_ENDPOINT_URL=moto.url)}[setting]
    expected = {"no credentials": "DescribeEndpoint: NoCredentialsError:",
                "no region": "sagemaker client: NoRegionError:",
                "no connection": "DescribeEndpoint: EndpointConnectionError:",
                "unknown profile": "session: ProfileNotFound:"}[setting]
    result = cli("delete", "--endpoint-name", "anything", env=env, check=False)
    assert_one_error(result, 1, expected)


def test_region_flag_and_aws_region_are_honoured(moto, clients, role_arn):
    """--region beats the environment; AWS_REGION is read too (botocore reads only AWS_DEFAULT_REGION)."""
    base = clean_env(**CREDENTIALS, AWS_ENDPOINT_URL=moto.url)
    flags = ["--model-data", "s3://b/k/model.tar.gz", "--instance-type", "ml.m5.large", "--no-wait"]
    arn = fields(cli("--region", "eu-west-1", *deploy_args("demo-eu", role_arn, *flags), env=base).stdout)["arn"]
    assert arn.startswith("arn:aws:sagemaker:eu-west-1:")
    arn = fields(cli(*deploy_args("demo-eu2", role_arn, *flags), env={**base, "AWS_REGION": "eu-west-2"}).stdout)["arn"]
    assert arn.startswith("arn:aws:sagemaker:eu-west-2:")


def test_failure_line_is_one_line():
    error = ParamValidationError(report="Invalid type for parameter A\nInvalid length for parameter B")
    assert failure_line(error, "CreateModel") == (
        "CreateModel: ParamValidationError: Parameter validation failed: Invalid type for parameter A "
        "Invalid length for parameter B")
    throttled = ClientError({"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "CreateEndpoint")
    assert failure_line(throttled) == "CreateEndpoint: ThrottlingException: Rate exceeded"


# ---- waiting --------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def wait_on(statuses: list[dict], deadline_s: float = 100.0):
    clock, lines, answers = FakeClock(), [], iter(statuses)
    result = wait_for_status(lambda: next(answers), what="endpoint e", status_key="EndpointStatus",
                             done={"InService"}, failed={"Failed"}, deadline_s=deadline_s, interval_s=10,
                             echo=lines.append, sleep=clock.sleep, clock=clock)
    return result, lines, clock


def test_wait_prints_status_changes_and_returns_when_done():
    result, lines, clock = wait_on([{"EndpointStatus": s} for s in ("Creating", "Creating", "InService")])
    assert result == {"EndpointStatus": "InService"}
    assert lines == ["[    0 s] endpoint e: Creating", "[   20 s] endpoint e: InService"]
    assert clock.sleeps == [10, 10]


def test_wait_fails_with_the_failure_reason_or_at_the_deadline():
    with pytest.raises(DeployError, match="endpoint e is Failed: ping did not pass"):
        wait_on([{"EndpointStatus": "Creating"}, {"EndpointStatus": "Failed", "FailureReason": "ping did not pass"}])
    with pytest.raises(DeployError, match=r"still Creating after 30 s \(waited at most 35 s\)"):
        wait_on([{"EndpointStatus": "Creating"}] * 10, deadline_s=35)


# ---- invoke ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    """The real server with the demo model: what boto3's invoke_endpoint reaches through
    AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME (it answers POST /endpoints/{name}/invocations)."""
    server = ServerProcess(None, tmp_path_factory.mktemp("serve") / "serve.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    rgb = photo("astronaut")
    folder = tmp_path_factory.mktemp("photos")
    for suffix in (".jpg", ".png"):
        ok, data = cv2.imencode(suffix, rgb[..., ::-1])  # OpenCV writes BGR
        assert ok
        (folder / f"astronaut{suffix}").write_bytes(data.tobytes())
    return folder, rgb.shape


def test_invoke_the_real_server_json_and_images(serve, photos, tmp_path):
    folder, shape = photos
    env = clean_env(**CREDENTIALS, AWS_DEFAULT_REGION=REGION, AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=serve.url)
    result = cli("invoke", "--endpoint-name", "demo", folder / "astronaut.jpg",
                 "--custom-attributes", '{"include": ["scores"], "score_threshold": 0.05}', env=env, cwd=tmp_path)
    answer = json.loads(result.stdout)
    assert set(answer) >= {"labels", "boxes", "scores"}  # the custom attributes reached the server
    assert len(answer["labels"]) == len(answer["boxes"]) == len(answer["scores"])

    result = cli("invoke", "--endpoint-name", "demo", folder / "astronaut.jpg", "--accept", "image/jpeg",
                 env=env, cwd=tmp_path)
    written = tmp_path / "astronaut.segmented.jpg"  # the default name, in the current directory
    assert str(written.name) in result.stdout and "image/jpeg" in result.stdout
    assert written.read_bytes()[:3] == b"\xff\xd8\xff"
    assert cv2.imdecode(np.frombuffer(written.read_bytes(), np.uint8), cv2.IMREAD_COLOR).shape == shape

    out = tmp_path / "answer.png"
    cli("invoke", "--endpoint-name", "demo", folder / "astronaut.png", "--accept", "image/png", "--out", out, env=env)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class RuntimeStub:
    """An HTTP server standing in for SageMaker Runtime where moto cannot: it records each
    request (path, headers, body) and answers with `answer(path, headers)` -> (status,
    headers, body)."""

    def __init__(self, answer):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                stub.requests.append((self.path, dict(self.headers), body))
                status, headers, reply = answer(self.path, self.headers)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(reply))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.requests: list[tuple[str, dict, bytes]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _MissingEndpoint(BaseHTTPRequestHandler):
    """SageMaker Runtime's answer for an endpoint that does not exist (moto has none)."""

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.path, self.headers.get("Content-Type"), self.headers.get("Accept")))
        body = json.dumps({"Message": f"Endpoint {self.path.split('/')[2]} of account 123456789012 not found."})
        self.send_response(400)
        self.send_header("x-amzn-ErrorType", "ValidationError:http://internal.amazon.com/coral/com.amazon.sagemaker/")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


def test_invoke_a_missing_endpoint_and_bad_photos(photos, tmp_path):
    folder, _ = photos
    stub = ThreadingHTTPServer(("127.0.0.1", 0), _MissingEndpoint)
    stub.requests = []
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        env = clean_env(**CREDENTIALS, AWS_DEFAULT_REGION=REGION,
                        AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=f"http://127.0.0.1:{stub.server_address[1]}")
        result = cli("invoke", "--endpoint-name", "nope", folder / "astronaut.png", env=env, check=False)
        assert_one_error(result, 1, "InvokeEndpoint: ValidationError: Endpoint nope of account")
        assert stub.requests == [("/endpoints/nope/invocations", "image/png", "application/json")]
    finally:
        stub.shutdown()
        stub.server_close()

    (tmp_path / "notes.txt").write_text("not a photo")
    (tmp_path / "huge.jpg").write_bytes(b"\xff\xd8\xff" + bytes(6 * 1024 * 1024))
    for args, fragment in [((tmp_path / "notes.txt",), "neither a JPEG nor a PNG"),
                           ((tmp_path / "missing.jpg",), "cannot read"),
                           ((tmp_path / "huge.jpg",), "at most 6,291,456"),
                           ((folder / "astronaut.png", "--custom-attributes", "[1]"), "must be a JSON object")]:
        result = cli("invoke", "--endpoint-name", "nope", *args, env=env, check=False)
        assert_one_error(result, 2, fragment)


def test_the_console_script(tmp_path):
    """`maskrcnn-sagemaker` (deploy.cli:main) as installed, run away from the repository."""
    script = Path(sys.executable).with_name("maskrcnn-sagemaker")
    if not script.exists():
        pytest.skip("the package is not installed in this environment (pip install -e '.[deploy]')")
    env = {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}
    result = subprocess.run([str(script), "--help"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("package", "deploy", "invoke", "transform", "delete"):
        assert command in result.stdout

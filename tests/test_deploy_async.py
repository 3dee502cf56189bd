"""Asynchronous inference with the deploy tool: `deploy --async-output ...` (the endpoint
config's AsyncInferenceConfig, the Model's environment, scaling on the backlog and from
zero) and `invoke --async` (upload, InvokeEndpointAsync, wait for the answer in S3).

What moto (5.2) does with it, and how the tests get by:
- CreateEndpointConfig stores AsyncInferenceConfig as sent and describe_endpoint_config
  answers it; Application Auto Scaling stores MinCapacity 0, customized-metric target
  tracking and step-scaling policies as sent; CloudWatch's put_metric_alarm and
  describe_alarms work. So the whole deployment is read back.
- sagemaker-runtime InvokeEndpointAsync accepts any endpoint name (none need exist), never
  reads the InputLocation, ignores the endpoint config's S3OutputPath/S3FailurePath and the
  ContentType/Accept/CustomAttributes, and answers at once: it creates a bucket
  `sagemaker-output-<uuid>`, writes `response.json` there (or `failure.json`) right away,
  and returns both as OutputLocation and FailureLocation (a FailureLocation even when the
  config has no S3FailurePath). What it writes is `{"default": "response"}` unless results
  are queued through POST /moto-api/static/sagemaker/async-endpoint-results (text only,
  stored as binary/octet-stream). The tests queue a JSON answer and a failure that way.
- Because moto's answer is there before the first poll, the waiting (and the request the
  CLI sends) is tested against a stub SageMaker Runtime that answers as the service does,
  with locations in moto's S3 where nothing is written until the test puts the answer
  after the CLI has printed the output location; and the waiting loop with a fake clock.

The fixtures (one moto for this module) come from tests/test_deploy.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid

import pytest

from deploy.errors import DeployError
from deploy.invoke_async import Submitted, failure_text, wait_for_answer
from test_deploy import RuntimeStub, assert_one_error, clean_env, cli, deploy_args, fields

from test_deploy import aws_env, bucket, clients, moto, photos, role_arn  # noqa: F401,E402  (module-scoped fixtures: a moto of its own)

ASYNC_ENVIRONMENT = {"MASKRCNN_MAX_BODY_BYTES": "268435456",  # 256 MiB
                     "MASKRCNN_MAX_MEGAPIXELS": "100", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "3600"}
NAMESPACE_ARGS = {"ServiceNamespace": "sagemaker", "ScalableDimension": "sagemaker:variant:DesiredInstanceCount"}


# ---- deploy --------------------------------------------------------------------------------

def test_deploy_async_scaling_from_zero(aws_env, clients, role_arn, bucket):
    sm, aas, cw = clients["sagemaker"], clients["application-autoscaling"], clients["cloudwatch"]
    result = cli(*deploy_args("async-zero", role_arn, "--model-data", f"s3://{bucket}/m/model.tar.gz",
                              "--instance-type", "ml.m5.large", "--async-output", f"s3://{bucket}/async/out/",
                              "--async-failure-output", f"s3://{bucket}/async/err/", "--async-max-concurrency", "4",
                              "--min-instances", "0", "--max-instances", "3", "--target-backlog", "2"), env=aws_env)
    out = fields(result.stdout)
    assert "autoscaling 0..3 instances, target 2 queued requests per instance" in result.stdout

    config = sm.describe_endpoint_config(EndpointConfigName=out["config"])
    assert config["AsyncInferenceConfig"] == {
        "OutputConfig": {"S3OutputPath": f"s3://{bucket}/async/out/", "S3FailurePath": f"s3://{bucket}/async/err/"},
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4}}
    (variant,) = config["ProductionVariants"]
    assert variant["InitialInstanceCount"] == 1  # an endpoint starts with one, even one allowed zero
    container = sm.describe_model(ModelName=out["model"])["PrimaryContainer"]
    assert container["Environment"] == ASYNC_ENVIRONMENT

    rid = "endpoint/async-zero/variant/AllTraffic"
    (target,) = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 3)
    policies = {p["PolicyType"]: p for p in
                aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]}
    assert sorted(policies) == ["StepScaling", "TargetTrackingScaling"]
    tracking = policies["TargetTrackingScaling"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 2.0
    assert tracking["CustomizedMetricSpecification"] == {
        "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
        "Dimensions": [{"Name": "EndpointName", "Value": "async-zero"}], "Statistic": "Average"}
    step = policies["StepScaling"]["StepScalingPolicyConfiguration"]
    assert step["AdjustmentType"] == "ChangeInCapacity"
    assert step["StepAdjustments"] == [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]

    (alarm,) = cw.describe_alarms(AlarmNames=["async-zero-HasBacklogWithoutCapacity"])["MetricAlarms"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == (
        "AWS/SageMaker", "HasBacklogWithoutCapacity", "Average")
    assert alarm["Dimensions"] == [{"Name": "EndpointName", "Value": "async-zero"}]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanOrEqualToThreshold", 1.0)
    assert alarm["AlarmActions"] == [policies["StepScaling"]["PolicyARN"]]

    deleted = cli("delete", "--endpoint-name", "async-zero", env=aws_env)
    assert "deleted alarm async-zero-HasBacklogWithoutCapacity" in deleted.stdout
    assert cw.describe_alarms(AlarmNames=["async-zero-HasBacklogWithoutCapacity"])["MetricAlarms"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"] == []
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"] == []


def test_deploy_async_without_zero_has_no_step_policy_and_an_update_removes_the_alarm(aws_env, clients, role_arn,
                                                                                       bucket):
    aas, cw = clients["application-autoscaling"], clients["cloudwatch"]
    rid = "endpoint/async-one/variant/AllTraffic"
    common = ["--model-data", f"s3://{bucket}/m/model.tar.gz", "--instance-type", "ml.m5.large",
              "--async-output", f"s3://{bucket}/async/out/"]
    cli(*deploy_args("async-one", role_arn, *common, "--min-instances", "0", "--max-instances", "2"), env=aws_env)
    assert cw.describe_alarms(AlarmNames=["async-one-HasBacklogWithoutCapacity"])["MetricAlarms"]

    update = cli(*deploy_args("async-one", role_arn, *common, "--min-instances", "1", "--max-instances", "2"),
                 env=aws_env)
    assert "removed alarm async-one-HasBacklogWithoutCapacity before the update" in update.stdout
    assert cw.describe_alarms(AlarmNames=["async-one-HasBacklogWithoutCapacity"])["MetricAlarms"] == []
    (policy,) = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]
    assert policy["PolicyType"] == "TargetTrackingScaling"
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["TargetValue"] == 5.0  # the default backlog per instance
    assert tracking["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    config = clients["sagemaker"].describe_endpoint_config(EndpointConfigName=fields(update.stdout)["config"])
    assert config["AsyncInferenceConfig"] == {"OutputConfig": {"S3OutputPath": f"s3://{bucket}/async/out/"}}


@pytest.mark.parametrize("flags, fragment", [
    (["--async-output", "s3://b/out/", "--serverless-memory", "2048"], "--async-output does not apply to a serverless"),
    (["--instance-type", "ml.m5.large", "--async-failure-output", "s3://b/err/"],
     "--async-failure-output needs --async-output"),
    (["--instance-type", "ml.m5.large", "--async-max-concurrency", "4"], "--async-max-concurrency needs --async-output"),
    (["--instance-type", "ml.m5.large", "--async-output", "s3://b/out/", "--async-max-concurrency", "1001"],
     "not in 1..1000"),
    (["--instance-type", "ml.m5.large", "--min-instances", "1", "--max-instances", "2", "--target-backlog", "3"],
     "--target-backlog needs --async-output"),
    (["--instance-type", "ml.m5.large", "--async-output", "s3://b/out/", "--target-backlog", "3"],
     "--target-backlog needs --min-instances and --max-instances"),
    (["--instance-type", "ml.m5.large", "--async-output", "s3://b/out/", "--min-instances", "0", "--max-instances",
      "2", "--target-invocations", "10"], "--target-invocations is for real-time endpoints"),
    (["--instance-type", "ml.m5.large", "--async-output", "b/out/"], "not an s3:// URI"),
])
def test_deploy_async_refuses_bad_flag_combinations(flags, fragment):
    result = cli(*deploy_args("x", "arn:aws:iam::123456789012:role/r", "--model-data", "s3://b/k", *flags),
                 env=clean_env(), check=False)
    assert_one_error(result, 2, fragment)


# ---- invoke --async on moto -----------------------------------------------------------------

def queue_async_results(moto, *results: dict) -> None:
    """What moto's InvokeEndpointAsync writes next, in order (see the module docstring)."""
    moto.post("/moto-api/static/sagemaker/async-endpoint-results", json.dumps({"results": list(results)}).encode())


def test_invoke_async_on_moto_uploads_the_photo_and_prints_the_answer(moto, aws_env, clients, bucket, photos,
                                                                       tmp_path):
    folder, _ = photos
    answer = {"labels": ["circle"], "boxes": [[1, 2, 3, 4]]}
    queue_async_results(moto, {"data": json.dumps(answer)})
    prefix = f"async-in/{uuid.uuid4().hex}/"
    result = cli("invoke", "--async", "--endpoint-name", "any-endpoint", folder / "astronaut.jpg",
                 "--input", f"s3://{bucket}/{prefix}", "--custom-attributes", '{"score_threshold": 0.5}',
                 env=aws_env, cwd=tmp_path)
    lines = result.stdout.splitlines()
    assert json.loads(lines[-1]) == answer  # the JSON last, after the progress lines
    out = fields("\n".join(lines[:-1]))
    assert out["output"].startswith("s3://sagemaker-output-") and out["inference"]

    (uploaded,) = clients["s3"].list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    assert out["input"] == f"s3://{bucket}/{uploaded['Key']}" and uploaded["Key"].endswith("-astronaut.jpg")
    stored = clients["s3"].get_object(Bucket=bucket, Key=uploaded["Key"])
    assert stored["Body"].read() == (folder / "astronaut.jpg").read_bytes()
    assert stored["ContentType"] == "image/jpeg"


def test_invoke_async_on_moto_reports_a_failure_in_one_line(moto, aws_env, photos, bucket, tmp_path):
    folder, _ = photos
    queue_async_results(moto, {"is_failure": True, "data": '{"error": "image is over 100 megapixels", "status": 413}'})
    result = cli("invoke", "--async", "--endpoint-name", "any-endpoint", folder / "astronaut.png",
                 "--input", f"s3://{bucket}/async-in/", env=aws_env, cwd=tmp_path, check=False)
    assert_one_error(result, 1, "inference ", "failed: image is over 100 megapixels (status 413)")
    assert "failure: s3://sagemaker-output-" in result.stdout


def test_invoke_async_takes_photos_over_the_real_time_limit(moto, aws_env, bucket, tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + bytes(7 * 1024 * 1024))  # over 6 MiB, under the async limit
    queue_async_results(moto, {"data": "{}"})
    result = cli("invoke", "--async", "--endpoint-name", "e", big, "--input", f"s3://{bucket}/async-big/",
                 env=aws_env, cwd=tmp_path)
    assert result.stdout.splitlines()[-1] == "{}"

    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:
        f.write(b"\xff\xd8\xff")
        f.truncate(256 * 1024 * 1024 + 1)  # sparse: nothing is read, the size refuses it
    result = cli("invoke", "--async", "--endpoint-name", "e", huge, "--input", f"s3://{bucket}/async-big/",
                 env=aws_env, check=False)
    assert_one_error(result, 2, "an asynchronous endpoint takes at most 268,435,456")


@pytest.mark.parametrize("args, fragment", [
    (["--async"], "--async needs --input"),
    (["--input", "s3://b/in/"], "--input goes with --async"),
    (["--timeout", "10"], "--timeout goes with --async"),
    (["--async", "--input", "s3://b/in/", "--target-model", "a.tar.gz"], "--target-model does not go with --async"),
    (["--async", "--input", "s3://b/in/", "--timeout", "0"], "0 is below 1"),
])
def test_invoke_async_refuses_bad_flag_combinations(photos, args, fragment):
    folder, _ = photos
    result = cli("invoke", "--endpoint-name", "e", folder / "astronaut.jpg", *args, env=clean_env(), check=False)
    assert_one_error(result, 2, fragment)


# ---- invoke --async against a stub SageMaker Runtime: the waiting -----------------------------

class AsyncRuntime(RuntimeStub):
    """InvokeEndpointAsync as SageMaker answers it: 202, the inference id, and the output and
    failure locations under the config's prefixes (here in moto's S3), where nothing is
    written until the test writes it."""

    def __init__(self, bucket: str):
        self.inference_id = uuid.uuid4().hex
        self.output_key = f"stub-out/{self.inference_id}.out"
        self.failure_key = f"stub-err/{self.inference_id}-error.out"
        super().__init__(lambda path, headers: (202, {
            "Content-Type": "application/json",
            "X-Amzn-SageMaker-OutputLocation": f"s3://{bucket}/{self.output_key}",
            "X-Amzn-SageMaker-FailureLocation": f"s3://{bucket}/{self.failure_key}",
        }, json.dumps({"InferenceId": self.inference_id}).encode()))


def run_until_waiting(args: list, env: dict, cwd) -> tuple[subprocess.Popen, list[str]]:
    """Start the CLI and read its stdout up to its first `waiting for` line."""
    proc = subprocess.Popen([sys.executable, "-m", "deploy", *map(str, args)], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(60, proc.kill)  # a CLI that never prints would block the read
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "waiting for" in line:
                break
    finally:
        watchdog.cancel()
    assert lines and "waiting for" in lines[-1], (lines, proc.stderr.read() if proc.poll() is not None else "")
    return proc, lines


def test_invoke_async_waits_for_the_answer_and_writes_the_image(aws_env, clients, bucket, photos, tmp_path):
    folder, shape = photos
    stub = AsyncRuntime(bucket)
    try:
        env = {**aws_env, "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": stub.url}
        proc, lines = run_until_waiting(
            ["invoke", "--async", "--endpoint-name", "async-stub", folder / "astronaut.png", "--input",
             f"s3://{bucket}/stub-in/", "--accept", "image/jpeg", "--custom-attributes", '{"score_threshold": 0.7}'],
            env, tmp_path)
        printed = fields("\n".join(lines))
        assert printed["inference"] == stub.inference_id
        assert printed["output"] == f"s3://{bucket}/{stub.output_key}"
        assert printed["failure"] == f"s3://{bucket}/{stub.failure_key}"
        (path, headers, body), = stub.requests
        assert path == "/endpoints/async-stub/async-invocations" and body == b""
        assert headers["X-Amzn-SageMaker-InputLocation"] == printed["input"]
        assert headers["X-Amzn-SageMaker-Content-Type"] == "image/png"
        assert headers["X-Amzn-SageMaker-Accept"] == "image/jpeg"
        assert headers["X-Amzn-SageMaker-Custom-Attributes"] == '{"score_threshold": 0.7}'

        answer = (folder / "astronaut.jpg").read_bytes()  # stands in for the segmented photo
        clients["s3"].put_object(Bucket=bucket, Key=stub.output_key, Body=answer, ContentType="image/jpeg")
        rest, errors = proc.communicate(timeout=60)
    finally:
        stub.close()
    assert proc.returncode == 0 and errors == "", errors
    written = tmp_path / "astronaut.segmented.jpg"
    assert written.read_bytes() == answer
    assert f"answer at s3://{bucket}/{stub.output_key}" in rest
    assert f"wrote {written.name} ({len(answer):,} bytes, image/jpeg)" in rest


def test_invoke_async_reports_the_failure_object(aws_env, clients, bucket, photos, tmp_path):
    folder, _ = photos
    stub = AsyncRuntime(bucket)
    try:
        env = {**aws_env, "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": stub.url}
        proc, _ = run_until_waiting(["invoke", "--async", "--endpoint-name", "async-stub", folder / "astronaut.jpg",
                                     "--input", f"s3://{bucket}/stub-in/", "--out", tmp_path / "a.json"],
                                    env, tmp_path)
        clients["s3"].put_object(Bucket=bucket, Key=stub.failure_key,
                                 Body=b'{"error": "no inference worker became free within 3600 s", "status": 504}')
        _, errors = proc.communicate(timeout=60)
    finally:
        stub.close()
    assert proc.returncode == 1
    assert errors.splitlines() == [f"maskrcnn-sagemaker: error: inference {stub.inference_id} failed: "
                                   "no inference worker became free within 3600 s (status 504)"]
    assert not (tmp_path / "a.json").exists()


# ---- the waiting loop, with a fake clock -------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


SUBMITTED = Submitted("id-1", "s3://b/in/x.jpg", "s3://b/out/id-1.out", "s3://b/err/id-1-error.out")


def test_wait_for_answer_prints_progress_every_few_seconds_and_returns_the_answer():
    clock, lines, asked = FakeClock(), [], []

    def fetch(uri):
        asked.append((clock.now, uri))
        return (b"{}", "application/json") if uri == SUBMITTED.output_uri and clock.now >= 25 else None

    answer = wait_for_answer(fetch, SUBMITTED, deadline_s=3600, echo=lines.append, poll_s=2, progress_s=10,
                             sleep=clock.sleep, clock=clock)
    assert (answer.body, answer.failed, answer.uri) == (b"{}", False, SUBMITTED.output_uri)
    assert lines == ["[    0 s] waiting for s3://b/out/id-1.out", "[   10 s] waiting for s3://b/out/id-1.out",
                     "[   20 s] waiting for s3://b/out/id-1.out", "[   26 s] answer at s3://b/out/id-1.out"]
    assert {uri for _, uri in asked} == {SUBMITTED.output_uri, SUBMITTED.failure_uri}  # both, every poll


def test_wait_for_answer_returns_a_failure_and_stops_at_the_deadline():
    clock = FakeClock()
    failed = wait_for_answer(lambda uri: (b"boom", None) if uri == SUBMITTED.failure_uri else None, SUBMITTED,
                             deadline_s=60, echo=lambda line: None, sleep=clock.sleep, clock=clock)
    assert failed.failed and failed.body == b"boom"
    clock = FakeClock()
    with pytest.raises(DeployError, match=r"no answer for inference id-1 after 60 s \(waited at most 60 s\); it may "
                                          r"still come: aws s3 cp s3://b/out/id-1.out \."):
        wait_for_answer(lambda uri: None, SUBMITTED, deadline_s=60, echo=lambda line: None, poll_s=2,
                        sleep=clock.sleep, clock=clock)
    assert clock.now == 60


def test_failure_text_is_one_line():
    assert failure_text(b'{"error": "too big", "status": 413}') == "too big (status 413)"
    assert failure_text(b"Received server error (500)\nfrom primary") == "Received server error (500) from primary"
    assert failure_text(b"") == "(an empty failure object)"
    assert len(failure_text(b"x" * 5000)) == 600


def test_async_environment_matches_the_server_settings():
    """The names the async Model sets are the ones the server reads (server/config.py)."""
    from server.config import ServerConfig

    config = ServerConfig.from_env(ASYNC_ENVIRONMENT)
    assert (config.max_body_bytes, config.max_megapixels, config.timeout_s) == (256 * 1024 * 1024, 100, 3600)


def test_async_queue_holds_every_request_sagemaker_may_hand_an_instance():
    """Above the server's default queue, MaxConcurrentInvocationsPerInstance sets the queue,
    so that no request SageMaker hands the instance is refused 503 (and written as a failure)."""
    from deploy import asynchronous
    from server.config import DEFAULT_QUEUE_SIZE, ServerConfig

    assert asynchronous.SERVER_QUEUE_SIZE == DEFAULT_QUEUE_SIZE
    assert "MASKRCNN_QUEUE_SIZE" not in asynchronous.environment(4)
    config = ServerConfig.from_env(asynchronous.environment(20))
    assert config.workers + config.queue_size >= 20


def test_the_server_takes_the_photos_the_async_model_allows(tmp_path):
    """The real server with the async Model's environment answers a photo over the real-time
    limits (a body over 6 MiB, over 40 megapixels: the default settings refuse it 413, which
    tests/test_app.py checks)."""
    import numpy as np
    from PIL import Image

    from deploy import asynchronous
    from harness.server import ServerProcess, http_call

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (6000, 8000, 3), np.uint8)  # 48 megapixels of noise: a large JPEG
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=90)
    body = path.read_bytes()
    from server.config import ServerConfig

    defaults = ServerConfig()
    assert len(body) > defaults.max_body_bytes and big.shape[0] * big.shape[1] / 1e6 > defaults.max_megapixels
    srv = ServerProcess(None, tmp_path / "server.log", extra_env=asynchronous.environment())
    try:
        srv.wait_ready()
        reply = http_call(srv.url + "/invocations", body=body, headers={"Content-Type": "image/jpeg"})
        assert reply.status_code == 200, reply.content[:300]
        assert set(reply.json()) == {"labels", "boxes"}
    finally:
        srv.kill()

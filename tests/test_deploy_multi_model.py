"""Multi-model endpoints with the deploy tool: `deploy --multi-model --model-data-prefix`,
`package --output s3://...` to put models under the prefix, and `invoke --target-model`.

On moto: the Model's container is read back (moto stores Mode and Environment as sent),
and the package is read back from moto's S3. `invoke --target-model` is checked twice:
against a stub that records the header boto3 sends (moto's InvokeEndpoint ignores it), and
against the real server started in multi-model mode (SAGEMAKER_MULTI_MODEL=true), which
loads models through POST /models as SageMaker would. The fixtures (one moto for this
module) come from tests/test_deploy.py.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from harness.server import ServerProcess, http_call
from test_deploy import (CREDENTIALS, IMAGE, REGION, RuntimeStub, assert_one_error, clean_env, cli, deploy_args,
                         fields, packaging_bytes)

from test_deploy import aws_env, bucket, clients, moto, photos, role_arn  # noqa: F401,E402  (module-scoped fixtures: a moto of its own)

TARGET_HEADER = "X-Amzn-SageMaker-Target-Model"


def test_deploy_multi_model_creates_a_multi_model_container(aws_env, clients, role_arn, bucket):
    prefix = f"s3://{bucket}/mme/models/"
    out = fields(cli(*deploy_args("mme-endpoint", role_arn, "--multi-model", "--model-data-prefix", prefix,
                                  "--instance-type", "ml.m5.large"), env=aws_env).stdout)
    model = clients["sagemaker"].describe_model(ModelName=out["model"])
    assert model["PrimaryContainer"] == {"Image": IMAGE, "ModelDataUrl": prefix, "Mode": "MultiModel",
                                         "Environment": {"SAGEMAKER_MULTI_MODEL": "true"}}
    (variant,) = clients["sagemaker"].describe_endpoint_config(EndpointConfigName=out["config"])["ProductionVariants"]
    assert variant["ModelName"] == out["model"]


def test_package_to_s3_puts_the_package_under_the_prefix(aws_env, clients, bucket, demo_model_dir):
    result = cli("package", demo_model_dir, "--output", f"s3://{bucket}/mme/models/a.tar.gz", env=aws_env)
    assert f"uploaded s3://{bucket}/mme/models/a.tar.gz" in result.stdout and "4 files" in result.stdout
    stored = clients["s3"].get_object(Bucket=bucket, Key="mme/models/a.tar.gz")
    body = stored["Body"].read()
    assert body == packaging_bytes(demo_model_dir)  # what `package` writes locally, byte for byte
    assert stored["Metadata"] == {"sha256": hashlib.sha256(body).hexdigest()}


def test_package_to_a_missing_bucket_fails_in_one_line(aws_env, demo_model_dir):
    result = cli("package", demo_model_dir, "--output", "s3://no-such-bucket-here/m/a.tar.gz", env=aws_env,
                 check=False)
    assert_one_error(result, 1, "PutObject: NoSuchBucket:")


@pytest.mark.parametrize("args, fragment", [
    (["--multi-model", "--model-data", "s3://b/k.tar.gz"], "--multi-model needs --model-data-prefix"),
    (["--model-data-prefix", "s3://b/models/"], "--model-data-prefix goes with --multi-model"),
    (["--multi-model", "--model-data-prefix", "s3://b/models"], "must end with '/'"),
    (["--multi-model", "--model-data-prefix", "s3://b/models/", "--model-data", "s3://b/k"], "not allowed with"),
    (["--multi-model", "--model-data-prefix", "s3://b/models/", "--model-dir", "demo/model"], "not allowed with"),
    (["--multi-model", "--model-data-prefix", "s3://b/models/", "--bucket", "b"],
     "--bucket and --prefix go with --model-dir, not --model-data-prefix"),
    (["--multi-model", "--model-data-prefix", "s3://b/models/", "--serverless-memory", "2048"],
     "--multi-model does not apply to a serverless endpoint"),
    (["--multi-model", "--model-data-prefix", "s3://b/models/", "--async-output", "s3://b/out/"],
     "--multi-model and --async-output do not go together"),
])
def test_deploy_multi_model_refuses_bad_flag_combinations(args, fragment):
    flags = args if "--serverless-memory" in args else [*args, "--instance-type", "ml.m5.large"]
    result = cli(*deploy_args("x", "arn:aws:iam::123456789012:role/r", *flags), env=clean_env(), check=False)
    assert_one_error(result, 2, fragment)


@pytest.mark.parametrize("output, fragment", [("s3://b/models/a.zip", "must end with .tar.gz"),
                                              ("s3://b", "no object key"), ("s3:///k.tar.gz", "no bucket")])
def test_package_refuses_an_unusable_s3_output(demo_model_dir, output, fragment):
    result = cli("package", demo_model_dir, "--output", output, env=clean_env(), check=False)
    assert_one_error(result, 2, fragment)


def test_invoke_target_model_sends_the_header(photos, tmp_path):
    folder, _ = photos
    answer = json.dumps({"labels": [], "boxes": []}).encode()
    stub = RuntimeStub(lambda path, headers: (200, {"Content-Type": "application/json"}, answer))
    try:
        env = clean_env(**CREDENTIALS, AWS_DEFAULT_REGION=REGION, AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=stub.url)
        result = cli("invoke", "--endpoint-name", "mme", folder / "astronaut.jpg", "--target-model", "a.tar.gz",
                     env=env, cwd=tmp_path)
        assert json.loads(result.stdout) == {"labels": [], "boxes": []}
        cli("invoke", "--endpoint-name", "mme", folder / "astronaut.jpg", env=env, cwd=tmp_path)
        (path, headers, body), (_, plain, _) = stub.requests
        assert path == "/endpoints/mme/invocations" and body == (folder / "astronaut.jpg").read_bytes()
        assert headers[TARGET_HEADER] == "a.tar.gz"
        assert TARGET_HEADER not in plain  # only when asked for
    finally:
        stub.close()
    result = cli("invoke", "--endpoint-name", "mme", folder / "astronaut.jpg", "--target-model", " a",
                 env=env, check=False)
    assert_one_error(result, 2, "argument --target-model: must be 1..1024 printable ASCII characters")


@pytest.fixture(scope="module")
def multi_model_server(tmp_path_factory):
    """The real server in multi-model mode: it starts with no model (SAGEMAKER_MULTI_MODEL=true)."""
    server = ServerProcess(None, tmp_path_factory.mktemp("mme") / "serve.log",
                           extra_env={"SAGEMAKER_MULTI_MODEL": "true"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


def test_invoke_target_model_on_the_real_multi_model_server(multi_model_server, photos, demo_model_dir, tmp_path):
    """Two loads of the demo model as "a" and "b" (POST /models, as SageMaker loads them),
    each invoked by name through boto3's TargetModel; a name not loaded is one error line."""
    folder, _ = photos
    for name in ("a", "b"):
        reply = http_call(f"{multi_model_server.url}/models", body=json.dumps(
            {"model_name": name, "url": str(demo_model_dir)}).encode(), headers={"Content-Type": "application/json"})
        assert reply.status_code == 200, (name, reply.status_code, reply.content)
    env = clean_env(**CREDENTIALS, AWS_DEFAULT_REGION=REGION,
                    AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME=multi_model_server.url)
    for name in ("a", "b"):
        result = cli("invoke", "--endpoint-name", "mme", folder / "astronaut.jpg", "--target-model", name,
                     "--custom-attributes", '{"include": ["scores"]}', env=env, cwd=tmp_path)
        answer = json.loads(result.stdout)
        assert set(answer) >= {"labels", "boxes", "scores"}
        assert len(answer["labels"]) == len(answer["boxes"]) == len(answer["scores"])
    result = cli("invoke", "--endpoint-name", "mme", folder / "astronaut.jpg", "--target-model", "c", env=env,
                 cwd=tmp_path, check=False)
    line = assert_one_error(result, 1, "InvokeEndpoint: 404:")
    assert "An error occurred" not in line  # the server's own message, not botocore's stand-in

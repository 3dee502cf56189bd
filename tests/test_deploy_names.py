"""Model names as users of the SageMaker Python SDK expect them (`deploy --model-name`).

A name given is the Model's exact name (a timestamped one only when none is given); a
second deployment under that name reuses the Model when its image, model data, role, mode
and environment are the same, and otherwise stops with one line (exit status 1: the flags
are valid, the account holds a Model in the way) having created and uploaded nothing.

moto's CreateModel replaces a Model whose name exists (SageMaker refuses), so "nothing
created" is checked on the requests the CLI sent, read from moto's recorder, as well as on
describe_model. moto's CreateTransformJob does not check that its Model exists (its
CreateEndpointConfig does), so `transform --model-name my-model` finding the Model is
checked as describe_model finding the very name the job was given. The fixtures (one moto
for this module) come from tests/test_deploy.py.
"""

from __future__ import annotations

import shutil

import pytest

from test_deploy import IMAGE, assert_one_error, cli, deploy_args, fields, packaging_bytes

from test_deploy import aws_env, bucket, clients, moto, role_arn  # noqa: F401,E402  (module-scoped fixtures: a moto of its own)

WRITES = ("SageMaker.CreateModel", "SageMaker.CreateEndpointConfig", "SageMaker.CreateEndpoint",
          "SageMaker.UpdateEndpoint")


def deploy_recorded(moto, aws_env, *args, check=True):
    """Run the CLI with moto's recorder on: (the finished process, the requests moto got)."""
    results = []
    requests = moto.recorded(lambda: results.append(cli(*args, env=aws_env, check=check)))
    return results[0], requests


def test_model_name_is_used_as_given_and_transform_finds_it(aws_env, clients, role_arn, bucket):
    sm = clients["sagemaker"]
    data = f"s3://{bucket}/names/a/model.tar.gz"
    out = fields(cli(*deploy_args("names-exact", role_arn, "--model-data", data, "--instance-type", "ml.m5.large",
                                  "--model-name", "my-model"), env=aws_env).stdout)
    assert out["model"] == "my-model"
    assert sm.describe_model(ModelName="my-model")["PrimaryContainer"] == {"Image": IMAGE, "ModelDataUrl": data}
    assert out["config"].startswith("names-exact-")  # endpoint configs stay timestamped
    (variant,) = sm.describe_endpoint_config(EndpointConfigName=out["config"])["ProductionVariants"]
    assert variant["ModelName"] == "my-model"

    job = fields(cli("transform", "--model-name", "my-model", "--input", f"s3://{bucket}/names/in/", "--output",
                     f"s3://{bucket}/names/out/", "--instance-type", "ml.m5.large", "--no-wait", env=aws_env).stdout)
    assert sm.describe_transform_job(TransformJobName=job["job"])["ModelName"] == "my-model"
    assert job["job"].startswith("my-model-")


def test_without_a_model_name_the_model_is_named_after_the_endpoint(aws_env, clients, role_arn, bucket):
    out = fields(cli(*deploy_args("names-default", role_arn, "--model-data", f"s3://{bucket}/names/model.tar.gz",
                                  "--instance-type", "ml.m5.large", "--no-wait"), env=aws_env).stdout)
    assert out["model"].startswith("names-default-") and out["model"] != "names-default"
    clients["sagemaker"].describe_model(ModelName=out["model"])


def test_deploying_again_with_the_same_model_reuses_it(moto, aws_env, clients, role_arn, bucket):
    sm = clients["sagemaker"]
    args = deploy_args("names-reuse", role_arn, "--model-data", f"s3://{bucket}/names/r/model.tar.gz",
                       "--instance-type", "ml.m5.large", "--model-name", "reused-model")
    first = fields(cli(*args, env=aws_env).stdout)
    created = sm.describe_model(ModelName="reused-model")["CreationTime"]

    second, requests = deploy_recorded(moto, aws_env, *args)
    assert "reusing model reused-model" in second.stdout
    targets = [r["target"] for r in requests]
    assert "SageMaker.CreateModel" not in targets and "SageMaker.DescribeModel" in targets
    assert sm.describe_model(ModelName="reused-model")["CreationTime"] == created
    out = fields(second.stdout)
    assert out["model"] == "reused-model" and out["config"] != first["config"]  # a new config, the same Model
    assert sm.describe_endpoint(EndpointName="names-reuse")["EndpointConfigName"] == out["config"]


@pytest.mark.parametrize("case, changed, difference", [
    ("data", {"--model-data": "s3://maskrcnn-deploy-tests/names/other/model.tar.gz"},
     "model data (it has s3://maskrcnn-deploy-tests/names/c/model.tar.gz)"),
    ("image", {"--image-uri": IMAGE + "-v2"}, f"image (it has {IMAGE})"),
    ("async", {"--async-output": "s3://maskrcnn-deploy-tests/names/async/"}, "environment (it has {})"),
])
def test_deploying_other_contents_under_an_existing_model_name_stops(moto, aws_env, clients, role_arn, bucket,
                                                                      case, changed, difference):
    sm = clients["sagemaker"]
    endpoint, model = f"names-conflict-{case}", f"conflict-{case}"
    flags = {"--image-uri": IMAGE, "--model-data": f"s3://{bucket}/names/c/model.tar.gz"}

    def args(flags: dict) -> list[str]:
        return ["deploy", "--endpoint-name", endpoint, "--role", role_arn, "--instance-type", "ml.m5.large",
                "--model-name", model, *[part for flag, value in flags.items() for part in (flag, value)]]

    first = fields(cli(*args(flags), env=aws_env).stdout)
    before = sm.describe_model(ModelName=model)
    result, requests = deploy_recorded(moto, aws_env, *args({**flags, **changed}), check=False)
    assert_one_error(result, 1, f"model {model} already exists with a different {difference}",
                     "deploy under another --model-name", f"aws sagemaker delete-model --model-name {model}")
    assert not [r["target"] for r in requests if r["target"] in WRITES]  # nothing created or changed
    after = sm.describe_model(ModelName=model)
    assert (after["PrimaryContainer"], after["CreationTime"]) == (before["PrimaryContainer"], before["CreationTime"])
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] == first["config"]


def test_model_dir_under_an_existing_model_name(moto, aws_env, clients, role_arn, bucket, demo_model_dir, tmp_path):
    """--model-dir under a name that exists: the same package is not uploaded again and the
    Model is reused; another package is neither uploaded (it would change the data under
    the Model in service) nor deployed."""
    s3 = clients["s3"]
    model_dir = tmp_path / "model"
    shutil.copytree(demo_model_dir, model_dir)
    args = deploy_args("names-dir", role_arn, "--model-dir", model_dir, "--bucket", bucket, "--instance-type",
                       "ml.m5.large", "--model-name", "dir-model")
    key = "maskrcnn-serve/dir-model/model.tar.gz"
    _, requests = deploy_recorded(moto, aws_env, *args)
    assert ("PUT", f"/{bucket}/{key}") in [(r["method"], r["path"]) for r in requests]  # as the recorder shows it
    uploaded = s3.head_object(Bucket=bucket, Key=key)

    again, requests = deploy_recorded(moto, aws_env, *args)
    assert f"s3://{bucket}/{key} already holds this package" in again.stdout
    assert "reusing model dir-model" in again.stdout
    assert not [r for r in requests if r["method"] in ("PUT", "POST") and r["path"].startswith(f"/{bucket}/")]
    assert "SageMaker.CreateModel" not in [r["target"] for r in requests]

    (model_dir / "NOTES.txt").write_text("another package\n")
    result, requests = deploy_recorded(moto, aws_env, *args, check=False)
    assert_one_error(result, 1, "model dir-model already exists with a different package",
                     f"another package is at s3://{bucket}/{key}")
    assert not [r for r in requests if r["method"] in ("PUT", "POST") and r["path"].startswith(f"/{bucket}/")]
    assert not [r["target"] for r in requests if r["target"] in WRITES]
    after = s3.head_object(Bucket=bucket, Key=key)
    assert (after["ETag"], after["Metadata"]) == (uploaded["ETag"], uploaded["Metadata"])
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == packaging_bytes(demo_model_dir)

"""A real-time, asynchronous or serverless endpoint: its EndpointConfig and the Endpoint
itself; creating or updating one, waiting for it, and deleting it all (the Model it runs
is deploy.models').

Every deployment creates a new EndpointConfig, named with a timestamp, and points the
endpoint at it: an update never collides with the config in service, and the previous
config stays available to roll back to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import autoscaling
from .errors import DeployError
from .waiting import wait_for_status

VARIANT = "AllTraffic"
WAIT_S = 45 * 60  # creating an endpoint takes minutes; plus the container start-up allowance
POLL_S = 15.0


@dataclass(frozen=True)
class EndpointSpec:
    """What to deploy. Either `instance_type` (with `instance_count`, optional
    `startup_timeout_s`, `scaling` and `async_config`) or `serverless_memory_mb` (with
    `serverless_max_concurrency`). `detailed_metrics` None leaves MetricsConfig to the
    service's default."""

    endpoint_name: str
    model_name: str  # an existing Model (deploy.models.ensure)
    config_name: str  # exact, e.g. names.unique_name(base, stamp)
    instance_type: str | None = None
    instance_count: int = 1
    startup_timeout_s: int | None = None
    serverless_memory_mb: int | None = None
    serverless_max_concurrency: int | None = None
    scaling: autoscaling.Scaling | None = None
    async_config: dict | None = None  # asynchronous.inference_config(...)
    detailed_metrics: bool | None = None


def production_variant(spec: EndpointSpec) -> dict:
    """The config's single ProductionVariant, "AllTraffic"."""
    variant = {"VariantName": VARIANT, "ModelName": spec.model_name}
    if spec.serverless_memory_mb is not None:
        variant["ServerlessConfig"] = {"MemorySizeInMB": spec.serverless_memory_mb,
                                       "MaxConcurrency": spec.serverless_max_concurrency}
    else:
        variant.update(InstanceType=spec.instance_type, InitialInstanceCount=spec.instance_count)
        if spec.startup_timeout_s is not None:
            variant["ContainerStartupHealthCheckTimeoutInSeconds"] = spec.startup_timeout_s
    return variant


def config_request(spec: EndpointSpec) -> dict:
    """create_endpoint_config's arguments."""
    request = {"EndpointConfigName": spec.config_name, "ProductionVariants": [production_variant(spec)]}
    if spec.async_config is not None:
        request["AsyncInferenceConfig"] = spec.async_config
    if spec.detailed_metrics is not None:
        # MetricsConfig.EnableDetailedObservability: SageMaker scrapes the container's
        # GET /metrics (Prometheus) and publishes it to CloudWatch
        request["MetricsConfig"] = {"EnableDetailedObservability": spec.detailed_metrics}
    return request


def endpoint_exists(sm, endpoint_name: str) -> bool:
    pages = sm.get_paginator("list_endpoints").paginate(NameContains=endpoint_name)
    return any(e["EndpointName"] == endpoint_name for page in pages for e in page["Endpoints"])


def deploy(sm, aas, cloudwatch, spec: EndpointSpec, echo: Callable[[str], None], wait: bool = True) -> dict:
    """Create the EndpointConfig, then create the endpoint or update it to the new config;
    wait for InService (unless `wait` is False) and apply `spec.scaling`.

    An existing endpoint's autoscaling is removed before the update (Application Auto
    Scaling refuses updates that change a scaled variant's instance type) and registered
    again afterwards when `spec.scaling` says so. Returns describe_endpoint's answer.
    """
    sm.create_endpoint_config(**config_request(spec))
    echo(f"created endpoint config {spec.config_name}")
    if endpoint_exists(sm, spec.endpoint_name):
        for removed in autoscaling.disable(aas, cloudwatch, spec.endpoint_name, VARIANT):
            echo(f"removed {removed} before the update")
        sm.update_endpoint(EndpointName=spec.endpoint_name, EndpointConfigName=spec.config_name)
        echo(f"updating endpoint {spec.endpoint_name} to {spec.config_name}")
    else:
        sm.create_endpoint(EndpointName=spec.endpoint_name, EndpointConfigName=spec.config_name)
        echo(f"creating endpoint {spec.endpoint_name}")
    if not wait:
        return sm.describe_endpoint(EndpointName=spec.endpoint_name)
    description = wait_in_service(sm, spec.endpoint_name, echo, WAIT_S + (spec.startup_timeout_s or 0))
    if description["EndpointConfigName"] != spec.config_name:  # a failed update rolls back
        raise DeployError(f"endpoint {spec.endpoint_name} stayed on {description['EndpointConfigName']}: "
                          f"{description.get('FailureReason') or 'the update did not take'}")
    if spec.scaling is not None:
        autoscaling.enable(aas, cloudwatch, spec.endpoint_name, VARIANT, spec.scaling)
        echo(spec.scaling.describe(spec.endpoint_name))
    return description


def wait_in_service(sm, endpoint_name: str, echo: Callable[[str], None], deadline_s: float = WAIT_S) -> dict:
    """Poll describe_endpoint until InService; Failed (or OutOfService) raises DeployError."""
    return wait_for_status(lambda: sm.describe_endpoint(EndpointName=endpoint_name),
                           what=f"endpoint {endpoint_name}", status_key="EndpointStatus",
                           done={"InService"}, failed={"Failed", "OutOfService"},
                           deadline_s=deadline_s, interval_s=POLL_S, echo=echo)


def delete(sm, aas, cloudwatch, endpoint_name: str, echo: Callable[[str], None], keep_model: bool = False) -> None:
    """Delete the endpoint's autoscaling, the endpoint, its config and (unless keep_model)
    the config's models. The model data in S3 is left where it is."""
    config_name = sm.describe_endpoint(EndpointName=endpoint_name)["EndpointConfigName"]
    config = sm.describe_endpoint_config(EndpointConfigName=config_name)
    variants = config["ProductionVariants"] + config.get("ShadowProductionVariants", [])
    for variant in variants:
        for removed in autoscaling.disable(aas, cloudwatch, endpoint_name, variant["VariantName"]):
            echo(f"deleted {removed}")
    sm.delete_endpoint(EndpointName=endpoint_name)
    echo(f"deleted endpoint {endpoint_name}")
    sm.delete_endpoint_config(EndpointConfigName=config_name)
    echo(f"deleted endpoint config {config_name}")
    for model_name in dict.fromkeys(v["ModelName"] for v in variants if "ModelName" in v):
        if keep_model:
            echo(f"kept model {model_name}")
        else:
            sm.delete_model(ModelName=model_name)
            echo(f"deleted model {model_name}")

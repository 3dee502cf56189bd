"""`maskrcnn-sagemaker deploy`: the Model's name and data, the Model, then the endpoint
config and the endpoint (flags already checked by cli)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from . import asynchronous, endpoints, model_data, models
from .autoscaling import Scaling
from .names import timestamp, unique_name

DEFAULT_PREFIX = "maskrcnn-serve"  # s3://BUCKET/maskrcnn-serve/<model name>/model.tar.gz
DEFAULT_TARGET_INVOCATIONS = 100.0
# Queued requests per instance; each may take a while on a large photo, so a few per
# instance already mean minutes of waiting.
DEFAULT_TARGET_BACKLOG = 5.0
DEFAULT_SERVERLESS_CONCURRENCY = 20


def run_deploy(args: argparse.Namespace, aws, echo: Callable[[str], None]) -> int:
    sm = aws.client("sagemaker")
    stamp = timestamp()
    # A name given is the Model's exact name; only a generated one is new for certain.
    model_name = args.model_name or unique_name(args.endpoint_name, stamp)
    existing = models.describe(sm, model_name) if args.model_name else None
    spec = model_spec(args, model_name, _model_data_url(args, aws, model_name, existing, echo))
    models.ensure(sm, spec, echo, existing)
    config_name = unique_name(args.endpoint_name, stamp)
    description = endpoints.deploy(sm, aws.client("application-autoscaling"), aws.client("cloudwatch"),
                                   endpoint_spec(args, model_name, config_name, echo), echo, wait=not args.no_wait)
    echo(f"model: {model_name}")
    echo(f"config: {config_name}")
    echo(f"status: {description['EndpointStatus']}")
    echo(f"endpoint: {description['EndpointName']}")
    echo(f"arn: {description['EndpointArn']}")
    return 0


def _model_data_url(args, aws, model_name: str, existing: dict | None, echo) -> str:
    if args.model_dir is None:
        return args.model_data or args.model_data_prefix
    key = f"{(args.prefix or f'{DEFAULT_PREFIX}/{model_name}').strip('/')}/model.tar.gz"
    return model_data.from_model_dir(aws.client("s3"), args.model_dir, args.bucket, key, echo, model_name, existing)


def model_spec(args: argparse.Namespace, model_name: str, data_url: str) -> models.ModelSpec:
    if args.multi_model:
        return models.ModelSpec(model_name, args.image_uri, args.role, data_url, mode=models.MULTI_MODEL,
                                environment=models.MULTI_MODEL_ENVIRONMENT)
    environment = asynchronous.environment(args.async_max_concurrency) if args.async_output else {}
    return models.ModelSpec(model_name, args.image_uri, args.role, data_url, environment=environment)


def endpoint_spec(args: argparse.Namespace, model_name: str, config_name: str,
                  echo: Callable[[str], None]) -> endpoints.EndpointSpec:
    scaling = None
    if args.min_instances is not None:
        on_backlog = args.async_output is not None
        target = (args.target_backlog or DEFAULT_TARGET_BACKLOG) if on_backlog else \
            (args.target_invocations or DEFAULT_TARGET_INVOCATIONS)
        scaling = Scaling(args.min_instances, args.max_instances, target, on_backlog)
    concurrency, instance_type = None, args.instance_type
    if args.serverless_memory is not None:
        concurrency = args.serverless_max_concurrency or DEFAULT_SERVERLESS_CONCURRENCY
        if instance_type or args.instance_count:  # a serverless variant has neither
            echo("serverless endpoint: --instance-type and --instance-count are not used")
            instance_type = None
    async_config = None
    if args.async_output is not None:
        async_config = asynchronous.inference_config(args.async_output, args.async_failure_output,
                                                     args.async_max_concurrency)
    # An endpoint starts with at least one instance, even one allowed to scale to zero.
    count = args.instance_count or max(1, scaling.min_instances if scaling else 1)
    return endpoints.EndpointSpec(
        endpoint_name=args.endpoint_name, model_name=model_name, config_name=config_name,
        instance_type=instance_type, instance_count=count, startup_timeout_s=args.startup_timeout,
        serverless_memory_mb=args.serverless_memory, serverless_max_concurrency=concurrency, scaling=scaling,
        async_config=async_config, detailed_metrics=args.detailed_metrics)

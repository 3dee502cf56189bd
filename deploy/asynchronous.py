"""Asynchronous inference, the deployment side: the endpoint config's AsyncInferenceConfig,
and the container settings for the requests it carries.

An asynchronous endpoint takes its request bodies from S3 (up to 1 GB) and lets a request
run for up to an hour; SageMaker queues the requests itself and hands each instance at
most MaxConcurrentInvocationsPerInstance at a time, as ordinary POST /invocations. The
server's defaults are the real-time contract's (6 MiB bodies, 40 megapixels, 60 s waiting
for a worker), so the async Model raises them through its environment.
"""

from __future__ import annotations

from engine import environment as container_env

MIB = 1024 * 1024
# The server holds a whole request body in memory before it decodes the image, so its body
# limit is a memory bound per request, not SageMaker's 1 GB: this admits the JPEG or PNG of
# any photo within MAX_MEGAPIXELS without letting one request take an instance's memory.
MAX_BODY_BYTES = 256 * MIB
# Photos a real-time endpoint refuses at 40 megapixels (the 6 MiB body comes first there);
# the decoded pixels are 3 bytes each, so an instance must have memory for that per request.
MAX_MEGAPIXELS = 100
# SAGEMAKER_MODEL_SERVER_TIMEOUT is how long a request may wait for a free inference worker
# before the server answers 504. On a real-time endpoint a caller holds a connection with a
# 60 s limit; here the caller waits on S3, and the requests SageMaker hands an instance at
# once queue behind each other for minutes when the photos are large. A 504 would be written
# to the failure path for a request that would have been answered, so the wait is an hour:
# the longest SageMaker lets an async request run (InvocationTimeoutSeconds <= 3600), and
# SageMaker's own timeout ends it first.
SERVER_TIMEOUT_S = 3600
MAX_CONCURRENCY = 1000  # MaxConcurrentInvocationsPerInstance's upper bound in the API


# The server's own default (server.config.DEFAULT_QUEUE_SIZE): requests waiting for a worker.
SERVER_QUEUE_SIZE = 8


def environment(max_concurrency: int | None = None) -> dict[str, str]:
    """The async Model's container environment (strings, as the API wants them). With
    `max_concurrency`, the server's queue holds every request SageMaker may hand it at once
    (the one running included), so none of them is refused 503 and written as a failure."""
    env = {container_env.MASKRCNN_MAX_BODY_BYTES: str(MAX_BODY_BYTES),
           container_env.MASKRCNN_MAX_MEGAPIXELS: str(MAX_MEGAPIXELS),
           container_env.SAGEMAKER_MODEL_SERVER_TIMEOUT: str(SERVER_TIMEOUT_S)}
    if max_concurrency is not None and max_concurrency > SERVER_QUEUE_SIZE:
        env[container_env.MASKRCNN_QUEUE_SIZE] = str(max_concurrency)
    return env


def inference_config(output_uri: str, failure_uri: str | None = None, max_concurrency: int | None = None) -> dict:
    """CreateEndpointConfig's AsyncInferenceConfig. Without `max_concurrency` SageMaker
    picks the requests per instance itself."""
    output = {"S3OutputPath": output_uri}
    if failure_uri:
        output["S3FailurePath"] = failure_uri
    config = {"OutputConfig": output}
    if max_concurrency is not None:
        config["ClientConfig"] = {"MaxConcurrentInvocationsPerInstance": max_concurrency}
    return config

"""`maskrcnn-sagemaker`: package a model directory, deploy it as a SageMaker endpoint
(real-time instances with autoscaling, asynchronous, multi-model, or serverless), invoke
it, run Batch Transform, delete it.

boto3 only (the SageMaker Python SDK is not needed); the usual AWS settings apply
(AWS_PROFILE, AWS_DEFAULT_REGION / AWS_REGION, AWS_ENDPOINT_URL, AWS_MAX_ATTEMPTS).

Modules, one role each:
    cli             the argument parser, the checks of flag combinations, errors turned into one line
    arguments       the argument types (names, s3:// URIs and prefixes, numbers in a range)
    deploy_command  `deploy`: the Model's name and data, the Model, the endpoint
    invoke_command  `invoke`, real-time or --async, and writing the answer
    aws             the boto3 session, clients with retries, an AWS error as one line
    packaging       a model directory -> a deterministic model.tar.gz
    model_data      a model directory packaged and uploaded, or found already uploaded
    models          the Model: its container, created under the name given or reused
    s3              s3:// URIs, uploads with their sha256, reading an object, counting outputs
    endpoints       EndpointConfig and Endpoint: create, update, wait, delete
    asynchronous    an async endpoint's AsyncInferenceConfig and its container's limits
    autoscaling     the variant's scalable target and policies (invocations, backlog, from zero)
    transform       Batch Transform jobs
    invoke          sagemaker-runtime invoke_endpoint with a sniffed content type
    invoke_async    invoke_endpoint_async: upload, queue, wait for the answer in S3
    waiting         polling a status with a deadline
    names           SageMaker's name rule, and unique names (a base name plus a UTC timestamp)
    errors          the errors the tool reports, each with its exit status
"""

"""`maskrcnn-sagemaker`: package a model directory, deploy it as a SageMaker endpoint
(instances with autoscaling, or serverless), invoke it, run Batch Transform, delete it.

boto3 only (the SageMaker Python SDK is not needed); the usual AWS settings apply
(AWS_PROFILE, AWS_DEFAULT_REGION / AWS_REGION, AWS_ENDPOINT_URL, AWS_MAX_ATTEMPTS).

Modules, one role each:
    cli         the argument parser, the commands' output, errors turned into one line
    aws         the boto3 session, clients with retries, an AWS error as one line
    packaging   a model directory -> a deterministic model.tar.gz
    s3          s3:// URIs, the upload, counting a job's outputs
    endpoints   Model, EndpointConfig and Endpoint: create, update, wait, delete
    autoscaling the variant's scalable target and target-tracking policy
    transform   Batch Transform jobs
    invoke      sagemaker-runtime invoke_endpoint with a sniffed content type
    waiting     polling a status with a deadline
    names       unique resource names (a base name plus a UTC timestamp)
    errors      the errors the tool reports, each with its exit status
"""

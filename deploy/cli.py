"""`maskrcnn-sagemaker`: the command line of the deploy tool.

    maskrcnn-sagemaker package MODEL_DIR --output model.tar.gz | s3://BUCKET/KEY.tar.gz
    maskrcnn-sagemaker deploy --endpoint-name NAME --image-uri URI --role ARN ...
    maskrcnn-sagemaker invoke --endpoint-name NAME PHOTO [--accept ...] [--out FILE]
    maskrcnn-sagemaker invoke --endpoint-name NAME PHOTO --async --input s3://BUCKET/in/
    maskrcnn-sagemaker transform --model-name NAME --input s3://... --output s3://... ...
    maskrcnn-sagemaker delete --endpoint-name NAME [--keep-model]

Progress and results go to stdout. Every failure ends in one line on stderr,
`maskrcnn-sagemaker: error: ...`, never a traceback: exit status 2 for a usage error or
unusable input (a bad flag combination, not a model directory, not a photo), 1 for
anything AWS refused (`<operation>: <code>: <message>`), a deployment or job that failed,
or a Model of the name given that exists with other contents (the flags are valid; what
stands in the way is in the account). This module is the one place where exceptions become
those lines; the deploy and invoke commands' steps are in deploy_command and invoke_command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from engine.media_types import IMAGE_TYPES, JPEG, JSON

from . import arguments as types
from . import asynchronous, endpoints, model_data
from . import invoke as invoking
from . import invoke_async
from . import transform as transforming
from .deploy_command import DEFAULT_PREFIX, DEFAULT_SERVERLESS_CONCURRENCY, DEFAULT_TARGET_BACKLOG, \
    DEFAULT_TARGET_INVOCATIONS, run_deploy
from .errors import DeployError
from .invoke_command import run_invoke
from .names import timestamp, unique_name
from .packaging import package_model_dir
from .s3 import count_objects, parse_s3_uri

PROG = "maskrcnn-sagemaker"
NO_BOTO3 = "boto3 is not installed: pip install 'maskrcnn-serve[deploy]'"


def echo(line: str) -> None:
    print(line, flush=True)


def fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


# ---- the parser -----------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other error (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Package, deploy, invoke and delete the Mask R-CNN "
                     "server as an Amazon SageMaker endpoint, or run it as a Batch Transform job.")
    _add_aws_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    package = commands.add_parser("package", help="check a model directory and write model.tar.gz (or upload it)")
    _add_aws_options(package)
    package.add_argument("model_dir", metavar="MODEL_DIR", type=Path)
    package.add_argument("--output", "-o", type=types.package_output, required=True, metavar="FILE|S3_URI",
                         help="the tarball to write, or s3://BUCKET/KEY.tar.gz to upload it there (e.g. "
                         "s3://BUCKET/models/NAME.tar.gz under a multi-model endpoint's --model-data-prefix)")
    package.set_defaults(run=run_package)

    _add_deploy(commands)
    _add_invoke(commands)

    transform = commands.add_parser("transform", help="run a Batch Transform job over an S3 prefix")
    _add_aws_options(transform)
    transform.add_argument("--model-name", required=True, type=types.sagemaker_name, metavar="NAME",
                           help="an existing SageMaker Model (e.g. deploy's --model-name)")
    transform.add_argument("--input", required=True, type=types.s3_uri, metavar="S3_URI", help="prefix of the images")
    transform.add_argument("--output", required=True, type=types.s3_uri, metavar="S3_URI",
                           help="prefix for the answers")
    transform.add_argument("--instance-type", required=True, metavar="TYPE")
    transform.add_argument("--instance-count", type=types.int_in(1), default=1, metavar="N")
    transform.add_argument("--content-type", choices=IMAGE_TYPES, default=JPEG)
    transform.add_argument("--accept", choices=invoking.ACCEPTS, default=JSON)
    transform.add_argument("--job-name", type=types.sagemaker_name, metavar="J",
                           help="default: <model name>-<timestamp>")
    transform.add_argument("--no-wait", action="store_true", help="do not wait for the job to finish")
    transform.set_defaults(run=_with_aws(run_transform))

    delete = commands.add_parser("delete", help="delete an endpoint, its config, models and autoscaling")
    _add_aws_options(delete)
    delete.add_argument("--endpoint-name", required=True, type=types.sagemaker_name, metavar="NAME")
    delete.add_argument("--keep-model", action="store_true", help="leave the Model(s) in place")
    delete.set_defaults(run=_with_aws(run_delete))
    return parser


def _add_deploy(commands) -> None:
    deploy = commands.add_parser("deploy", help="create or update a real-time, asynchronous, multi-model or "
                                 "serverless endpoint")
    _add_aws_options(deploy)
    deploy.add_argument("--endpoint-name", required=True, type=types.sagemaker_name, metavar="NAME")
    deploy.add_argument("--image-uri", required=True, metavar="URI", help="the serving image in ECR")
    deploy.add_argument("--role", required=True, metavar="ARN", help="the SageMaker execution role")
    deploy.add_argument("--instance-type", metavar="TYPE", help="e.g. ml.m5.xlarge (or --serverless-memory)")
    deploy.add_argument("--instance-count", type=types.int_in(1), metavar="N", help="initial instances (default 1, "
                        "or --min-instances if above 1)")
    data = deploy.add_mutually_exclusive_group(required=True)
    data.add_argument("--model-data", type=types.s3_object, metavar="S3_URI", help="an uploaded model.tar.gz")
    data.add_argument("--model-dir", type=Path, metavar="DIR", help="package DIR and upload it to --bucket")
    data.add_argument("--model-data-prefix", type=types.s3_prefix, metavar="S3_PREFIX",
                      help="with --multi-model: the S3 prefix (ending in '/') holding the models, each a "
                      "NAME.tar.gz (maskrcnn-sagemaker package DIR --output S3_PREFIX/NAME.tar.gz)")
    deploy.add_argument("--bucket", help="with --model-dir: the S3 bucket to upload to")
    deploy.add_argument("--prefix", metavar="P",
                        help=f"with --model-dir: the key prefix (default {DEFAULT_PREFIX}/<model name>)")
    deploy.add_argument("--model-name", type=types.sagemaker_name, metavar="NAME",
                        help="the Model's name, used exactly as given (default: <endpoint name>-<timestamp>). "
                        "A Model of that name that exists is reused if it has the same image, model data, "
                        "role and settings; if not, deploy stops and changes nothing")
    deploy.add_argument("--multi-model", action="store_true",
                        help="a multi-model endpoint: the container loads the models under --model-data-prefix "
                        "on demand; invoke picks one with --target-model NAME.tar.gz")
    deploy.add_argument("--min-instances", type=types.int_in(0), metavar="A",
                        help="autoscaling: the fewest instances (0 only with --async-output)")
    deploy.add_argument("--max-instances", type=types.int_in(1), metavar="B", help="autoscaling: the most instances")
    deploy.add_argument("--target-invocations", type=types.positive_number, metavar="N", help="autoscaling: "
                        f"invocations per instance per minute to track (default {DEFAULT_TARGET_INVOCATIONS:g})")
    deploy.add_argument("--target-backlog", type=types.positive_number, metavar="N",
                        help="autoscaling with --async-output: queued requests per instance to track "
                        f"(ApproximateBacklogSizePerInstance; default {DEFAULT_TARGET_BACKLOG:g})")
    deploy.add_argument("--async-output", type=types.s3_uri, metavar="S3_URI",
                        help="an asynchronous endpoint writing its answers under this S3 prefix (requests up to "
                        f"{asynchronous.MAX_BODY_BYTES // asynchronous.MIB} MiB and "
                        f"{asynchronous.MAX_MEGAPIXELS} megapixels)")
    deploy.add_argument("--async-failure-output", type=types.s3_uri, metavar="S3_URI",
                        help="with --async-output: the S3 prefix for failed requests' errors")
    deploy.add_argument("--async-max-concurrency", type=types.int_in(1, asynchronous.MAX_CONCURRENCY), metavar="N",
                        help="with --async-output: requests SageMaker sends each instance at once "
                        f"(1..{asynchronous.MAX_CONCURRENCY}; default: SageMaker's choice)")
    deploy.add_argument("--detailed-metrics", action=argparse.BooleanOptionalAction, default=None,
                        help="MetricsConfig.EnableDetailedObservability: SageMaker scrapes the container's "
                        "/metrics into CloudWatch (default: the service's, on for new endpoint configs)")
    deploy.add_argument("--serverless-memory", type=types.serverless_memory, metavar="MB",
                        help="a serverless endpoint with this much memory (1024..6144, steps of 1024)")
    deploy.add_argument("--serverless-max-concurrency", type=types.int_in(1, 200), metavar="N",
                        help=f"serverless: concurrent requests (1..200, default {DEFAULT_SERVERLESS_CONCURRENCY})")
    deploy.add_argument("--startup-timeout", type=types.int_in(60, 3600), metavar="S",
                        help="seconds the container may take to pass /ping (60..3600)")
    deploy.add_argument("--no-wait", action="store_true", help="do not wait for InService")
    deploy.set_defaults(run=_with_aws(lambda args, aws: run_deploy(args, aws, echo)),
                        check=lambda args: _check_deploy_args(deploy, args))


def _add_invoke(commands) -> None:
    invoke = commands.add_parser("invoke", help="send one photo to an endpoint")
    _add_aws_options(invoke)
    invoke.add_argument("--endpoint-name", required=True, type=types.sagemaker_name, metavar="NAME")
    invoke.add_argument("photo", metavar="PHOTO", type=Path, help="a JPEG or PNG file")
    invoke.add_argument("--accept", choices=invoking.ACCEPTS, default=JSON)
    invoke.add_argument("--out", type=Path, metavar="FILE", help="write the answer here (JSON goes to "
                        "stdout without it; an image to <photo stem>.segmented.jpg|png)")
    invoke.add_argument("--custom-attributes", type=types.custom_attributes, metavar="JSON",
                        help='e.g. \'{"score_threshold": 0.7}\'')
    invoke.add_argument("--target-model", type=types.target_model, metavar="NAME",
                        help="a multi-model endpoint's model: its key under the endpoint's prefix, e.g. a.tar.gz")
    invoke.add_argument("--async", dest="asynchronous", action="store_true",
                        help="an asynchronous endpoint: upload PHOTO under --input, queue it, wait for the answer "
                        f"in S3 (photos up to {asynchronous.MAX_BODY_BYTES:,} bytes)")
    invoke.add_argument("--input", type=types.s3_uri, metavar="S3_URI",
                        help="with --async: the S3 prefix to upload the photo under")
    invoke.add_argument("--timeout", type=types.int_in(1), metavar="S",
                        help=f"with --async: seconds to wait for the answer (default {invoke_async.DEFAULT_TIMEOUT_S})")
    invoke.set_defaults(run=_with_aws(lambda args, aws: run_invoke(args, aws, echo)),
                        check=lambda args: _check_invoke_args(invoke, args))


def _add_aws_options(parser: argparse.ArgumentParser, default=argparse.SUPPRESS) -> None:
    # On the main parser (default None) and on each command (SUPPRESS, so that a command
    # without them keeps what was given before the command name).
    parser.add_argument("--profile", default=default, help="AWS profile (default: AWS_PROFILE)")
    parser.add_argument("--region", default=default,
                        help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION or the profile's)")


# ---- the combinations argparse cannot express; each breach is a usage error ---------------

def _check_deploy_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    serverless = args.serverless_memory is not None
    is_async = args.async_output is not None
    scaling = args.min_instances is not None or args.max_instances is not None
    if args.model_dir is not None and not args.bucket:
        parser.error("--model-dir needs --bucket to upload the package to")
    if args.model_dir is None and (args.bucket or args.prefix):
        given = "--model-data" if args.model_data is not None else "--model-data-prefix"
        parser.error(f"--bucket and --prefix go with --model-dir, not {given}")
    if args.multi_model and args.model_data_prefix is None:
        parser.error("--multi-model needs --model-data-prefix s3://BUCKET/PREFIX/ (the models' folder), "
                     "not --model-data or --model-dir")
    if args.model_data_prefix is not None and not args.multi_model:
        parser.error("--model-data-prefix goes with --multi-model")
    if not serverless and args.instance_type is None:
        parser.error("give --instance-type (or --serverless-memory for a serverless endpoint)")
    if not serverless and args.serverless_max_concurrency is not None:
        parser.error("--serverless-max-concurrency needs --serverless-memory")
    if serverless:
        for flag, value in (("--startup-timeout", args.startup_timeout),
                            ("--min-instances/--max-instances", scaling or None),
                            ("--multi-model", args.multi_model or None),  # SageMaker offers neither there
                            ("--async-output", args.async_output)):
            if value is not None:
                parser.error(f"{flag} does not apply to a serverless endpoint")
    for flag, value in (("--async-failure-output", args.async_failure_output),
                        ("--async-max-concurrency", args.async_max_concurrency),
                        ("--target-backlog", args.target_backlog)):
        if value is not None and not is_async:
            parser.error(f"{flag} needs --async-output")
    if is_async and args.multi_model:
        parser.error("--multi-model and --async-output do not go together: InvokeEndpointAsync cannot name "
                     "a target model")
    if scaling and (args.min_instances is None or args.max_instances is None):
        parser.error("autoscaling needs both --min-instances and --max-instances")
    if args.target_invocations is not None and is_async:
        parser.error("--target-invocations is for real-time endpoints; an asynchronous one scales on "
                     "--target-backlog")
    for flag, value in (("--target-invocations", args.target_invocations), ("--target-backlog", args.target_backlog)):
        if value is not None and not scaling:
            parser.error(f"{flag} needs --min-instances and --max-instances")
    if scaling:
        if args.min_instances == 0 and not is_async:
            parser.error("--min-instances 0 needs --async-output: only asynchronous endpoints scale to zero")
        if args.min_instances > args.max_instances:
            parser.error("--min-instances is above --max-instances")
        if args.instance_count is not None and not args.min_instances <= args.instance_count <= args.max_instances:
            parser.error("--instance-count must lie within --min-instances..--max-instances")
        if args.no_wait:
            parser.error("autoscaling is registered once the endpoint is InService: drop --no-wait")


def _check_invoke_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.asynchronous:
        if args.input is None:
            parser.error("--async needs --input s3://BUCKET/PREFIX/ to upload the photo under")
        if args.target_model is not None:
            parser.error("--target-model does not go with --async: InvokeEndpointAsync cannot name a target model")
    else:
        for flag, value in (("--input", args.input), ("--timeout", args.timeout)):
            if value is not None:
                parser.error(f"{flag} goes with --async")


# ---- the commands ---------------------------------------------------------------------

def run_package(args: argparse.Namespace) -> int:
    if isinstance(args.output, str):  # an s3:// URI
        return _with_aws(run_package_to_s3)(args)
    package = package_model_dir(args.model_dir, args.output)
    model_data.print_package(package, f"wrote {package.path}", echo)
    return 0


def run_package_to_s3(args: argparse.Namespace, aws) -> int:
    """Package into a temporary file and upload it with its sha256, as deploy does."""
    bucket, key = parse_s3_uri(args.output)
    model_data.package_and_upload(aws.client("s3"), args.model_dir, bucket, key, echo)
    return 0


def run_transform(args: argparse.Namespace, aws) -> int:
    sm = aws.client("sagemaker")
    spec = transforming.TransformSpec(
        job_name=args.job_name or unique_name(args.model_name, timestamp()), model_name=args.model_name,
        input_uri=args.input, output_uri=args.output, instance_type=args.instance_type,
        instance_count=args.instance_count, content_type=args.content_type, accept=args.accept)
    arn = transforming.start(sm, spec)
    echo(f"started transform job {spec.job_name}")
    if args.no_wait:
        echo(f"job: {spec.job_name}")
        echo(f"arn: {arn}")
        return 0
    description = transforming.wait_finished(sm, spec.job_name, echo)
    status = description["TransformJobStatus"]
    duration = transforming.duration_s(description)
    echo(f"status: {status}")
    echo(f"job: {spec.job_name}")
    echo(f"output: {spec.output_uri}")
    echo(f"duration: {'unknown' if duration is None else f'{duration:.0f} s'}")
    outputs = count_objects(aws.client("s3"), spec.output_uri, transforming.OUTPUT_SUFFIX)
    echo(f"outputs: {outputs} (*{transforming.OUTPUT_SUFFIX})")
    if status != "Completed":
        raise DeployError(f"transform job {spec.job_name} {status}: "
                          f"{description.get('FailureReason') or 'no FailureReason given'}")
    return 0


def run_delete(args: argparse.Namespace, aws) -> int:
    endpoints.delete(aws.client("sagemaker"), aws.client("application-autoscaling"), aws.client("cloudwatch"),
                     args.endpoint_name, echo, keep_model=args.keep_model)
    return 0


def _with_aws(command: Callable[[argparse.Namespace, object], int]) -> Callable[[argparse.Namespace], int]:
    """Run `command(args, Aws(...))`, turning any AWS failure into one error line."""
    def run(args: argparse.Namespace) -> int:
        try:
            from . import aws
        except ImportError as exc:
            if (exc.name or "").partition(".")[0] not in ("boto3", "botocore"):
                raise
            fail(NO_BOTO3)
            return 2
        session = None
        try:
            session = aws.Aws(args.profile, args.region)
            return command(args, session)
        except aws.AWS_ERRORS as exc:
            fail(aws.failure_line(exc, session.operation if session else "session"))
            return 1
    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "check"):
        args.check(args)
    try:
        return args.run(args)
    except DeployError as exc:
        fail(str(exc))
        return exc.exit_status
    except KeyboardInterrupt:
        fail("interrupted (whatever AWS was asked to do carries on)")
        return 130

"""`maskrcnn-sagemaker`: the command line of the deploy tool.

    maskrcnn-sagemaker package MODEL_DIR --output model.tar.gz
    maskrcnn-sagemaker deploy --endpoint-name NAME --image-uri URI --role ARN ...
    maskrcnn-sagemaker invoke --endpoint-name NAME PHOTO [--accept ...] [--out FILE]
    maskrcnn-sagemaker transform --model-name NAME --input s3://... --output s3://... ...
    maskrcnn-sagemaker delete --endpoint-name NAME [--keep-model]

Progress and results go to stdout. Every failure ends in one line on stderr,
`maskrcnn-sagemaker: error: ...`, never a traceback: exit status 2 for a usage error or
unusable input (a bad flag combination, not a model directory, not a photo), 1 for
anything AWS refused (`<operation>: <code>: <message>`) or a deployment or job that failed.
This module is the one place where exceptions become those lines.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from engine.media_types import IMAGE_TYPES, JPEG, JSON

from . import endpoints
from . import invoke as invoking
from . import transform as transforming
from .autoscaling import Scaling
from .errors import DeployError, InputError
from .names import timestamp, unique_name
from .packaging import package_model_dir
from .s3 import count_objects, parse_s3_uri, upload

PROG = "maskrcnn-sagemaker"
DEFAULT_PREFIX = "maskrcnn-serve"  # s3://BUCKET/maskrcnn-serve/<model name>/model.tar.gz
DEFAULT_TARGET_INVOCATIONS = 100.0
DEFAULT_SERVERLESS_CONCURRENCY = 20
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
NO_BOTO3 = "boto3 is not installed: pip install 'maskrcnn-serve[deploy]'"


def echo(line: str) -> None:
    print(line, flush=True)


def fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


# ---- argument types -------------------------------------------------------------------

def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}" if high else f"{value} is below {low}")
        return value
    return parse


def _serverless_memory(text: str) -> int:
    value = _int_in(SERVERLESS_MEMORY_MB[0], SERVERLESS_MEMORY_MB[-1])(text)
    if value not in SERVERLESS_MEMORY_MB:
        raise argparse.ArgumentTypeError(f"{value} MB is not one of {', '.join(map(str, SERVERLESS_MEMORY_MB))}")
    return value


def _positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def _s3_uri(text: str) -> str:
    try:
        parse_s3_uri(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _s3_object(text: str) -> str:
    if not parse_s3_uri(_s3_uri(text))[1]:
        raise argparse.ArgumentTypeError(f"no object key in {text!r}")
    return text


def _custom_attributes(text: str) -> str:
    try:
        return invoking.check_custom_attributes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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

    package = commands.add_parser("package", help="check a model directory and write model.tar.gz")
    package.add_argument("model_dir", metavar="MODEL_DIR", type=Path)
    package.add_argument("--output", "-o", type=Path, required=True, help="the tarball to write")
    package.set_defaults(run=run_package)

    deploy = commands.add_parser("deploy", help="create or update a real-time or serverless endpoint")
    _add_aws_options(deploy)
    deploy.add_argument("--endpoint-name", required=True, metavar="NAME")
    deploy.add_argument("--image-uri", required=True, metavar="URI", help="the serving image in ECR")
    deploy.add_argument("--role", required=True, metavar="ARN", help="the SageMaker execution role")
    deploy.add_argument("--instance-type", metavar="TYPE", help="e.g. ml.m5.xlarge (or --serverless-memory)")
    deploy.add_argument("--instance-count", type=_int_in(1), metavar="N", help="initial instances (default 1, "
                        "or --min-instances)")
    data = deploy.add_mutually_exclusive_group(required=True)
    data.add_argument("--model-data", type=_s3_object, metavar="S3_URI", help="an uploaded model.tar.gz")
    data.add_argument("--model-dir", type=Path, metavar="DIR", help="package DIR and upload it to --bucket")
    deploy.add_argument("--bucket", help="with --model-dir: the S3 bucket to upload to")
    deploy.add_argument("--prefix", metavar="P",
                        help=f"with --model-dir: the key prefix (default {DEFAULT_PREFIX}/<model name>)")
    deploy.add_argument("--model-name", metavar="NAME", help="base name of the Model (default: the endpoint name); "
                        "a timestamp is appended")
    deploy.add_argument("--min-instances", type=_int_in(1), metavar="A", help="autoscaling: the fewest instances")
    deploy.add_argument("--max-instances", type=_int_in(1), metavar="B", help="autoscaling: the most instances")
    deploy.add_argument("--target-invocations", type=_positive_number, metavar="N", help="autoscaling: invocations "
                        f"per instance per minute to track (default {DEFAULT_TARGET_INVOCATIONS:g})")
    deploy.add_argument("--serverless-memory", type=_serverless_memory, metavar="MB",
                        help="a serverless endpoint with this much memory (1024..6144, steps of 1024)")
    deploy.add_argument("--serverless-max-concurrency", type=_int_in(1, 200), metavar="N",
                        help=f"serverless: concurrent requests (1..200, default {DEFAULT_SERVERLESS_CONCURRENCY})")
    deploy.add_argument("--startup-timeout", type=_int_in(60, 3600), metavar="S",
                        help="seconds the container may take to pass /ping (60..3600)")
    deploy.add_argument("--no-wait", action="store_true", help="do not wait for InService")
    deploy.set_defaults(run=_with_aws(run_deploy), check=lambda args: _check_deploy_args(deploy, args))

    invoke = commands.add_parser("invoke", help="send one photo to an endpoint")
    _add_aws_options(invoke)
    invoke.add_argument("--endpoint-name", required=True, metavar="NAME")
    invoke.add_argument("photo", metavar="PHOTO", type=Path, help="a JPEG or PNG file")
    invoke.add_argument("--accept", choices=invoking.ACCEPTS, default=JSON)
    invoke.add_argument("--out", type=Path, metavar="FILE", help="write the answer here (JSON goes to "
                        "stdout without it; an image to <photo stem>.segmented.jpg|png)")
    invoke.add_argument("--custom-attributes", type=_custom_attributes, metavar="JSON",
                        help='e.g. \'{"score_threshold": 0.7}\'')
    invoke.set_defaults(run=_with_aws(run_invoke))

    transform = commands.add_parser("transform", help="run a Batch Transform job over an S3 prefix")
    _add_aws_options(transform)
    transform.add_argument("--model-name", required=True, metavar="NAME", help="an existing SageMaker Model")
    transform.add_argument("--input", required=True, type=_s3_uri, metavar="S3_URI", help="prefix of the images")
    transform.add_argument("--output", required=True, type=_s3_uri, metavar="S3_URI", help="prefix for the answers")
    transform.add_argument("--instance-type", required=True, metavar="TYPE")
    transform.add_argument("--instance-count", type=_int_in(1), default=1, metavar="N")
    transform.add_argument("--content-type", choices=IMAGE_TYPES, default=JPEG)
    transform.add_argument("--accept", choices=invoking.ACCEPTS, default=JSON)
    transform.add_argument("--job-name", metavar="J", help="default: <model name>-<timestamp>")
    transform.add_argument("--no-wait", action="store_true", help="do not wait for the job to finish")
    transform.set_defaults(run=_with_aws(run_transform))

    delete = commands.add_parser("delete", help="delete an endpoint, its config, models and autoscaling")
    _add_aws_options(delete)
    delete.add_argument("--endpoint-name", required=True, metavar="NAME")
    delete.add_argument("--keep-model", action="store_true", help="leave the Model(s) in place")
    delete.set_defaults(run=_with_aws(run_delete))
    return parser


def _add_aws_options(parser: argparse.ArgumentParser, default=argparse.SUPPRESS) -> None:
    # On the main parser (default None) and on each command (SUPPRESS, so that a command
    # without them keeps what was given before the command name).
    parser.add_argument("--profile", default=default, help="AWS profile (default: AWS_PROFILE)")
    parser.add_argument("--region", default=default,
                        help="AWS region (default: AWS_REGION, AWS_DEFAULT_REGION or the profile's)")


def _check_deploy_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The combinations argparse cannot express; each breach is a usage error."""
    serverless = args.serverless_memory is not None
    scaling = args.min_instances is not None or args.max_instances is not None
    if args.model_dir is not None and not args.bucket:
        parser.error("--model-dir needs --bucket to upload the package to")
    if args.model_data is not None and (args.bucket or args.prefix):
        parser.error("--bucket and --prefix go with --model-dir, not --model-data")
    if not serverless and args.instance_type is None:
        parser.error("give --instance-type (or --serverless-memory for a serverless endpoint)")
    if not serverless and args.serverless_max_concurrency is not None:
        parser.error("--serverless-max-concurrency needs --serverless-memory")
    if serverless:
        for flag, value in (("--startup-timeout", args.startup_timeout),
                            ("--min-instances/--max-instances", scaling or None)):
            if value is not None:
                parser.error(f"{flag} does not apply to a serverless endpoint")
    if scaling and (args.min_instances is None or args.max_instances is None):
        parser.error("autoscaling needs both --min-instances and --max-instances")
    if args.target_invocations is not None and not scaling:
        parser.error("--target-invocations needs --min-instances and --max-instances")
    if scaling:
        if args.min_instances > args.max_instances:
            parser.error("--min-instances is above --max-instances")
        if args.instance_count is not None and not args.min_instances <= args.instance_count <= args.max_instances:
            parser.error("--instance-count must lie within --min-instances..--max-instances")
        if args.no_wait:
            parser.error("autoscaling is registered once the endpoint is InService: drop --no-wait")


# ---- the commands ---------------------------------------------------------------------

def run_package(args: argparse.Namespace) -> int:
    package = package_model_dir(args.model_dir, args.output)
    _print_package(package, f"wrote {package.path}")
    return 0


def _print_package(package, title: str) -> None:
    files = [m for m in package.members if not m.is_dir]
    echo(f"{title}: {package.size / 1e6:.1f} MB, {len(files)} files")
    for member in files:
        echo(f"  {member.size:>13,}  {member.name}")
    for skipped in package.skipped:
        echo(f"  skipped {skipped}")


def run_deploy(args: argparse.Namespace, aws) -> int:
    sm, aas = aws.client("sagemaker"), aws.client("application-autoscaling")
    stamp = timestamp()
    model_name = unique_name(args.model_name or args.endpoint_name, stamp)
    model_data = args.model_data
    if args.model_dir is not None:
        s3 = aws.client("s3")
        prefix = (args.prefix or f"{DEFAULT_PREFIX}/{model_name}").strip("/")
        with tempfile.TemporaryDirectory(prefix="maskrcnn-sagemaker-") as tmp:
            package = package_model_dir(args.model_dir, Path(tmp) / "model.tar.gz")
            _print_package(package, f"packaged {args.model_dir}")
            model_data = upload(s3, package.path, args.bucket, f"{prefix}/model.tar.gz")
        echo(f"uploaded {model_data}")
    scaling = None
    if args.min_instances is not None:
        scaling = Scaling(args.min_instances, args.max_instances,
                          args.target_invocations or DEFAULT_TARGET_INVOCATIONS)
    concurrency, instance_type = None, args.instance_type
    if args.serverless_memory is not None:
        concurrency = args.serverless_max_concurrency or DEFAULT_SERVERLESS_CONCURRENCY
        if instance_type or args.instance_count:  # a serverless variant has neither
            echo("serverless endpoint: --instance-type and --instance-count are not used")
            instance_type = None
    spec = endpoints.EndpointSpec(
        endpoint_name=args.endpoint_name, model_name=model_name,
        config_name=unique_name(args.endpoint_name, stamp), image_uri=args.image_uri,
        role_arn=args.role, model_data_url=model_data, instance_type=instance_type,
        instance_count=args.instance_count or (scaling.min_instances if scaling else 1),
        startup_timeout_s=args.startup_timeout, serverless_memory_mb=args.serverless_memory,
        serverless_max_concurrency=concurrency, scaling=scaling)
    description = endpoints.deploy(sm, aas, spec, echo, wait=not args.no_wait)
    echo(f"model: {spec.model_name}")
    echo(f"config: {spec.config_name}")
    echo(f"status: {description['EndpointStatus']}")
    echo(f"endpoint: {description['EndpointName']}")
    echo(f"arn: {description['EndpointArn']}")
    return 0


def run_invoke(args: argparse.Namespace, aws) -> int:
    body, content_type = invoking.read_photo(args.photo)
    answer_type, answer = invoking.invoke(aws.client("sagemaker-runtime"), args.endpoint_name, body,
                                          content_type, args.accept, args.custom_attributes)
    if args.out is None and args.accept == JSON:
        sys.stdout.write(answer.decode("utf-8", "replace").rstrip("\n") + "\n")
        return 0
    out = args.out or invoking.default_output(args.photo, args.accept)
    try:
        out.write_bytes(answer)
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or exc}") from None
    echo(f"wrote {out} ({len(answer):,} bytes, {answer_type})")
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
    endpoints.delete(aws.client("sagemaker"), aws.client("application-autoscaling"),
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

"""`maskrcnn-sagemaker invoke`: one photo through a real-time endpoint (a multi-model
endpoint's model with --target-model), or through an asynchronous one (--async), and the
answer written out the same way for both."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from engine.media_types import JSON

from . import asynchronous
from . import invoke as invoking
from . import invoke_async
from .errors import DeployError, InputError


def run_invoke(args: argparse.Namespace, aws, echo: Callable[[str], None]) -> int:
    if args.asynchronous:
        return _run_async(args, aws, echo)
    body, content_type = invoking.read_photo(args.photo)
    answer_type, answer = invoking.invoke(aws.client("sagemaker-runtime"), args.endpoint_name, body,
                                          content_type, args.accept, args.custom_attributes, args.target_model)
    return write_answer(args, answer, answer_type, echo)


def _run_async(args: argparse.Namespace, aws, echo: Callable[[str], None]) -> int:
    body, content_type = invoking.read_photo(args.photo, asynchronous.MAX_BODY_BYTES, "an asynchronous endpoint")
    s3 = aws.client("s3")
    submitted = invoke_async.submit(s3, aws.client("sagemaker-runtime"), args.endpoint_name, args.photo, body,
                                    content_type, args.input, args.accept, args.custom_attributes)
    echo(f"inference: {submitted.inference_id}")
    echo(f"input: {submitted.input_uri}")
    echo(f"output: {submitted.output_uri}")
    if submitted.failure_uri:
        echo(f"failure: {submitted.failure_uri}")
    answer = invoke_async.wait_for_answer(invoke_async.fetcher(s3), submitted, echo=echo,
                                          deadline_s=args.timeout or invoke_async.DEFAULT_TIMEOUT_S)
    if answer.failed:
        raise DeployError(f"inference {submitted.inference_id} failed: {invoke_async.failure_text(answer.body)}")
    return write_answer(args, answer.body, answer.content_type or args.accept, echo)


def write_answer(args: argparse.Namespace, answer: bytes, answer_type: str, echo: Callable[[str], None]) -> int:
    """JSON to stdout (its last lines) unless --out; an image to --out or <photo stem>.segmented.jpg|png."""
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

"""The command line's argument types: each turns a string into a checked value or raises
argparse.ArgumentTypeError, which argparse reports as a one-line usage error."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from . import invoke as invoking
from .names import check_name
from .s3 import parse_s3_uri

SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
PACKAGE_SUFFIX = ".tar.gz"  # what SageMaker unpacks, and a multi-model endpoint's TargetModel names


def int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is not in {low}..{high}" if high else f"{value} is below {low}")
        return value
    return parse


def serverless_memory(text: str) -> int:
    value = int_in(SERVERLESS_MEMORY_MB[0], SERVERLESS_MEMORY_MB[-1])(text)
    if value not in SERVERLESS_MEMORY_MB:
        raise argparse.ArgumentTypeError(f"{value} MB is not one of {', '.join(map(str, SERVERLESS_MEMORY_MB))}")
    return value


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return value


def sagemaker_name(text: str) -> str:
    try:
        return check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def s3_uri(text: str) -> str:
    try:
        parse_s3_uri(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def s3_object(text: str) -> str:
    if not parse_s3_uri(s3_uri(text))[1]:
        raise argparse.ArgumentTypeError(f"no object key in {text!r}")
    return text


def s3_prefix(text: str) -> str:
    """An s3:// prefix that ends in '/', as a multi-model endpoint's ModelDataUrl must: the
    models are the objects under it."""
    if not s3_uri(text).endswith("/"):
        raise argparse.ArgumentTypeError(f"{text!r} must end with '/' (a prefix, e.g. s3://bucket/models/)")
    return text


def package_output(text: str) -> Path | str:
    """A local path, or an s3://BUCKET/KEY.tar.gz to upload the package to."""
    if not text.startswith("s3://"):
        return Path(text)
    if not s3_object(text).endswith(PACKAGE_SUFFIX):
        raise argparse.ArgumentTypeError(f"{text!r} must end with {PACKAGE_SUFFIX} (SageMaker unpacks only those)")
    return text


def custom_attributes(text: str) -> str:
    try:
        return invoking.check_custom_attributes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def target_model(text: str) -> str:
    try:
        return invoking.check_target_model(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

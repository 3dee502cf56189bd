"""SageMaker resource names: checking a name a user gives, and making unique ones (a base
name plus a UTC timestamp) where none is given."""

from __future__ import annotations

import re
import time

MAX_NAME = 63  # models, endpoint configs, endpoints and transform jobs alike
# SageMaker's pattern for all of them: letters, digits and hyphens, starting and ending
# with a letter or a digit.
_VALID = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")
_INVALID = re.compile(r"[^a-zA-Z0-9-]+")


def check_name(name: str) -> str:
    """`name` if SageMaker accepts it as a resource name, else ValueError saying why.

    Checked here so that a bad name is a usage error before anything is uploaded or
    created, rather than a ValidationException halfway through a deployment.
    """
    if len(name) > MAX_NAME:
        raise ValueError(f"{name!r} is {len(name)} characters; SageMaker allows at most {MAX_NAME}")
    if not _VALID.fullmatch(name):
        raise ValueError(f"{name!r} is not a SageMaker name: letters, digits and hyphens, "
                         "starting and ending with a letter or digit")
    return name


def timestamp() -> str:
    """UTC time to the millisecond, e.g. `20261201-211702-431`: sorts as it happened."""
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"


def unique_name(base: str, stamp: str) -> str:
    """`base-stamp`, with characters SageMaker refuses replaced by '-' and `base` cut so the
    whole stays within 63 characters (`^[a-zA-Z0-9](-*[a-zA-Z0-9])*`)."""
    base = _INVALID.sub("-", base).strip("-")[: MAX_NAME - len(stamp) - 1].rstrip("-")
    return f"{base}-{stamp}" if base else stamp

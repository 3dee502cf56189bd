"""Unique, valid SageMaker resource names: a base name plus a UTC timestamp."""

from __future__ import annotations

import re
import time

MAX_NAME = 63  # models, endpoint configs, endpoints and transform jobs alike
_INVALID = re.compile(r"[^a-zA-Z0-9-]+")


def timestamp() -> str:
    """UTC time to the millisecond, e.g. `20261201-211702-431`: sorts as it happened."""
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"-{int(now * 1000) % 1000:03d}"


def unique_name(base: str, stamp: str) -> str:
    """`base-stamp`, with characters SageMaker refuses replaced by '-' and `base` cut so the
    whole stays within 63 characters (`^[a-zA-Z0-9](-*[a-zA-Z0-9])*`)."""
    base = _INVALID.sub("-", base).strip("-")[: MAX_NAME - len(stamp) - 1].rstrip("-")
    return f"{base}-{stamp}" if base else stamp

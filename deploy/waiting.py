"""Polling a resource until its status settles: a deadline, and a line at each change."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from .errors import DeployError


def wait_for_status(describe: Callable[[], dict], *, what: str, status_key: str,
                    done: Collection[str], failed: Collection[str], deadline_s: float,
                    interval_s: float, echo: Callable[[str], None],
                    sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> dict:
    """Call `describe()` until `description[status_key]` is in `done`, and return that
    description.

    Prints `[  42 s] <what>: <status>` whenever the status changes. A status in `failed`
    raises DeployError with the description's FailureReason; so does still waiting when
    the next poll would pass `deadline_s`.
    """
    start = clock()
    last = None
    while True:
        description = describe()
        status = description[status_key]
        elapsed = clock() - start
        if status != last:
            echo(f"[{elapsed:5.0f} s] {what}: {status}")
            last = status
        if status in done:
            return description
        if status in failed:
            reason = description.get("FailureReason") or "no FailureReason given"
            raise DeployError(f"{what} is {status}: {reason}")
        if elapsed + interval_s > deadline_s:
            raise DeployError(f"{what} is still {status} after {elapsed:.0f} s (waited at most {deadline_s:.0f} s)")
        sleep(interval_s)

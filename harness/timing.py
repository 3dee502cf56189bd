"""The one timer of the tests and the benchmarks: wall time by time.perf_counter unless a
clock is given (time.process_time for a process's CPU time, time.thread_time for a thread's).

    seconds, result = timed(fn, *args, **kwargs)  one call
    seconds, result = median_s(fn, runs, warmup)  the median of `runs` calls after `warmup`
    times, result = repeat(fn, runs, warmup)      every call's seconds
    summary_ms(times)                             {"p50_ms", "p99_ms", "mean_ms", "runs"}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def timed(fn: Callable, *args, clock: Callable[[], float] = time.perf_counter, **kwargs) -> tuple[float, Any]:
    """(seconds, result) of one call fn(*args, **kwargs); an exception propagates untimed."""
    start = clock()
    result = fn(*args, **kwargs)
    return clock() - start, result


def repeat(fn: Callable[[], Any], runs: int, warmup: int = 0) -> tuple[list[float], Any]:
    """The seconds of each of `runs` timed calls of fn(), after `warmup` untimed ones, and the
    last call's result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(runs):
        seconds, result = timed(fn)
        times.append(seconds)
    return times, result


def median_s(fn: Callable[[], Any], runs: int = 1, warmup: int = 0) -> tuple[float, Any]:
    """(median seconds of `runs` calls of fn() after `warmup` untimed ones, the last result)."""
    times, result = repeat(fn, runs, warmup)
    return float(np.median(times)), result


def summary_ms(times_s: Sequence[float]) -> dict:
    """Seconds per call -> their median, 99th percentile and mean in ms (two decimals), and
    how many."""
    ms = np.asarray(times_s) * 1000.0
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2), "runs": len(ms)}

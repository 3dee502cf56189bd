#!/usr/bin/env python3
"""Property-based fuzzing of the untrusted-input parsers, for a time budget.

    python benchmarks/fuzz.py [--minutes 3] [--targets images big_headers ...]

The targets (images, big_headers, arbitrary_bytes, non_bytes, decode_bombs,
custom_attributes, accept: their strategies and properties) are harness/fuzz_targets.py's;
tests/test_fuzz.py runs the same ones with a small example count.

The minutes are split evenly over the targets, run round-robin in batches of hypothesis
examples (no example database). Reports examples per target, distinct failures (with
hypothesis's shrunk example) and the peak RSS growth over a batch; writes
benchmarks/results/fuzz.json.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import os
import sys
import time
from collections import Counter
from pathlib import Path

import hypothesis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import write_results  # noqa: E402
from harness.fuzz_targets import TARGETS, run_target, seed_images, storage_outside_repo  # noqa: E402
from harness.proc import PeakRss  # noqa: E402
from server.config import DEFAULT_MAX_MEGAPIXELS  # noqa: E402


@contextlib.contextmanager
def quiet_decoders():
    """fd 2 to /dev/null for the block, yielding a file on the real stderr for our messages:
    libjpeg and libpng write thousands of warnings straight to fd 2. faulthandler still
    reports a crash (say a segfault in a decoder) on the real one."""
    sys.stderr.flush()
    was_enabled = faulthandler.is_enabled()
    real = os.fdopen(os.dup(2), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    faulthandler.enable(file=real)
    try:
        yield real
    finally:
        sys.stderr.flush()
        os.dup2(real.fileno(), 2)
        faulthandler.enable() if was_enabled else faulthandler.disable()
        real.close()


def _failure(exc: BaseException) -> dict:
    """What a failed run reports: the property's own exception (inside hypothesis's group,
    e.g. FlakyFailure, if any) and the shrunk example from the notes."""
    notes = list(getattr(exc, "__notes__", []))
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
        notes += getattr(exc, "__notes__", [])
    cause = exc.__cause__ or exc.__context__
    return {"exception": type(exc).__name__, "message": str(exc)[:500],
            "cause": None if cause is None else f"{type(cause).__name__}: {str(cause)[:300]}",
            "example": "\n".join(notes)[:2000]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="total time, split evenly over the targets")
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--batch", type=int, default=500, help="hypothesis examples per run")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.json")
    args = parser.parse_args(argv)

    per_target_s = args.minutes * 60 / len(args.targets)
    stats = {name: {"examples": 0, "seconds": 0.0, "outcomes": Counter(), "failures": [], "peak_mb": 0.0}
             for name in args.targets}
    seed_images()
    with storage_outside_repo(), quiet_decoders() as log:
        # round-robin in batches, so each target gets its share even if the budget is cut short
        while any(s["seconds"] < per_target_s for s in stats.values()):
            for name, s in stats.items():
                if s["seconds"] >= per_target_s:
                    continue
                start = time.perf_counter()
                outcomes = Counter()
                try:
                    with PeakRss() as memory:  # per batch: each one restarts the high-water mark
                        # a target's known failure recurs in most batches: shrink it once only
                        run_target(name, args.batch, outcomes=outcomes, shrink=not s["failures"])
                except Exception as exc:  # noqa: BLE001 (a finding: recorded, and the fuzzing goes on)
                    failure = _failure(exc)
                    if all(f["message"] != failure["message"] for f in s["failures"]):  # once each
                        s["failures"].append(failure)
                        print(f"{name}: FAILURE {failure['message']}\n{failure['example']}", file=log)
                s["peak_mb"] = max(s["peak_mb"], memory.growth_mb)
                s["seconds"] += time.perf_counter() - start
                s["outcomes"].update(outcomes)
                s["examples"] += sum(outcomes.values())
            print({n: s["examples"] for n, s in stats.items()}, file=log)

    targets = {name: {"examples": s["examples"], "seconds": round(s["seconds"], 1),
                      "examples_per_s": round(s["examples"] / max(s["seconds"], 1e-9), 1),
                      "peak_rss_growth_mb": round(s["peak_mb"], 1),
                      "outcomes": dict(s["outcomes"].most_common()), "failures": s["failures"]}
               for name, s in stats.items()}
    write_results({"benchmark": "fuzz", "minutes": args.minutes, "decode_max_megapixels": DEFAULT_MAX_MEGAPIXELS,
                   "targets": targets, "failures": sum(len(t["failures"]) for t in targets.values()),
                   "peak_rss_growth_mb": round(max(s["peak_mb"] for s in stats.values()), 1),
                   "hypothesis": hypothesis.__version__},
                  args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

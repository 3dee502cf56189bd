"""harness/: what the tests and the benchmarks share. Its timer and /proc reader, and the
boundaries: the tests import the harness, never the benchmarks; the harness is not packaged."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from harness import proc, timing

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    """Every module a Python file imports, at any depth (function-level imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_tests_import_the_harness_not_the_benchmarks():
    importers = sorted(path.name for path in (ROOT / "tests").glob("*.py")
                       if any(name == "benchmarks" or name.startswith("benchmarks.") for name in _imported_modules(path)))
    assert importers == [], f"import from harness/ instead of benchmarks/: {importers}"


def test_the_harness_imports_no_benchmark_and_no_test_module():
    for path in (ROOT / "harness").glob("*.py"):
        top = {name.split(".")[0] for name in _imported_modules(path)}
        assert not top & {"benchmarks", "tests", "helpers", "conftest", "pytest"}, path.name


def test_the_harness_is_not_packaged():
    import tomllib

    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(pattern.startswith("harness") for pattern in include), include


def test_timed_returns_the_seconds_and_the_result():
    seconds, result = timing.timed(lambda a, b=0: a + b, 2, b=3)
    assert result == 5 and seconds >= 0
    readings = iter([10.0, 12.5])  # the clock it is given is read before and after the call
    assert timing.timed(lambda: "done", clock=lambda: next(readings)) == (2.5, "done")


def test_repeat_and_median_run_the_warm_ups_untimed():
    calls = []
    times, last = timing.repeat(lambda: calls.append(len(calls)) or len(calls), runs=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and last == 5
    median, last = timing.median_s(lambda: "x", runs=5)
    assert last == "x" and 0 <= median < 1


def test_summary_ms():
    summary = timing.summary_ms([0.001, 0.002, 0.003, 0.010])
    assert summary == {"p50_ms": 2.5, "p99_ms": 9.79, "mean_ms": 4.0, "runs": 4}


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="reads Linux /proc")
def test_the_proc_reader_sees_this_process_grow():
    assert 0 < proc.rss_mb() <= proc.peak_rss_mb()
    assert proc.status_kb(os.getpid(), "VmRSS") > 0
    with proc.PeakRss() as memory:
        block = bytearray(64 << 20)  # touched: resident
        block[::4096] = b"\x01" * len(block[::4096])
    assert 60 < memory.growth_mb < 200
    assert proc.cpu_seconds() > 0
    with pytest.raises(KeyError):
        proc.status_kb("self", "NoSuchField")

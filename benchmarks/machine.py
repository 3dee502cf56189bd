"""A description of the machine a benchmark ran on, for the results files.

    python benchmarks/machine.py       # prints it, to record beside a figure
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.proc import cpu_flags  # noqa: E402


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


# the instruction sets the CPU runtimes' speed depends on (FP32 AVX2/AVX-512, INT8 VNNI,
# BF16 AVX-512 BF16 and AMX), as /proc/cpuinfo names them
CPU_FEATURES = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_features() -> list[str]:
    """Which of CPU_FEATURES this CPU has (empty where /proc/cpuinfo cannot be read)."""
    flags = cpu_flags()
    return [f for f in CPU_FEATURES if f in flags]


def package_versions(names) -> dict:
    """Installed version of each distribution in `names` (absent ones left out)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def describe(packages=("numpy", "opencv-python-headless", "onnxruntime", "openvino", "torch", "torchvision", "falcon", "waitress")) -> dict:
    versions = package_versions(packages)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "cpu_features": cpu_features(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "packages": versions,
    }


def write_results(report: dict, path) -> None:
    """Stamp `report` with the machine and date, write it as JSON to `path` and print it
    (without the machine block)."""
    import time

    report = {**report, "machine": describe(), "date": time.strftime("%Y-%m-%d")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    print(json.dumps(describe(), indent=2))

"""Installing the project's `export` extra (torch, torchvision, onnx, ...) into this Python's
virtual environment, for the first build of a named model. Never into a system Python.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from collections.abc import Callable

from engine.errors import ModelDirError

# The versions the parity tests pass with (test.sh installs the same; a test checks).
VERIFIED_TORCH = ("torch==2.14.1", "torchvision==0.29.1")
EXPORT_MODULES = ("torch", "torchvision", "onnx")  # what the child export imports


def export_requirements() -> list[str]:
    """What `pip install` needs for the export: the verified torch pins, then the rest of the
    project's `export` extra (read from the installed metadata, so pyproject.toml stays the list)."""
    try:
        declared = importlib.metadata.requires("maskrcnn-serve") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        declared = ['onnx>=1.15; extra == "export"']
    pinned = {pin.split("==")[0] for pin in VERIFIED_TORCH}
    rest = []
    for line in declared:  # e.g. 'onnx>=1.15; extra == "export"'
        requirement, _, marker = (part.strip() for part in line.partition(";"))
        name = re.match(r"[A-Za-z0-9_.-]*", requirement).group(0).lower()
        if re.search(r"extra\s*==\s*['\"]export['\"]", marker) and name not in pinned:
            rest.append(requirement)
    return [*VERIFIED_TORCH, *rest]


def missing_export_modules() -> list[str]:
    """Which of EXPORT_MODULES this Python cannot import (found, not imported)."""
    return [name for name in EXPORT_MODULES if importlib.util.find_spec(name) is None]


def install_export_requirements(model_name: str, missing: list[str], say: Callable[[str], None]) -> None:
    """pip-install export_requirements() into this Python's virtual environment (pip's progress
    shown on stderr); ModelDirError with one line where it cannot or pip fails."""
    requirements = export_requirements()
    by_hand = f"install them yourself (pip install {' '.join(repr(r) for r in requirements)}) or use --model-dir"
    if sys.prefix == sys.base_prefix:  # not a venv: never install into a system Python
        raise ModelDirError(f"--model {model_name} needs {', '.join(missing)} to build the model, and this "
                            f"Python ({sys.executable}) is not a virtual environment; {by_hand}")
    if importlib.util.find_spec("pip") is None:
        raise ModelDirError(f"--model {model_name} needs {', '.join(missing)}, and this Python has no pip; {by_hand}")
    say(f"[install] installing {' '.join(requirements)} into {sys.prefix} (first use only; pip's progress follows)")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--progress-bar", "on", *requirements],
                            stdout=child_stdout(), stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ModelDirError(f"installing {', '.join(requirements)} failed (pip exited {result.returncode}; "
                            f"its error is above); {by_hand}")


def child_stdout():
    """Our stderr for a child's stdout, or None (inherit) where it is not a real file (pytest):
    the children's lines go to stderr, while stdout is the server's JSON log."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return None

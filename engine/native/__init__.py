"""The sources of the engine's native libraries (roi_align.c, torch_kernels.cpp), which setup.py
builds into the engine package as optional extensions, and `load`, which finds a built one."""

from __future__ import annotations

import ctypes
import importlib.machinery
from pathlib import Path

ENGINE_DIR = Path(__file__).resolve().parent.parent  # where setup.py's Extension("engine.<name>") lands


def load(name: str) -> ctypes.CDLL | None:
    """The built library engine/<name><extension suffix> (e.g. "_roi_align"), or None where the
    install had no compiler for it."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = ENGINE_DIR / f"{name}{suffix}"
        if path.is_file():
            return ctypes.CDLL(str(path))
    return None

"""detectron2 as the tests' reference for detectron2 models (never imported by the product).

detectron2 is not on the package index. `load()` returns an installed detectron2 if there is
one, else the unmodified copy of its source beside the project (../shared/vendor/detectron2,
or MASKRCNN_DETECTRON2_SOURCE), put on sys.path; its pure-Python code runs the Mask R-CNN FPN
models on the CPU without its C++ extension. If neither exists the tests that need it fail
with that message: they are part of CI, not optional.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDORED = [ROOT.parent / "shared" / "vendor" / "detectron2", Path("/work/shared/vendor/detectron2")]


def source_dirs() -> list[Path]:
    """Where a copy of detectron2's source may be, in the order tried."""
    configured = os.environ.get("MASKRCNN_DETECTRON2_SOURCE")
    return ([Path(configured)] if configured else []) + VENDORED


def load():
    """The detectron2 package (installed, else the vendored source)."""
    try:
        return importlib.import_module("detectron2")
    except ImportError:
        pass
    for folder in source_dirs():
        if (folder / "detectron2" / "__init__.py").is_file():
            sys.path.insert(0, str(folder))
            return importlib.import_module("detectron2")
    raise RuntimeError("detectron2 is neither installed nor found in "
                       + ", ".join(map(str, source_dirs())) + " (set MASKRCNN_DETECTRON2_SOURCE)")


def configs_dir() -> Path:
    """detectron2's model-zoo configs (configs/COCO-InstanceSegmentation/...)."""
    package = Path(load().__file__).resolve().parent
    for candidate in (package.parent / "configs", package / "model_zoo" / "configs"):
        if (candidate / "Base-RCNN-FPN.yaml").is_file():
            return candidate
    raise RuntimeError(f"detectron2's configs are not beside {package}")

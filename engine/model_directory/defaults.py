"""Which model directory to use when none is named, shared by `serve` and `python -m engine`.

The order: --model-dir, else $SM_MODEL_DIR, else /opt/ml/model (where SageMaker unpacks
model.tar.gz), else the demo model shipped as package data of the sibling `demo` package
(demo/model: circles, squares and triangles), so a fresh machine works offline. A directory
that was asked for must exist: a typo is an error that says how to build one, never a
silent fallback to the demo model.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..environment import SM_MODEL_DIR
from ..errors import ModelDirError

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = "/opt/ml/model"  # SageMaker unpacks model.tar.gz here
# One line wherever the demo model is in use (the CLI, the server's log, /ping, the web page);
# {classes} from the model's class names.
DEMO_NOTICE = ("the demo model knows only {classes} (synthetic shapes); for real photos run "
               "`./serve.sh --coco` (or `serve --model coco-v1`): torchvision's COCO Mask R-CNN, "
               "built on first use")


def bundled_model_dir() -> Path | None:
    """demo/model, the demo model shipped as package data of `demo`; None if not installed."""
    try:
        root = importlib.resources.files("demo")
    except ModuleNotFoundError:
        return None
    # Installed packages are plain directories (setuptools never zips them), and ONNX
    # Runtime needs real file paths, so a Path is what we hand on.
    path = Path(str(root / "model"))
    return path if (path / "model.json").is_file() else None


def is_demo_model(path) -> bool:
    """Whether `path` is the bundled demo model directory (after resolving links)."""
    demo = bundled_model_dir()
    return demo is not None and Path(path).resolve() == demo.resolve()


def demo_notice(class_names: Sequence[str]) -> str:
    """DEMO_NOTICE for a model with these class names (background first, as in model.json)."""
    names = [name for name in class_names if name != "__background__"]
    classes = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)
    return DEMO_NOTICE.format(classes=classes or "a few shapes")


def model_dir_not_found(path) -> str:
    """The message for a model directory that does not exist: how to build one, where the demo is."""
    demo = bundled_model_dir()
    # --output first: tests/test_server_e2e.py looks for "build_engine.py --output"
    message = (f"model directory not found: {path}; build one with `python build_engine.py --output {path} "
               f"--weights coco`, or serve torchvision's COCO model with `serve --model coco-v1`")
    if demo is None:
        return message + " (the bundled demo model in demo/model is not installed)"
    return message + f", or give no --model-dir and no $SM_MODEL_DIR to use the demo model at {demo}"


@dataclass(frozen=True)
class ModelDirChoice:
    """The model directory picked, and why (`reason`: what was given, or what was missing)."""

    path: Path
    reason: str
    demo: bool

    def describe(self) -> str:
        """One line for people, e.g. "model: demo model at .../demo/model (no --model-dir, ...)"."""
        where = f"demo model at {self.path}" if self.demo else str(self.path)
        return f"model: {where} ({self.reason})"


def choose_model_dir(arg: str | Path | None, environ: Mapping[str, str]) -> ModelDirChoice:
    """--model-dir (`arg`), else $SM_MODEL_DIR, else /opt/ml/model, else the bundled demo model.

    Empty strings count as not given. Raises ModelDirError when a requested directory does
    not exist, or when nothing was requested and neither /opt/ml/model nor the demo model is there.
    """
    if arg:
        path, reason = Path(arg), "--model-dir"
    elif environ.get(SM_MODEL_DIR):
        path, reason = Path(environ[SM_MODEL_DIR]), f"${SM_MODEL_DIR}"
    else:
        path, reason = Path(DEFAULT_MODEL_DIR), "no --model-dir or $SM_MODEL_DIR"
        if not path.is_dir():
            demo = bundled_model_dir()
            if demo is None:
                raise ModelDirError(model_dir_not_found(path))
            return ModelDirChoice(demo, f"no --model-dir, $SM_MODEL_DIR or {DEFAULT_MODEL_DIR}", demo=True)
    if not path.is_dir():
        raise ModelDirError(model_dir_not_found(path))
    return ModelDirChoice(path, reason, demo=is_demo_model(path))


def resolve_model_dir(arg: str | Path | None, environ: Mapping[str, str]) -> Path:
    """choose_model_dir's path; when it is the demo model, a warning (with DEMO_NOTICE) is logged."""
    choice = choose_model_dir(arg, environ)
    if choice.demo:
        logger.warning("%s: %s", choice.describe(), demo_notice(_class_names(choice.path)),
                       extra={"fields": {"model_dir": str(choice.path), "demo": True}})
    return choice.path


def _class_names(path: Path) -> list[str]:
    """model.json's class names, for a message only: loading the model reports a bad file."""
    try:
        names = json.loads((path / "model.json").read_text()).get("class_names")
    except (OSError, ValueError, AttributeError):
        return []
    return [str(name) for name in names] if isinstance(names, list) else []

"""Building a named model's directory on first use: `ensure_named_model`.

The weights are looked for first (offline, the one line naming --weights PATH comes before
minutes of installing), then the export extra is installed if missing (provision.install),
the weights fetched (provision.download), and `build_engine.py` run in a child process into
the cache folder (engine.model_directory.named), under a lock so that two servers started
together build once.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from engine.environment import MASKRCNN_CACHE_DIR
from engine.errors import ModelDirError
from engine.model_directory.named import (NamedModel, WeightsSource, built_paths, cached_weights, named_model,
                                          reusable)

from .download import download, download_hint, unreachable_reason
from .install import child_stdout, install_export_requirements, missing_export_modules

Say = Callable[[str], None]


def _say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_named_model(name: str, weights: str | Path | None = None, environ: Mapping[str, str] = os.environ,
                       say: Say = _say_on_stderr) -> Path:
    """The model directory for `name`, built under the cache folder first if needed; its path.

    `weights`: a state_dict file to build from instead of torchvision's download (for machines
    without network). Progress goes to `say`, one line per step, and the children's own output
    (pip's, torchvision's download bar, the exporter's steps) to stderr. Raises ModelDirError
    with one line on any failure, the offline one naming --weights PATH.
    """
    model = named_model(name)
    target, stamp = built_paths(model, environ)
    source_path = Path(weights).expanduser() if weights else cached_weights(model, environ)
    if weights and not source_path.is_file():
        raise ModelDirError(f"weights file not found: {source_path}")
    if reusable(target, stamp, source_path):
        say(f"{model.name}: using {target} (built earlier)")
        return target
    models = target.parent
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelDirError(f"cannot create the model cache {models}: {exc} (set ${MASKRCNN_CACHE_DIR})") from None
    with _build_lock(models / f".{model.name}.lock"):
        if reusable(target, stamp, source_path):  # another process built it while we waited
            say(f"{model.name}: using {target} (just built by another process)")
            return target
        _build(model, target, stamp, source_path, bool(weights), environ, say)
    return target


@contextlib.contextmanager
def _build_lock(path: Path):
    """An exclusive lock file, so two servers started together build once."""
    import fcntl

    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(model: NamedModel, target: Path, stamp: Path, source_path: Path, from_file: bool,
           environ: Mapping[str, str], say: Say) -> None:
    start = time.perf_counter()
    # Weights first: offline this is the only line, before minutes of installing.
    if not from_file and not source_path.is_file():
        reason = unreachable_reason(model.weights_url)
        if reason:
            raise ModelDirError(download_hint(model.zoo_config or model.arch, model.weights_url, reason,
                                              model.framework))
    what = f"detectron2 {model.zoo_config}" if model.zoo_config else f"torchvision {model.arch}"
    say(f"{model.name}: first use: building {target} ({what}, COCO weights)")
    missing = missing_export_modules()
    if missing:
        install_export_requirements(model.name, missing, say)
    else:
        say(f"[install] torch, torchvision and onnx: already installed in {sys.prefix}")
    if from_file:
        say(f"[weights] {source_path}")
        weights_arg = str(source_path)
    elif model.framework == "detectron2":
        if source_path.is_file():
            say(f"[weights] detectron2's COCO weights from the cache ({source_path})")
        else:
            say(f"[weights] downloading {model.weights_url} into {source_path.parent}")
            download(model.weights_url, source_path)
        weights_arg = str(source_path)
    elif source_path.is_file():
        say(f"[weights] torchvision's COCO weights from the torch-hub cache ({source_path})")
        weights_arg = "coco"
    else:
        say(f"[weights] downloading {model.weights_url} into the torch-hub cache ({source_path.parent})")
        weights_arg = "coco"
    say("[export] build_engine.py: the ONNX graphs and model.json (under a minute on a few cores)")
    if model.framework == "detectron2":
        config = target.parent / f"{model.name}.yaml"
        config.write_text(json.dumps(model.detectron2_config, indent=2) + "\n")  # JSON is YAML
        which = ["--detectron2-config", str(config), "--class-names", "coco"]
    else:
        which = ["--arch", model.arch]
    command = [sys.executable, "-m", "build_engine", *which, "--weights", weights_arg,
               "--output", str(target), "--name", model.name, "--force"]
    # The exporter's lines and torchvision's download bar go to stderr; stdout is the server's log.
    result = subprocess.run(command, env=dict(environ), stdout=child_stdout(), stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ModelDirError(f"building {model.name} failed (build_engine.py exited {result.returncode}; "
                            f"its error is above)")
    if not source_path.is_file():
        raise ModelDirError(f"build_engine.py finished but the weights file {source_path} is not there")
    stamp.write_text(WeightsSource.of(source_path).to_json())
    say(f"{model.name}: ready in {time.perf_counter() - start:.0f} s; later starts reuse {target}")

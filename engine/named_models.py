"""Named models (`serve --model coco-v1`): torchvision's COCO Mask R-CNNs, built on first use.

The first start with a name installs what the export needs (torch, torchvision, onnx) into
this Python's virtual environment, fetches torchvision's COCO weights through its weights
API (so they land in the torch-hub cache, and a second build downloads nothing), runs
`build_engine.py` in a child process and keeps the model directory under the cache folder:

    $MASKRCNN_CACHE_DIR, else $XDG_CACHE_HOME/maskrcnn-serve, else ~/.cache/maskrcnn-serve
        models/coco-v1/          the model directory (model.json + ONNX graphs)
        models/coco-v1.source    which weights file it was built from (path, size, mtime), and
                                 the model.json format (a newer engine rebuilds an older one)

Later starts reuse the directory while the weights file it was built from is unchanged (or
gone). Nothing here imports torch: the server process never does; only the child export does.
Without network, and with no cached weights, the whole thing is one line naming --weights PATH.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .errors import ModelDirError
from .model_dir import MODEL_FORMAT

# torchvision's Mask R-CNN builders that build_engine.py exports (torchvision.models.detection.<arch>).
ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
# torchvision's FPN backbones build_engine.py --backbone builds MaskRCNN on: resnet_fpn_backbone's ...
RESNET_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                    "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
# ... and mobilenet_backbone(..., fpn=True)'s
MOBILENET_BACKBONES = ("mobilenet_v3_large", "mobilenet_v3_small")
BACKBONES = RESNET_BACKBONES + MOBILENET_BACKBONES
# The versions the parity tests pass with (test.sh installs the same; a test checks).
VERIFIED_TORCH = ("torch==2.14.1", "torchvision==0.29.1")
PROBE_TIMEOUT_S = 5.0  # the reachability check before a download; DNS alone may hang longer


@dataclass(frozen=True)
class NamedModel:
    """A torchvision Mask R-CNN with COCO weights; `weights_url` is its weights enum's `.url`."""

    name: str
    arch: str
    weights_enum: str  # torchvision.models.detection.<weights_enum>, for people and tests
    weights_url: str

    @property
    def weights_file(self) -> str:
        """The file name torch.hub caches the weights under (its hash prefix included)."""
        return url_file_name(self.weights_url)


def url_file_name(url: str) -> str:
    """The last path segment of `url`: the name torch.hub caches a download under."""
    return Path(urlparse(url).path).name


# The URLs are torchvision's own (tests/test_named_models.py compares them with its enums);
# spelled here because the server resolves names without importing torchvision.
NAMED_MODELS = {
    model.name: model
    for model in (
        NamedModel("coco-v1", ARCHS[0], "MaskRCNN_ResNet50_FPN_Weights.COCO_V1",
                   "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"),
        NamedModel("coco-v2", ARCHS[1], "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1",
                   "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"),
    )
}


def named_model(name: str) -> NamedModel:
    """The model called `name`; ModelDirError listing the names for any other."""
    try:
        return NAMED_MODELS[name]
    except KeyError:
        raise ModelDirError(f"unknown model {name!r}; choose one of {', '.join(NAMED_MODELS)}") from None


def cache_dir(environ: Mapping[str, str]) -> Path:
    """$MASKRCNN_CACHE_DIR, else $XDG_CACHE_HOME/maskrcnn-serve, else ~/.cache/maskrcnn-serve."""
    if environ.get("MASKRCNN_CACHE_DIR"):
        return Path(environ["MASKRCNN_CACHE_DIR"]).expanduser()
    return _xdg_cache(environ) / "maskrcnn-serve"


def torch_hub_dir(environ: Mapping[str, str]) -> Path:
    """torch.hub.get_dir() without torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub."""
    torch_home = environ.get("TORCH_HOME") or str(_xdg_cache(environ) / "torch")
    return Path(torch_home).expanduser() / "hub"


def _xdg_cache(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("XDG_CACHE_HOME") or Path(environ.get("HOME") or Path.home()) / ".cache").expanduser()


def hub_checkpoint(url: str, environ: Mapping[str, str] = os.environ) -> Path:
    """Where torch.hub.load_state_dict_from_url caches `url`: <hub dir>/checkpoints/<file name>."""
    return torch_hub_dir(environ) / "checkpoints" / url_file_name(url)


def unreachable_reason(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None if a HEAD request to `url` gets any HTTP answer within `timeout_s`, else why not.

    The request runs in a daemon thread because name resolution ignores socket timeouts: an
    offline machine whose DNS never answers would otherwise hang here.
    """
    import urllib.error
    import urllib.request

    outcome: list[str | None] = []

    def probe():
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # the server answered: the network works
            outcome.append(None)
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
            outcome.append(str(getattr(exc, "reason", None) or exc))

    thread = threading.Thread(target=probe, name="weights-url-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    return outcome[0] if outcome else f"no answer within {timeout_s:g} s"


def download_hint(arch: str, url: str, reason: str) -> str:
    """The one line for COCO weights that cannot be downloaded (build_engine.py says it too)."""
    return (f"cannot download torchvision's COCO weights for {arch} from {url} ({reason}); "
            f"without network access, download that file elsewhere and pass --weights PATH")


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
    """Which of torch, torchvision and onnx this Python cannot import (found, not imported)."""
    return [name for name in ("torch", "torchvision", "onnx") if importlib.util.find_spec(name) is None]


@dataclass(frozen=True)
class WeightsSource:
    """The weights file a model directory is built from, and how to tell whether it changed."""

    path: Path
    size: int
    mtime_ns: int
    model_format: str = MODEL_FORMAT  # a directory in an older format is rebuilt, not served

    @classmethod
    def of(cls, path: Path) -> WeightsSource:
        stat = path.stat()
        return cls(path.resolve(), stat.st_size, stat.st_mtime_ns)

    def to_json(self) -> str:
        return json.dumps({"path": str(self.path), "size": self.size, "mtime_ns": self.mtime_ns,
                           "model_format": self.model_format}) + "\n"

    @classmethod
    def read(cls, file: Path) -> WeightsSource | None:
        try:
            data = json.loads(file.read_text())
            return cls(Path(data["path"]), int(data["size"]), int(data["mtime_ns"]), str(data["model_format"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


Say = Callable[[str], None]


def _say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_named_model(name: str, weights: str | Path | None = None, environ: Mapping[str, str] = os.environ,
                       say: Say = _say_on_stderr) -> Path:
    """The model directory for `name`, built under cache_dir() first if needed; its path.

    `weights`: a state_dict file to build from instead of torchvision's download (for machines
    without network). Progress goes to `say`, one line per step, and the children's own output
    (pip's, torchvision's download bar, the exporter's steps) to stderr. Raises ModelDirError
    with one line on any failure, the offline one naming --weights PATH.
    """
    model = named_model(name)
    models = cache_dir(environ) / "models"
    target = models / model.name
    stamp = models / f"{model.name}.source"
    source_path = Path(weights).expanduser() if weights else hub_checkpoint(model.weights_url, environ)
    if weights and not source_path.is_file():
        raise ModelDirError(f"weights file not found: {source_path}")
    if _reusable(target, stamp, source_path):
        say(f"{model.name}: using {target} (built earlier)")
        return target
    try:
        models.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelDirError(f"cannot create the model cache {models}: {exc} (set $MASKRCNN_CACHE_DIR)") from None
    with _build_lock(models / f".{model.name}.lock"):
        if _reusable(target, stamp, source_path):  # another process built it while we waited
            say(f"{model.name}: using {target} (just built by another process)")
            return target
        _build(model, target, stamp, source_path, bool(weights), environ, say)
    return target


def _reusable(target: Path, stamp: Path, source_path: Path) -> bool:
    """A complete directory whose weights file is unchanged, or no longer there to compare."""
    if not (target / "model.json").is_file():
        return False
    built_from = WeightsSource.read(stamp)
    if built_from is None or built_from.model_format != MODEL_FORMAT:
        return False
    if not source_path.is_file():
        return True  # e.g. the torch-hub cache was cleared: the directory is still good
    return WeightsSource.of(source_path) == built_from


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
            raise ModelDirError(download_hint(model.arch, model.weights_url, reason))
    say(f"{model.name}: first use: building {target} (torchvision {model.arch}, COCO weights)")
    missing = missing_export_modules()
    if missing:
        _install_export_requirements(model, missing, say)
    else:
        say(f"[install] torch, torchvision and onnx: already installed in {sys.prefix}")
    if from_file:
        say(f"[weights] {source_path}")
        weights_arg = str(source_path)
    elif source_path.is_file():
        say(f"[weights] torchvision's COCO weights from the torch-hub cache ({source_path})")
        weights_arg = "coco"
    else:
        say(f"[weights] downloading {model.weights_url} into the torch-hub cache ({source_path.parent})")
        weights_arg = "coco"
    say("[export] build_engine.py: the ONNX graphs and model.json (under a minute on a few cores)")
    command = [sys.executable, "-m", "build_engine", "--arch", model.arch, "--weights", weights_arg,
               "--output", str(target), "--name", model.name, "--force"]
    # The exporter's lines and torchvision's download bar go to stderr; stdout is the server's log.
    result = subprocess.run(command, env=dict(environ), stdout=_stderr(), stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ModelDirError(f"building {model.name} failed (build_engine.py exited {result.returncode}; "
                            f"its error is above)")
    if not source_path.is_file():
        raise ModelDirError(f"build_engine.py finished but the weights file {source_path} is not there")
    stamp.write_text(WeightsSource.of(source_path).to_json())
    say(f"{model.name}: ready in {time.perf_counter() - start:.0f} s; later starts reuse {target}")


def _install_export_requirements(model: NamedModel, missing: list[str], say: Say) -> None:
    """pip-install export_requirements() into this Python's virtual environment (pip's progress shown)."""
    requirements = export_requirements()
    by_hand = f"install them yourself (pip install {' '.join(repr(r) for r in requirements)}) or use --model-dir"
    if sys.prefix == sys.base_prefix:  # not a venv: never install into a system Python
        raise ModelDirError(f"--model {model.name} needs {', '.join(missing)} to build the model, and this "
                            f"Python ({sys.executable}) is not a virtual environment; {by_hand}")
    if importlib.util.find_spec("pip") is None:
        raise ModelDirError(f"--model {model.name} needs {', '.join(missing)}, and this Python has no pip; {by_hand}")
    say(f"[install] installing {' '.join(requirements)} into {sys.prefix} (first use only; pip's progress follows)")
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--progress-bar", "on", *requirements],
                            stdout=_stderr(), stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ModelDirError(f"installing {', '.join(requirements)} failed (pip exited {result.returncode}; "
                            f"its error is above); {by_hand}")


def _stderr():
    """Our stderr for a child's stdout, or None (inherit) where it is not a real file (pytest)."""
    try:
        sys.stderr.fileno()
        return sys.stderr
    except (AttributeError, OSError, ValueError):
        return None

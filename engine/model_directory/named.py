"""Named models (`serve --model coco-v1`): torchvision's COCO Mask R-CNNs and detectron2's
model-zoo COCO Mask R-CNNs, built on first use.

The first start with a name installs what the export needs (torch, torchvision, onnx) into
this Python's virtual environment, fetches the COCO weights (torchvision's through its
weights API, so they land in the torch-hub cache; detectron2's model-zoo .pkl into the cache
folder's downloads/), so a second build downloads nothing, runs `build_engine.py` in a child
process and keeps the model directory under the cache folder:

    $MASKRCNN_CACHE_DIR, else $XDG_CACHE_HOME/maskrcnn-serve, else ~/.cache/maskrcnn-serve
        models/coco-v1/          the model directory (model.json + ONNX graphs)
        models/coco-v1.source    which weights file it was built from (path, size, mtime), and
                                 the model.json format (a newer engine rebuilds an older one)
        models/<name>.yaml       a detectron2 model's config, as build_engine.py reads it
        downloads/<file>.pkl     a detectron2 model's weights

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
    """A Mask R-CNN with COCO weights: torchvision's (`weights_url` is its weights enum's
    `.url`) or, where `zoo_config` is given, detectron2's model zoo (`weights_url` its
    model_final .pkl, `zoo_config` the zoo's config name, `detectron2_config` the settings
    that config and its _BASE_ give, for build_engine.py --detectron2-config)."""

    name: str
    arch: str
    weights_enum: str  # torchvision.models.detection.<weights_enum>, for people and tests
    weights_url: str
    zoo_config: str | None = None
    detectron2_config: dict | None = None

    @property
    def framework(self) -> str:
        return "detectron2" if self.zoo_config else "torchvision"

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


DETECTRON2_ZOO = "https://dl.fbaipublicfiles.com/detectron2/"


def _detectron2_fpn_config(depth: int, pixel_std=None, **resnets) -> dict:
    """The settings of detectron2's COCO-InstanceSegmentation/mask_rcnn_*_FPN_3x.yaml (its
    Base-RCNN-FPN.yaml and the file's own keys) that a converter reads; the rest are
    detectron2's defaults. tests/test_detectron2.py checks them against the zoo's files.
    `resnets`: MODEL.RESNETS keys beside DEPTH."""
    levels = ["res2", "res3", "res4", "res5"]
    model = {
        "META_ARCHITECTURE": "GeneralizedRCNN", "MASK_ON": True,
        "BACKBONE": {"NAME": "build_resnet_fpn_backbone"},
        "RESNETS": {"DEPTH": depth, "OUT_FEATURES": levels, **resnets},
        "FPN": {"IN_FEATURES": levels},
        "ANCHOR_GENERATOR": {"SIZES": [[32], [64], [128], [256], [512]], "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]},
        "RPN": {"IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"], "PRE_NMS_TOPK_TEST": 1000, "POST_NMS_TOPK_TEST": 1000},
        "ROI_HEADS": {"NAME": "StandardROIHeads", "IN_FEATURES": ["p2", "p3", "p4", "p5"]},
        "ROI_BOX_HEAD": {"NAME": "FastRCNNConvFCHead", "NUM_FC": 2, "POOLER_RESOLUTION": 7},
        "ROI_MASK_HEAD": {"NAME": "MaskRCNNConvUpsampleHead", "NUM_CONV": 4, "POOLER_RESOLUTION": 14},
    }
    if pixel_std:
        model["PIXEL_STD"] = pixel_std
    return {"MODEL": model, "VERSION": 2}


def _detectron2_model(name: str, zoo_config: str, run: str, depth: int, pixel_std=None, **resnets) -> NamedModel:
    return NamedModel(name, "detectron2", zoo_config, f"{DETECTRON2_ZOO}{zoo_config}/{run}", zoo_config,
                      _detectron2_fpn_config(depth, pixel_std, **resnets))


# detectron2's MODEL_ZOO.md: COCO Mask R-CNN FPN 3x models (run id / file name)
NAMED_MODELS.update({
    model.name: model
    for model in (
        _detectron2_model("detectron2-r50-fpn-3x", "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x",
                          "137849600/model_final_f10217.pkl", 50),
        _detectron2_model("detectron2-r101-fpn-3x", "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x",
                          "138205316/model_final_a3ec72.pkl", 101),
        _detectron2_model("detectron2-x101-32x8d-fpn-3x", "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x",
                          "139653917/model_final_2d9806.pkl", 101,
                          [57.375, 57.120, 58.395], STRIDE_IN_1X1=False, NUM_GROUPS=32, WIDTH_PER_GROUP=8),
    )
})


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


def cached_weights(model: NamedModel, environ: Mapping[str, str] = os.environ) -> Path:
    """Where `model`'s weights are kept once fetched: torch-hub's cache for torchvision's,
    the cache folder's downloads/ for detectron2's."""
    if model.framework == "detectron2":
        return cache_dir(environ) / "downloads" / model.weights_file
    return hub_checkpoint(model.weights_url, environ)


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


def download_hint(arch: str, url: str, reason: str, framework: str = "torchvision") -> str:
    """The one line for COCO weights that cannot be downloaded (build_engine.py says it too)."""
    return (f"cannot download {framework}'s COCO weights for {arch} from {url} ({reason}); "
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
    source_path = Path(weights).expanduser() if weights else cached_weights(model, environ)
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
            raise ModelDirError(download_hint(model.zoo_config or model.arch, model.weights_url, reason,
                                              model.framework))
    what = f"detectron2 {model.zoo_config}" if model.zoo_config else f"torchvision {model.arch}"
    say(f"{model.name}: first use: building {target} ({what}, COCO weights)")
    missing = missing_export_modules()
    if missing:
        _install_export_requirements(model, missing, say)
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
            _download(model.weights_url, source_path)
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
    result = subprocess.run(command, env=dict(environ), stdout=_stderr(), stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise ModelDirError(f"building {model.name} failed (build_engine.py exited {result.returncode}; "
                            f"its error is above)")
    if not source_path.is_file():
        raise ModelDirError(f"build_engine.py finished but the weights file {source_path} is not there")
    stamp.write_text(WeightsSource.of(source_path).to_json())
    say(f"{model.name}: ready in {time.perf_counter() - start:.0f} s; later starts reuse {target}")


def _download(url: str, path: Path) -> None:
    """`url` into `path` (written beside it, then renamed: an interrupted download leaves nothing)."""
    import urllib.request

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ModelDirError(f"downloading {url} failed ({exc}); download it elsewhere and pass --weights PATH") from None


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

"""Named models (`serve --model coco-v1`): torchvision's COCO Mask R-CNNs and detectron2's
model-zoo COCO Mask R-CNNs, and where their model directories are kept once built.

The list of names, where each one's weights come from, and the cache folder's bookkeeping:

    $MASKRCNN_CACHE_DIR, else $XDG_CACHE_HOME/maskrcnn-serve, else ~/.cache/maskrcnn-serve
        models/coco-v1/          the model directory (model.json + ONNX graphs)
        models/coco-v1.source    which weights file it was built from (path, size, mtime), and
                                 the model.json format (a newer engine rebuilds an older one)
        models/<name>.yaml       a detectron2 model's config, as build_engine.py reads it
        downloads/<file>.pkl     a detectron2 model's weights

A directory is reused while the weights file it was built from is unchanged (or gone):
`reusable`. Building one (installing torch, fetching the weights, running build_engine.py in a
child process) is the `provision` package's work; nothing here imports torch or starts a process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..environment import HOME, MASKRCNN_CACHE_DIR, TORCH_HOME, XDG_CACHE_HOME
from ..errors import ModelDirError
from .config import MODEL_FORMAT

# torchvision's Mask R-CNN builders that build_engine.py exports (torchvision.models.detection.<arch>).
ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
# torchvision's FPN backbones build_engine.py --backbone builds MaskRCNN on: resnet_fpn_backbone's ...
RESNET_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                    "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
# ... and mobilenet_backbone(..., fpn=True)'s
MOBILENET_BACKBONES = ("mobilenet_v3_large", "mobilenet_v3_small")
BACKBONES = RESNET_BACKBONES + MOBILENET_BACKBONES


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
    if environ.get(MASKRCNN_CACHE_DIR):
        return Path(environ[MASKRCNN_CACHE_DIR]).expanduser()
    return _xdg_cache(environ) / "maskrcnn-serve"


def torch_hub_dir(environ: Mapping[str, str]) -> Path:
    """torch.hub.get_dir() without torch: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub."""
    torch_home = environ.get(TORCH_HOME) or str(_xdg_cache(environ) / "torch")
    return Path(torch_home).expanduser() / "hub"


def _xdg_cache(environ: Mapping[str, str]) -> Path:
    return Path(environ.get(XDG_CACHE_HOME) or Path(environ.get(HOME) or Path.home()) / ".cache").expanduser()


def hub_checkpoint(url: str, environ: Mapping[str, str] = os.environ) -> Path:
    """Where torch.hub.load_state_dict_from_url caches `url`: <hub dir>/checkpoints/<file name>."""
    return torch_hub_dir(environ) / "checkpoints" / url_file_name(url)


def cached_weights(model: NamedModel, environ: Mapping[str, str] = os.environ) -> Path:
    """Where `model`'s weights are kept once fetched: torch-hub's cache for torchvision's,
    the cache folder's downloads/ for detectron2's."""
    if model.framework == "detectron2":
        return cache_dir(environ) / "downloads" / model.weights_file
    return hub_checkpoint(model.weights_url, environ)


def built_paths(model: NamedModel, environ: Mapping[str, str]) -> tuple[Path, Path]:
    """(the model directory, its .source record) for `model` under the cache folder."""
    models = cache_dir(environ) / "models"
    return models / model.name, models / f"{model.name}.source"


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


def reusable(target: Path, stamp: Path, source_path: Path) -> bool:
    """A complete directory whose weights file is unchanged, or no longer there to compare."""
    if not (target / "model.json").is_file():
        return False
    built_from = WeightsSource.read(stamp)
    if built_from is None or built_from.model_format != MODEL_FORMAT:
        return False
    if not source_path.is_file():
        return True  # e.g. the torch-hub cache was cleared: the directory is still good
    return WeightsSource.of(source_path) == built_from

"""A detectron2 YAML config -> the FPN Mask R-CNN settings the exporter needs, without detectron2.

    read_detectron2_config(path) -> Detectron2Config      (errors: Detectron2ConfigError)

What is read: the YAML configs `build_engine.py --detectron2-config CONFIG.yaml` is given, i.e.
the model zoo's files with their `_BASE_` chains, a user's own files built the same way, and
the full `config.yaml` a detectron2 training run writes (`cfg.dump()`, which is yacs's
`yaml.safe_dump`: tuples come out as plain lists). detectron2, fvcore and yacs are not
imported; files are parsed with PyYAML's safe loader, taught one more tag, `!!python/tuple`
(how `yaml.dump` writes a tuple), as a tuple. Every other Python tag (the model zoo's RetinaNet
base uses `!!python/object/apply:eval`) is refused, never run.

How a file is merged (as detectron2 does it): a `_BASE_` (a path, or a list of paths, relative
to the file naming it) is loaded first, with its own bases, and the file's keys merge over it
dict by dict; any other value replaces the base's. A string value that is a Python literal is
read as that literal ("(800,)" -> (800,)), as yacs reads values. A key given nowhere takes
detectron2's default: DEFAULTS below holds those defaults for the keys read here (facts
learned from detectron2/config/defaults.py, config VERSION 2). KNOWN_KEYS lists every key
detectron2 defines in the sections read here, so a misspelt key there (MODEL.RESNETS.DEPHT) is
an error, as detectron2 makes it; sections the product does not use (SOLVER, DATASETS,
DATALOADER, TEST.AUG, ...) are not looked into.

What is supported: GeneralizedRCNN with MASK_ON, a bottleneck ResNet/ResNeXt (depth 50, 101,
152; FrozenBN, BN or SyncBN, which are the same at inference) under an FPN
(build_resnet_fpn_backbone), the standard RPN, and StandardROIHeads with the FastRCNNConvFCHead
box head (fully connected layers only) and the MaskRCNNConvUpsampleHead mask head, unnormalised.
Anything else is one Detectron2ConfigError naming the key, its value and what is supported.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

BASE_KEY = "_BASE_"
CONFIG_VERSION = 2  # the detectron2 config version whose keys and defaults are below

# detectron2's default value of every key read here (VERSION 2). Tuples where detectron2's
# default is a tuple, lists where it is a list; both are accepted in a file.
DEFAULTS: dict[str, object] = {
    "VERSION": 2,
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.MASK_ON": False,
    "MODEL.KEYPOINT_ON": False,
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.OUT_FEATURES": ["res4"],
    "MODEL.RESNETS.NUM_GROUPS": 1,
    "MODEL.RESNETS.NORM": "FrozenBN",
    "MODEL.RESNETS.WIDTH_PER_GROUP": 64,
    "MODEL.RESNETS.STRIDE_IN_1X1": True,
    "MODEL.RESNETS.RES5_DILATION": 1,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 256,
    "MODEL.RESNETS.STEM_OUT_CHANNELS": 64,
    "MODEL.RESNETS.DEFORM_ON_PER_STAGE": [False, False, False, False],
    "MODEL.FPN.IN_FEATURES": [],
    "MODEL.FPN.OUT_CHANNELS": 256,
    "MODEL.FPN.NORM": "",
    "MODEL.FPN.FUSE_TYPE": "sum",
    "MODEL.PROPOSAL_GENERATOR.NAME": "RPN",
    "MODEL.PROPOSAL_GENERATOR.MIN_SIZE": 0,
    "MODEL.ANCHOR_GENERATOR.NAME": "DefaultAnchorGenerator",
    "MODEL.ANCHOR_GENERATOR.SIZES": [[32, 64, 128, 256, 512]],
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": [[0.5, 1.0, 2.0]],
    "MODEL.ANCHOR_GENERATOR.OFFSET": 0.0,
    "MODEL.RPN.HEAD_NAME": "StandardRPNHead",
    "MODEL.RPN.IN_FEATURES": ["res4"],
    "MODEL.RPN.BBOX_REG_WEIGHTS": (1.0, 1.0, 1.0, 1.0),
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.RPN.NMS_THRESH": 0.7,
    "MODEL.RPN.CONV_DIMS": [-1],
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeads",
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "MODEL.ROI_HEADS.IN_FEATURES": ["res4"],
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.05,
    "MODEL.ROI_HEADS.NMS_THRESH_TEST": 0.5,
    "MODEL.ROI_BOX_HEAD.NAME": "",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS": (10.0, 10.0, 5.0, 5.0),
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE": "ROIAlignV2",
    "MODEL.ROI_BOX_HEAD.NUM_FC": 0,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 1024,
    "MODEL.ROI_BOX_HEAD.NUM_CONV": 0,
    "MODEL.ROI_BOX_HEAD.NORM": "",
    "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG": False,
    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE": False,  # sigmoid instead of softmax class scores
    "MODEL.ROI_MASK_HEAD.NAME": "MaskRCNNConvUpsampleHead",
    "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 14,
    "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO": 0,
    "MODEL.ROI_MASK_HEAD.NUM_CONV": 0,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 256,
    "MODEL.ROI_MASK_HEAD.NORM": "",
    "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK": False,
    "MODEL.ROI_MASK_HEAD.POOLER_TYPE": "ROIAlignV2",
    "INPUT.MIN_SIZE_TEST": 800,
    "INPUT.MAX_SIZE_TEST": 1333,
    "INPUT.FORMAT": "BGR",
    "TEST.DETECTIONS_PER_IMAGE": 100,
}

# Every key detectron2 defines in the sections read here ("" is the top level): a key in one
# of these sections that is not listed is refused, as detectron2 refuses it.
KNOWN_KEYS: dict[str, tuple[str, ...]] = {
    "": ("VERSION", "MODEL", "INPUT", "DATASETS", "DATALOADER", "SOLVER", "TEST", "OUTPUT_DIR",
         "SEED", "CUDNN_BENCHMARK", "FLOAT32_PRECISION", "VIS_PERIOD", "GLOBAL"),
    "MODEL": ("LOAD_PROPOSALS", "MASK_ON", "KEYPOINT_ON", "DEVICE", "META_ARCHITECTURE", "WEIGHTS",
              "PIXEL_MEAN", "PIXEL_STD", "BACKBONE", "FPN", "PROPOSAL_GENERATOR",
              "ANCHOR_GENERATOR", "RPN", "ROI_HEADS", "ROI_BOX_HEAD", "ROI_BOX_CASCADE_HEAD",
              "ROI_MASK_HEAD", "ROI_KEYPOINT_HEAD", "SEM_SEG_HEAD", "PANOPTIC_FPN", "RETINANET",
              "RESNETS"),
    "MODEL.BACKBONE": ("NAME", "FREEZE_AT"),
    "MODEL.RESNETS": ("DEPTH", "OUT_FEATURES", "NUM_GROUPS", "NORM", "WIDTH_PER_GROUP",
                      "STRIDE_IN_1X1", "RES5_DILATION", "RES2_OUT_CHANNELS", "STEM_OUT_CHANNELS",
                      "DEFORM_ON_PER_STAGE", "DEFORM_MODULATED", "DEFORM_NUM_GROUPS"),
    "MODEL.FPN": ("IN_FEATURES", "OUT_CHANNELS", "NORM", "FUSE_TYPE"),
    "MODEL.PROPOSAL_GENERATOR": ("NAME", "MIN_SIZE"),
    "MODEL.ANCHOR_GENERATOR": ("NAME", "SIZES", "ASPECT_RATIOS", "ANGLES", "OFFSET"),
    "MODEL.RPN": ("HEAD_NAME", "IN_FEATURES", "BOUNDARY_THRESH", "IOU_THRESHOLDS", "IOU_LABELS",
                  "BATCH_SIZE_PER_IMAGE", "POSITIVE_FRACTION", "BBOX_REG_LOSS_TYPE",
                  "BBOX_REG_LOSS_WEIGHT", "BBOX_REG_WEIGHTS", "SMOOTH_L1_BETA", "LOSS_WEIGHT",
                  "PRE_NMS_TOPK_TRAIN", "PRE_NMS_TOPK_TEST", "POST_NMS_TOPK_TRAIN",
                  "POST_NMS_TOPK_TEST", "NMS_THRESH", "CONV_DIMS"),
    "MODEL.ROI_HEADS": ("NAME", "NUM_CLASSES", "IN_FEATURES", "IOU_THRESHOLDS", "IOU_LABELS",
                        "BATCH_SIZE_PER_IMAGE", "POSITIVE_FRACTION", "SCORE_THRESH_TEST",
                        "NMS_THRESH_TEST", "PROPOSAL_APPEND_GT"),
    "MODEL.ROI_BOX_HEAD": ("NAME", "BBOX_REG_LOSS_TYPE", "BBOX_REG_LOSS_WEIGHT", "BBOX_REG_WEIGHTS",
                           "SMOOTH_L1_BETA", "POOLER_RESOLUTION", "POOLER_SAMPLING_RATIO",
                           "POOLER_TYPE", "NUM_FC", "FC_DIM", "NUM_CONV", "CONV_DIM", "NORM",
                           "CLS_AGNOSTIC_BBOX_REG", "TRAIN_ON_PRED_BOXES", "USE_FED_LOSS",
                           "USE_SIGMOID_CE", "FED_LOSS_FREQ_WEIGHT_POWER", "FED_LOSS_NUM_CLASSES"),
    "MODEL.ROI_MASK_HEAD": ("NAME", "POOLER_RESOLUTION", "POOLER_SAMPLING_RATIO", "NUM_CONV",
                            "CONV_DIM", "NORM", "CLS_AGNOSTIC_MASK", "POOLER_TYPE"),
    "INPUT": ("MIN_SIZE_TRAIN", "MIN_SIZE_TRAIN_SAMPLING", "MAX_SIZE_TRAIN", "MIN_SIZE_TEST",
              "MAX_SIZE_TEST", "RANDOM_FLIP", "CROP", "FORMAT", "MASK_FORMAT"),
    "TEST": ("EXPECTED_RESULTS", "EVAL_PERIOD", "KEYPOINT_OKS_SIGMAS", "DETECTIONS_PER_IMAGE",
             "AUG", "PRECISE_BN"),
}

RESNET_STAGES = ("res2", "res3", "res4", "res5")  # the FPN's possible inputs, strides 4..32
BOTTLENECK_DEPTHS = (50, 101, 152)
NORMS = ("FrozenBN", "BN", "SyncBN")  # all plain per-channel affine maps at inference
POOLER_ALIGNED = {"ROIAlignV2": True, "ROIAlign": False}  # POOLER_TYPE -> RoIAlign's aligned
INPUT_FORMATS = ("BGR", "RGB")


class Detectron2ConfigError(ValueError):
    """A config that cannot be read, or a model it describes that is not supported. The message
    is one line: the file or key, its value, and what is supported."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).splitlines()))


@dataclass(frozen=True)
class Detectron2Config:
    """The settings of a detectron2 FPN Mask R-CNN, after its defaults and consistency checks.
    Pixel values are 0-255, in input_format's channel order; `merged` is the file's own keys
    with its `_BASE_` chain merged in (detectron2's defaults not added), for provenance."""

    source: str
    # backbone (build_resnet_fpn_backbone)
    depth: int
    num_groups: int
    width_per_group: int
    stride_in_1x1: bool
    stem_out_channels: int
    res2_out_channels: int
    norm: str
    fpn_in_features: tuple[str, ...]
    fpn_out_channels: int
    # RPN
    rpn_in_features: tuple[str, ...]
    anchor_sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[tuple[float, ...], ...]
    anchor_offset: float
    rpn_pre_nms_topk: int
    rpn_post_nms_topk: int
    rpn_nms_thresh: float
    rpn_bbox_reg_weights: tuple[float, float, float, float]
    rpn_min_size: float
    # RoI heads (StandardROIHeads)
    num_classes: int
    roi_in_features: tuple[str, ...]
    score_thresh: float
    nms_thresh: float
    detections_per_image: int
    box_num_fc: int
    box_fc_dim: int
    box_pooler_resolution: int
    box_pooler_sampling_ratio: int
    box_pooler_aligned: bool
    box_bbox_reg_weights: tuple[float, float, float, float]
    mask_num_conv: int
    mask_conv_dim: int
    mask_pooler_resolution: int
    mask_pooler_sampling_ratio: int
    mask_pooler_aligned: bool
    # input
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    input_format: str
    min_size_test: int
    max_size_test: int
    merged: dict = field(compare=False, repr=False)


def read_detectron2_config(path) -> Detectron2Config:
    """Read a detectron2 YAML config (with its `_BASE_` chain) and check that it describes an
    FPN Mask R-CNN this product supports; raises Detectron2ConfigError otherwise."""
    path = Path(path)
    merged = _load_with_bases(path, named_by=None, chain=())
    _check_version(merged)
    _check_known_keys(merged)
    r = _Reader(merged)
    _check_architecture(r)

    fpn_in = _fpn_in_features(r)
    fpn_out = [f"p{int(name[3:])}" for name in fpn_in] + [f"p{int(fpn_in[-1][3:]) + 1}"]
    rpn_in = _rpn_in_features(r, fpn_out)
    roi_in = _roi_in_features(r, fpn_out)
    sizes = _per_level(r, "MODEL.ANCHOR_GENERATOR.SIZES", len(rpn_in))
    ratios = _per_level(r, "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", len(rpn_in))
    anchors_per_level = {len(s) * len(a) for s, a in zip(sizes, ratios)}
    if len(anchors_per_level) != 1:
        raise Detectron2ConfigError(
            "MODEL.ANCHOR_GENERATOR.SIZES and ASPECT_RATIOS give a different number of anchors "
            f"on different RPN levels ({[len(s) * len(a) for s, a in zip(sizes, ratios)]}): "
            "StandardRPNHead needs the same number on every level")
    input_format = r.text("INPUT.FORMAT")
    if input_format not in INPUT_FORMATS:
        raise _unsupported("INPUT.FORMAT", input_format, "a PIL image mode",
                           "only BGR or RGB is supported")
    pixel_std = r.numbers("MODEL.PIXEL_STD", 3)
    if 0.0 in pixel_std:
        raise Detectron2ConfigError(f"MODEL.PIXEL_STD is {list(pixel_std)}: no value may be 0")
    offset = r.number("MODEL.ANCHOR_GENERATOR.OFFSET", low=0.0)
    if offset >= 1.0:
        raise Detectron2ConfigError(
            f"MODEL.ANCHOR_GENERATOR.OFFSET is {offset}: it must be in [0, 1)")

    return Detectron2Config(
        source=str(path),
        depth=r.integer("MODEL.RESNETS.DEPTH"),
        num_groups=r.integer("MODEL.RESNETS.NUM_GROUPS", minimum=1),
        width_per_group=r.integer("MODEL.RESNETS.WIDTH_PER_GROUP", minimum=1),
        stride_in_1x1=r.flag("MODEL.RESNETS.STRIDE_IN_1X1"),
        stem_out_channels=r.integer("MODEL.RESNETS.STEM_OUT_CHANNELS", minimum=1),
        res2_out_channels=r.integer("MODEL.RESNETS.RES2_OUT_CHANNELS", minimum=1),
        norm=r.text("MODEL.RESNETS.NORM"),
        fpn_in_features=fpn_in,
        fpn_out_channels=r.integer("MODEL.FPN.OUT_CHANNELS", minimum=1),
        rpn_in_features=rpn_in,
        anchor_sizes=sizes,
        aspect_ratios=ratios,
        anchor_offset=offset,
        rpn_pre_nms_topk=r.integer("MODEL.RPN.PRE_NMS_TOPK_TEST", minimum=1),
        rpn_post_nms_topk=r.integer("MODEL.RPN.POST_NMS_TOPK_TEST", minimum=1),
        rpn_nms_thresh=r.number("MODEL.RPN.NMS_THRESH", low=0.0, high=1.0),
        rpn_bbox_reg_weights=r.numbers("MODEL.RPN.BBOX_REG_WEIGHTS", 4, positive=True),
        rpn_min_size=r.number("MODEL.PROPOSAL_GENERATOR.MIN_SIZE", low=0.0),
        num_classes=r.integer("MODEL.ROI_HEADS.NUM_CLASSES", minimum=1),
        roi_in_features=roi_in,
        score_thresh=r.number("MODEL.ROI_HEADS.SCORE_THRESH_TEST", low=0.0, high=1.0),
        nms_thresh=r.number("MODEL.ROI_HEADS.NMS_THRESH_TEST", low=0.0, high=1.0),
        detections_per_image=r.integer("TEST.DETECTIONS_PER_IMAGE", minimum=1),
        box_num_fc=r.integer("MODEL.ROI_BOX_HEAD.NUM_FC", minimum=1),
        box_fc_dim=r.integer("MODEL.ROI_BOX_HEAD.FC_DIM", minimum=1),
        box_pooler_resolution=r.integer("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", minimum=1),
        box_pooler_sampling_ratio=r.integer("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", minimum=0),
        box_pooler_aligned=POOLER_ALIGNED[r.text("MODEL.ROI_BOX_HEAD.POOLER_TYPE")],
        box_bbox_reg_weights=r.numbers("MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", 4, positive=True),
        mask_num_conv=r.integer("MODEL.ROI_MASK_HEAD.NUM_CONV", minimum=0),
        mask_conv_dim=r.integer("MODEL.ROI_MASK_HEAD.CONV_DIM", minimum=1),
        mask_pooler_resolution=r.integer("MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", minimum=1),
        mask_pooler_sampling_ratio=r.integer("MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO",
                                             minimum=0),
        mask_pooler_aligned=POOLER_ALIGNED[r.text("MODEL.ROI_MASK_HEAD.POOLER_TYPE")],
        pixel_mean=r.numbers("MODEL.PIXEL_MEAN", 3),
        pixel_std=pixel_std,
        input_format=input_format,
        min_size_test=r.integer("INPUT.MIN_SIZE_TEST", minimum=0),
        max_size_test=r.integer("INPUT.MAX_SIZE_TEST", minimum=1),
        merged=merged,
    )


# ----------------------------------------------------------------------------- files, _BASE_

class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, which also reads `!!python/tuple` (yaml.dump's tuples) as a tuple."""


_SafeLoader.add_constructor(
    "tag:yaml.org,2002:python/tuple",
    lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))


def _load_file(path: Path, named_by: Path | None) -> dict:
    """One YAML file's top-level mapping, its `_BASE_` not yet resolved."""
    role = f" (the _BASE_ of {named_by})" if named_by else ""
    if path.suffix == ".py":
        raise Detectron2ConfigError(
            f"{path}{role} is a Python file: LazyConfig Python files are not supported, give a "
            "YAML config (a model zoo .yaml, or the config.yaml a training run wrote)")
    if not path.is_file():
        missing = "does not exist" if not path.exists() else "is not a file"
        raise Detectron2ConfigError(f"detectron2 config {path}{role} {missing}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Detectron2ConfigError(f"detectron2 config {path}{role} cannot be read: {exc}") from None
    try:
        data = yaml.load(text, Loader=_SafeLoader)
    except yaml.constructor.ConstructorError as exc:
        key = _key_at(text, exc.problem_mark)
        raise Detectron2ConfigError(
            f"{path}{role}: {key + ', ' if key else ''}{_yaml_problem(exc)}; configs are read "
            "safely, so no Python tag but !!python/tuple is accepted") from None
    except yaml.YAMLError as exc:
        raise Detectron2ConfigError(f"{path}{role} is not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        raise Detectron2ConfigError(f"{path}{role} is empty: not a detectron2 config")
    if not isinstance(data, dict):
        raise Detectron2ConfigError(
            f"{path}{role} is not a detectron2 config: its top level is a "
            f"{type(data).__name__}, not a mapping of sections (MODEL:, INPUT:, ...)")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A PyYAML error in one line: where, and what (tags written as !!name)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    return where + problem.replace("tag:yaml.org,2002:", "!!")


def _key_at(text: str, mark) -> str | None:
    """The dotted key whose value starts at `mark` in a YAML text (found on the parsed node
    tree, so nothing is constructed), or None."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None

    def find(node, path):
        if node.start_mark.index == mark.index:
            return ".".join(path)
        if isinstance(node, yaml.MappingNode):
            children = [(str(name.value), child) for name, child in node.value]
        elif isinstance(node, yaml.SequenceNode):
            children = [(str(i), child) for i, child in enumerate(node.value)]
        else:
            children = []
        for name, child in children:
            found = find(child, path + [name])
            if found:
                return found
        return None

    return find(root, []) if root is not None and mark is not None else None


def _load_with_bases(path: Path, named_by: Path | None, chain: tuple[Path, ...]) -> dict:
    """The file's keys merged over its `_BASE_` (a list of bases merges in order), recursively."""
    resolved = path.resolve()
    if resolved in chain:
        raise Detectron2ConfigError(f"{path} is its own _BASE_ (a _BASE_ loop through {named_by})")
    data = _load_file(path, named_by)
    if BASE_KEY not in data:
        return data
    bases = data.pop(BASE_KEY)
    names = bases if isinstance(bases, list) else [bases]
    if not names or not all(isinstance(name, str) and name for name in names):
        raise Detectron2ConfigError(
            f"{path}: _BASE_ is {_show(bases)}: it must be a path or a list of paths")
    merged: dict = {}
    for name in names:
        base = _load_with_bases(_base_path(path, name), path, chain + (resolved,))
        merged = _merge(merged, base)
    return _merge(merged, data)


def _base_path(config: Path, name: str) -> Path:
    """Where a `_BASE_` named in `config` is: absolute, ~user, or relative to `config`'s folder."""
    if name.startswith(("http://", "https://")):
        raise Detectron2ConfigError(
            f"{config}: _BASE_ {name} is a URL: download it and name the local file")
    name = os.path.expanduser(name)
    return Path(name) if os.path.isabs(name) else config.parent / name


def _merge(base: dict, over: dict, prefix: str = "") -> dict:
    """A new dict: base's keys with over's merged in, a dict into a dict, recursively; any other
    value of over's replaces base's."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and key in out:
            if not isinstance(out[key], dict):
                raise Detectron2ConfigError(
                    f"{prefix}{key} is a section in a config but {_show(out[key])} in its _BASE_")
            out[key] = _merge(out[key], value, f"{prefix}{key}.")
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------- keys and values

_ABSENT = object()  # what _section gives for a key not in the config


def _section(merged: dict, dotted: str):
    """The value at a dotted path of nested dicts ("" is the top level), or _ABSENT."""
    node = merged
    for part in dotted.split(".") if dotted else []:
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _check_version(merged: dict) -> None:
    """Only VERSION 2 configs (every detectron2 release's); older ones were renamed since."""
    if "VERSION" not in merged:
        if any(_section(merged, key) is not _ABSENT for key in ("MODEL.WEIGHT", "TEST.AUG_ON")):
            raise Detectron2ConfigError(
                "VERSION is missing and MODEL.WEIGHT or TEST.AUG_ON is set (an old v1 detectron2 "
                f"config): only VERSION {CONFIG_VERSION} configs are supported; load it with "
                "detectron2 and save cfg.dump()")
        return
    version = _literal(merged["VERSION"])
    if version != CONFIG_VERSION or isinstance(version, bool):
        raise Detectron2ConfigError(
            f"VERSION is {_show(version)}: only VERSION {CONFIG_VERSION} configs are supported")


def _check_known_keys(merged: dict) -> None:
    """Every key at the top level and in the sections read must be one detectron2 defines."""
    for section, known in KNOWN_KEYS.items():
        node = _section(merged, section)
        if node is _ABSENT:
            continue
        if not isinstance(node, dict):
            raise Detectron2ConfigError(f"{section} is {_show(node)}: it must be a mapping of keys")
        for key in node:
            if key not in known:
                full = f"{section}.{key}" if section else str(key)
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                where = f"in {section}" if section else "at the top level"
                raise Detectron2ConfigError(
                    f"{full} is not a key detectron2 defines {where}{hint}: a misspelt key, or "
                    "one a detectron2 project adds, whose model is not supported")


def _literal(value):
    """A string that is a Python literal read as that literal ("(800,)" -> (800,)), as yacs
    reads config values; anything else as it is."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return value


def _show(value) -> str:
    """A value as a message shows it: strings quoted, the rest as Python writes them."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Reader:
    """Typed reads of dotted keys from a merged config; a key absent takes DEFAULTS'."""

    def __init__(self, merged: dict):
        self.merged = merged

    def raw(self, key: str):
        parent, _, name = key.rpartition(".")
        section = _section(self.merged, parent)  # a dict, or absent: _check_known_keys ran
        if section is _ABSENT or name not in section:
            return DEFAULTS[key]
        return _literal(section[name])

    def integer(self, key: str, minimum: int | None = None) -> int:
        value = self.raw(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise Detectron2ConfigError(f"{key} is {_show(value)}: it must be an integer")
        if minimum is not None and value < minimum:
            raise Detectron2ConfigError(f"{key} is {value}: it must be at least {minimum}")
        return value

    def number(self, key: str, low: float | None = None, high: float | None = None) -> float:
        value = self.raw(key)
        if not _is_number(value):
            raise Detectron2ConfigError(f"{key} is {_show(value)}: it must be a number")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"in [{low}, {high}]" if high is not None else f"at least {low}"
            raise Detectron2ConfigError(f"{key} is {value}: it must be {span}")
        return float(value)

    def flag(self, key: str) -> bool:
        value = self.raw(key)
        if not isinstance(value, bool):
            raise Detectron2ConfigError(f"{key} is {_show(value)}: it must be true or false")
        return value

    def text(self, key: str) -> str:
        value = self.raw(key)
        if not isinstance(value, str):
            raise Detectron2ConfigError(f"{key} is {_show(value)}: it must be a string")
        return value

    def sequence(self, key: str) -> list:
        value = self.raw(key)
        if not isinstance(value, (list, tuple)):
            raise Detectron2ConfigError(f"{key} is {_show(value)}: it must be a list")
        return list(value)

    def names(self, key: str) -> tuple[str, ...]:
        value = self.sequence(key)
        if not all(isinstance(name, str) for name in value):
            raise Detectron2ConfigError(f"{key} is {_show(value)}: it must be a list of names")
        return tuple(value)

    def numbers(self, key: str, count: int, positive: bool = False) -> tuple[float, ...]:
        value = self.sequence(key)
        if len(value) != count or not all(map(_is_number, value)):
            raise Detectron2ConfigError(f"{key} is {_show(value)}: it must be {count} numbers")
        if positive and not all(v > 0 for v in value):
            raise Detectron2ConfigError(f"{key} is {_show(value)}: every value must be above 0")
        return tuple(float(v) for v in value)


# ------------------------------------------------------------------------ what is supported

def _unsupported(key: str, value, what: str, supported: str) -> Detectron2ConfigError:
    return Detectron2ConfigError(f"{key} is {_show(value)} ({what}): {supported}")


def _check_architecture(r: _Reader) -> None:
    """The first setting, in a fixed order, that makes the model other than an FPN Mask R-CNN
    with StandardROIHeads is one error."""
    fpn_only = "only FPN Mask R-CNN models are supported"

    meta = r.text("MODEL.META_ARCHITECTURE")
    if meta != "GeneralizedRCNN":
        what = {"PanopticFPN": "panoptic segmentation", "SemanticSegmentor": "semantic segmentation",
                "RetinaNet": "a one-stage detector", "FCOS": "a one-stage detector",
                "ProposalNetwork": "proposals only"}.get(meta, "another architecture")
        raise _unsupported("MODEL.META_ARCHITECTURE", meta, what,
                           "only GeneralizedRCNN (Mask R-CNN) models are supported")
    if r.flag("MODEL.KEYPOINT_ON"):
        raise _unsupported("MODEL.KEYPOINT_ON", True, "a keypoint head",
                           "only Mask R-CNN models without keypoints are supported")
    if not r.flag("MODEL.MASK_ON"):
        raise _unsupported("MODEL.MASK_ON", False, "a detector without masks",
                           "only Mask R-CNN models (MASK_ON: True) are supported")

    # backbone
    dilation = r.integer("MODEL.RESNETS.RES5_DILATION")
    if dilation != 1:
        raise _unsupported("MODEL.RESNETS.RES5_DILATION", dilation, "a DC5 backbone", fpn_only)
    backbone = r.text("MODEL.BACKBONE.NAME")
    if backbone != "build_resnet_fpn_backbone":
        what = "a C4 backbone" if backbone == "build_resnet_backbone" else "another backbone"
        raise _unsupported("MODEL.BACKBONE.NAME", backbone, what,
                           "only build_resnet_fpn_backbone (ResNet/ResNeXt with FPN) is supported")
    deform = r.sequence("MODEL.RESNETS.DEFORM_ON_PER_STAGE")
    if any(deform):
        raise _unsupported("MODEL.RESNETS.DEFORM_ON_PER_STAGE", deform, "deformable convolutions",
                           "only plain convolutions are supported")
    norm = r.text("MODEL.RESNETS.NORM")
    if norm not in NORMS:
        what = "group normalization" if norm == "GN" else "another normalization"
        raise _unsupported("MODEL.RESNETS.NORM", norm, what, "only FrozenBN, BN or SyncBN is supported")
    depth = r.integer("MODEL.RESNETS.DEPTH")
    if depth not in BOTTLENECK_DEPTHS:
        what = "basic blocks" if depth in (18, 34) else "not a ResNet depth"
        raise _unsupported("MODEL.RESNETS.DEPTH", depth, what,
                           "only 50, 101 or 152 (bottleneck ResNets) is supported")
    if r.text("MODEL.FPN.NORM"):
        raise _unsupported("MODEL.FPN.NORM", r.text("MODEL.FPN.NORM"), "normalized FPN convolutions",
                           'only "" (none) is supported')
    if r.text("MODEL.FPN.FUSE_TYPE") != "sum":
        raise _unsupported("MODEL.FPN.FUSE_TYPE", r.text("MODEL.FPN.FUSE_TYPE"), "not a sum",
                           'only "sum" is supported')

    # proposals
    rotated = "rotated boxes"
    generator = r.text("MODEL.PROPOSAL_GENERATOR.NAME")
    if generator != "RPN":
        what = {"RRPN": rotated, "PrecomputedProposals": "precomputed proposals"}.get(
            generator, "another proposal generator")
        raise _unsupported("MODEL.PROPOSAL_GENERATOR.NAME", generator, what, "only RPN is supported")
    anchors = r.text("MODEL.ANCHOR_GENERATOR.NAME")
    if anchors != "DefaultAnchorGenerator":
        what = rotated if anchors == "RotatedAnchorGenerator" else "another anchor generator"
        raise _unsupported("MODEL.ANCHOR_GENERATOR.NAME", anchors, what,
                           "only DefaultAnchorGenerator is supported")
    head = r.text("MODEL.RPN.HEAD_NAME")
    if head != "StandardRPNHead":
        raise _unsupported("MODEL.RPN.HEAD_NAME", head, "another RPN head",
                           "only StandardRPNHead is supported")
    conv_dims = r.sequence("MODEL.RPN.CONV_DIMS")
    if conv_dims != [-1]:
        raise _unsupported("MODEL.RPN.CONV_DIMS", conv_dims, "a custom RPN conv stack",
                           "only [-1] (one conv as wide as its input) is supported")

    # RoI heads
    heads = r.text("MODEL.ROI_HEADS.NAME")
    if heads != "StandardROIHeads":
        what = {"CascadeROIHeads": "cascade heads", "Res5ROIHeads": "C4 heads",
                "RROIHeads": rotated}.get(heads, "other RoI heads")
        raise _unsupported("MODEL.ROI_HEADS.NAME", heads, what, "only StandardROIHeads is supported")
    box_head = r.text("MODEL.ROI_BOX_HEAD.NAME")
    if box_head != "FastRCNNConvFCHead":
        raise _unsupported("MODEL.ROI_BOX_HEAD.NAME", box_head, "another box head",
                           "only FastRCNNConvFCHead is supported")
    box_convs = r.integer("MODEL.ROI_BOX_HEAD.NUM_CONV")
    if box_convs != 0:
        raise _unsupported("MODEL.ROI_BOX_HEAD.NUM_CONV", box_convs, "convolutions in the box head",
                           "only 0 (fully connected layers only) is supported")
    mask_head = r.text("MODEL.ROI_MASK_HEAD.NAME")
    if mask_head != "MaskRCNNConvUpsampleHead":
        raise _unsupported("MODEL.ROI_MASK_HEAD.NAME", mask_head, "another mask head",
                           "only MaskRCNNConvUpsampleHead is supported")
    for part in ("ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        key = f"MODEL.{part}.NORM"
        if r.text(key):
            raise _unsupported(key, r.text(key), "normalized head convolutions",
                               'only "" (none) is supported')
        key = f"MODEL.{part}.POOLER_TYPE"
        pooler = r.text(key)
        if pooler not in POOLER_ALIGNED:
            what = rotated if pooler == "ROIAlignRotated" else "another pooler"
            raise _unsupported(key, pooler, what, "only ROIAlign or ROIAlignV2 is supported")
    if r.flag("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG"):
        raise _unsupported("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True,
                           "class-agnostic box regression", "only per-class boxes are supported")
    if r.flag("MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE"):
        raise _unsupported("MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", True, "sigmoid class scores",
                           "only softmax scores are supported")
    if r.flag("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK"):
        raise _unsupported("MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", True, "class-agnostic masks",
                           "only per-class masks are supported")


def _fpn_in_features(r: _Reader) -> tuple[str, ...]:
    """MODEL.FPN.IN_FEATURES: res2..res5 or a suffix of them, all given by the ResNet."""
    names = r.names("MODEL.FPN.IN_FEATURES")
    if names not in [RESNET_STAGES[i:] for i in range(len(RESNET_STAGES))]:
        raise Detectron2ConfigError(
            f"MODEL.FPN.IN_FEATURES is {_show(list(names))}: it must be res2, res3, res4, res5 "
            "in order, or a suffix of them (res3..res5, ...)")
    outputs = r.names("MODEL.RESNETS.OUT_FEATURES")
    if not set(names) <= set(outputs):
        raise Detectron2ConfigError(
            f"MODEL.RESNETS.OUT_FEATURES is {_show(list(outputs))}: it must give every one of "
            f"MODEL.FPN.IN_FEATURES {_show(list(names))}")
    return names


def _rpn_in_features(r: _Reader, fpn_out: list[str]) -> tuple[str, ...]:
    """MODEL.RPN.IN_FEATURES: FPN outputs, each once, finest first."""
    names = r.names("MODEL.RPN.IN_FEATURES")
    in_order = [name for name in fpn_out if name in names]
    if not names or list(names) != in_order:
        raise Detectron2ConfigError(
            f"MODEL.RPN.IN_FEATURES is {_show(list(names))}: it must name FPN outputs "
            f"({', '.join(fpn_out)}), each once, in that order")
    return names


def _roi_in_features(r: _Reader, fpn_out: list[str]) -> tuple[str, ...]:
    """MODEL.ROI_HEADS.IN_FEATURES: consecutive FPN outputs, finest first (the RoI pooler's
    pyramid)."""
    names = r.names("MODEL.ROI_HEADS.IN_FEATURES")
    runs = [tuple(fpn_out[i:j]) for i in range(len(fpn_out)) for j in range(i + 1, len(fpn_out) + 1)]
    if names not in runs:
        raise Detectron2ConfigError(
            f"MODEL.ROI_HEADS.IN_FEATURES is {_show(list(names))}: it must be consecutive FPN "
            f"outputs ({', '.join(fpn_out)}) in that order, e.g. p2, p3, p4, p5")
    return names


def _per_level(r: _Reader, key: str, levels: int) -> tuple[tuple[float, ...], ...]:
    """An anchor setting for each of `levels` RPN levels, by detectron2's broadcast rule: a list
    of numbers, or a list holding one list, serves every level; else one list per level."""
    value = r.sequence(key)
    if value and all(map(_is_number, value)):
        per_level = [value] * levels
    elif value and all(isinstance(v, (list, tuple)) and v and all(map(_is_number, v)) for v in value):
        per_level = value * levels if len(value) == 1 else value
    else:
        raise Detectron2ConfigError(
            f"{key} is {_show(value)}: it must be a list of numbers, or of non-empty lists of numbers")
    if len(per_level) != levels:
        raise Detectron2ConfigError(
            f"{key} has {len(per_level)} levels but MODEL.RPN.IN_FEATURES has {levels}: give one "
            "list for every level, or one list per level")
    if not all(x > 0 for level in per_level for x in level):
        raise Detectron2ConfigError(f"{key} is {_show(value)}: every value must be above 0")
    return tuple(tuple(float(x) for x in level) for level in per_level)

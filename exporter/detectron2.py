"""detectron2 Mask R-CNN (GeneralizedRCNN, ResNet/ResNeXt FPN) -> a model directory, without
detectron2.

    export_detectron2(config_path, weights_path, output_dir, class_names=None, ...) -> Path

The network is rebuilt from torchvision's parts where they compute the same thing (its ResNet
with FrozenBatchNorm2d, with the stride moved into each stage's first 1x1 conv where
STRIDE_IN_1X1, its FPN and RPN head) and from the small modules below where detectron2's
differ (the box predictor with the background last and no background box regression, the
K-channel mask predictor); detectron2's weights are renamed onto it (`torchvision_state_dict`).
What the graphs do not hold, the conventions detectron2's DefaultPredictor follows around
them, goes into model.json (`conventions`), so the engine reproduces it from that file alone.

Weights: a model-zoo .pkl ({"model": {name: numpy array}, "__author__": ...}, read by a
restricted unpickler that builds numpy arrays and nothing else) or a training output .pth
({"model": state_dict, "iteration": ...}, read as exporter.checkpoints reads any checkpoint).
"""

from __future__ import annotations

import io
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoints import CheckpointError, read_checkpoint
from .detectron2_config import RESNET_STAGES, Detectron2Config, read_detectron2_config

# Where the RPN's objectness conv sits in every detectron2 GeneralizedRCNN: tells a wrapper prefix.
MARKER_KEY = "proposal_generator.rpn_head.objectness_logits.weight"
BACKGROUND = "__background__"
RESNET_BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}

log = logging.getLogger(__name__)


class BoxHead(nn.Module):
    """detectron2's FastRCNNConvFCHead without convs: flatten, then fc1..fcN, each with ReLU."""

    def __init__(self, in_features: int, fc_dim: int, num_fc: int):
        super().__init__()
        self.num_fc = num_fc
        for i in range(1, num_fc + 1):
            self.add_module(f"fc{i}", nn.Linear(in_features if i == 1 else fc_dim, fc_dim))

    def forward(self, x):
        x = x.flatten(1)
        for i in range(1, self.num_fc + 1):
            x = torch.relu(getattr(self, f"fc{i}")(x))
        return x


class BoxPredictor(nn.Module):
    """detectron2's FastRCNNOutputLayers: K + 1 class logits, the background LAST, and 4K box
    deltas (class-specific, none for the background)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)

    def forward(self, x):
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """detectron2's MaskRCNNConvUpsampleHead's convs: mask_fcn1..N, 3x3, each with ReLU."""

    def __init__(self, in_channels: int, conv_dim: int, num_conv: int):
        super().__init__()
        self.num_conv = num_conv
        for i in range(1, num_conv + 1):
            self.add_module(f"mask_fcn{i}", nn.Conv2d(in_channels if i == 1 else conv_dim, conv_dim, 3, padding=1))

    def forward(self, x):
        for i in range(1, self.num_conv + 1):
            x = torch.relu(getattr(self, f"mask_fcn{i}")(x))
        return x


class MaskPredictor(nn.Module):
    """The rest of MaskRCNNConvUpsampleHead: a 2x2 stride-2 deconv with ReLU, then a 1x1 conv
    to K class channels (no background channel)."""

    def __init__(self, in_channels: int, conv_dim: int, num_classes: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(in_channels, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)

    def forward(self, x):
        return self.predictor(torch.relu(self.deconv(x)))


def _fpn_level_names(cfg: Detectron2Config) -> dict[str, str]:
    """detectron2's FPN output names (p2.., p6) -> torchvision's ("0".., "pool")."""
    stages = [int(name[3:]) for name in cfg.fpn_in_features]
    names = {f"p{stage}": str(i) for i, stage in enumerate(stages)}
    names[f"p{stages[-1] + 1}"] = "pool"  # LastLevelMaxPool on the last map, both frameworks
    return names


def build_model(cfg: Detectron2Config):
    """A torchvision MaskRCNN that computes what detectron2's model for `cfg` computes (eval),
    with untrained weights. Settings torchvision has no field for are in `conventions(cfg)`."""
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.resnet import Bottleneck, ResNet
    from torchvision.ops import MultiScaleRoIAlign
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
    from torchvision.ops.misc import FrozenBatchNorm2d

    body = ResNet(Bottleneck, RESNET_BLOCKS[cfg.depth], groups=cfg.num_groups, width_per_group=cfg.width_per_group,
                  norm_layer=FrozenBatchNorm2d)
    if cfg.stride_in_1x1:  # MSRA's ResNets downsample in the first 1x1 conv, torchvision's in the 3x3
        for layer in (body.layer2, body.layer3, body.layer4):
            layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    in_features = list(cfg.fpn_in_features)
    # detectron2's res2..res5 are torchvision's layer1..layer4
    return_layers = {f"layer{RESNET_STAGES.index(name) + 1}": str(i) for i, name in enumerate(in_features)}
    in_channels = [cfg.res2_out_channels * 2 ** RESNET_STAGES.index(name) for name in in_features]
    backbone = BackboneWithFPN(body, return_layers, in_channels, cfg.fpn_out_channels, extra_blocks=LastLevelMaxPool())

    levels = _fpn_level_names(cfg)
    roi_maps = [levels[name] for name in cfg.roi_in_features]
    channels = cfg.fpn_out_channels
    box_pool = MultiScaleRoIAlign(roi_maps, cfg.box_pooler_resolution, cfg.box_pooler_sampling_ratio)
    mask_pool = MultiScaleRoIAlign(roi_maps, cfg.mask_pooler_resolution, cfg.mask_pooler_sampling_ratio)
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.min_size_test or cfg.max_size_test,  # recorded from conventions(); torchvision wants > 0
        max_size=cfg.max_size_test,
        image_mean=list(cfg.pixel_mean),
        image_std=list(cfg.pixel_std),
        rpn_anchor_generator=AnchorGenerator(cfg.anchor_sizes, cfg.aspect_ratios),
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_topk,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_topk,
        rpn_nms_thresh=cfg.rpn_nms_thresh,
        box_roi_pool=box_pool,
        box_head=BoxHead(channels * cfg.box_pooler_resolution ** 2, cfg.box_fc_dim, cfg.box_num_fc),
        box_predictor=BoxPredictor(cfg.box_fc_dim, cfg.num_classes),
        box_score_thresh=cfg.score_thresh,
        box_nms_thresh=cfg.nms_thresh,
        box_detections_per_img=cfg.detections_per_image,
        bbox_reg_weights=cfg.box_bbox_reg_weights,
        mask_roi_pool=mask_pool,
        mask_head=MaskHead(channels, cfg.mask_conv_dim, cfg.mask_num_conv),
        mask_predictor=MaskPredictor(cfg.mask_conv_dim if cfg.mask_num_conv else channels, cfg.mask_conv_dim,
                                     cfg.num_classes),
    )
    model.rpn.box_coder.weights = tuple(cfg.rpn_bbox_reg_weights)
    model.rpn.min_size = cfg.rpn_min_size
    return model.eval()


def conventions(cfg: Detectron2Config) -> dict[str, dict]:
    """model.json fields, per section, where detectron2's DefaultPredictor differs from
    torchvision's eval path (see engine.model_directory.config for what each means)."""
    strides = [2 ** int(name[1:]) for name in cfg.rpn_in_features]
    pool = {"level_epsilon": 1e-8, "level_epsilon_in_log": True}
    return {
        "transform": {"resize": "shortest_edge", "min_size": cfg.min_size_test, "channel_order": cfg.input_format,
                      "pixel_range": 255.0, "clip_output": True},
        "rpn": {"anchor_order": "sizes_outer", "anchor_round": False, "anchor_offset": cfg.anchor_offset,
                "anchor_strides": tuple(strides), "objectness": "logits", "min_size_rule": ">",
                "score_thresh": 0.0},
        "box_head": {**pool, "aligned": cfg.box_pooler_aligned, "background": "last", "min_size": 0.0},
        "mask_head": {**pool, "aligned": cfg.mask_pooler_aligned, "background_channel": False,
                      "paste": "grid_sample"},
    }


def torchvision_state_dict(state: dict, cfg: Detectron2Config) -> dict:
    """detectron2's parameter names -> the names of build_model(cfg)'s modules (values as they
    are). Names that match no rule are kept, so the fit check lists them as unexpected."""
    fpn_index = {name[3:]: str(i) for i, name in enumerate(cfg.fpn_in_features)}
    norm_buffers = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
    rules = [
        (r"backbone\.bottom_up\.stem\.conv1\.weight", "backbone.body.conv1.weight"),
        (rf"backbone\.bottom_up\.stem\.conv1\.norm\.{norm_buffers}", r"backbone.body.bn1.\1"),
        (r"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.weight",
         lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
        (rf"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.{norm_buffers}",
         lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
        (r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight",
         lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
        (rf"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.{norm_buffers}",
         lambda m: f"backbone.body.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
        (r"backbone\.fpn_lateral(\d)\.(weight|bias)",
         lambda m: f"backbone.fpn.inner_blocks.{fpn_index.get(m[1], 'x' + m[1])}.0.{m[2]}"),
        (r"backbone\.fpn_output(\d)\.(weight|bias)",
         lambda m: f"backbone.fpn.layer_blocks.{fpn_index.get(m[1], 'x' + m[1])}.0.{m[2]}"),
        (r"proposal_generator\.rpn_head\.conv\.(weight|bias)", r"rpn.head.conv.0.0.\1"),
        (r"proposal_generator\.rpn_head\.objectness_logits\.(weight|bias)", r"rpn.head.cls_logits.\1"),
        (r"proposal_generator\.rpn_head\.anchor_deltas\.(weight|bias)", r"rpn.head.bbox_pred.\1"),
        (r"roi_heads\.box_head\.(fc\d+)\.(weight|bias)", r"roi_heads.box_head.\1.\2"),
        (r"roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)", r"roi_heads.box_predictor.\1.\2"),
        (r"roi_heads\.mask_head\.(mask_fcn\d+)\.(weight|bias)", r"roi_heads.mask_head.\1.\2"),
        (r"roi_heads\.mask_head\.(deconv|predictor)\.(weight|bias)", r"roi_heads.mask_predictor.\1.\2"),
    ]
    renamed = {}
    for name, value in state.items():
        for pattern, target in rules:
            match = re.fullmatch(pattern, name)
            if match:
                name = target(match) if callable(target) else match.expand(target)
                break
        renamed[name] = value
    return renamed


def detectron2_weight_names(cfg: Detectron2Config) -> list[str]:
    """The names of the weights detectron2's model for `cfg` has (FrozenBN's four buffers per
    norm), in its naming: what its checkpoints hold."""
    norm = [f"norm.{n}" for n in ("weight", "bias", "running_mean", "running_var")]

    def conv(prefix: str, bias: bool = False) -> list[str]:
        return [f"{prefix}.weight"] + ([f"{prefix}.bias"] if bias else []) + [f"{prefix}.{n}" for n in norm]

    names = conv("backbone.bottom_up.stem.conv1")
    for stage, blocks in zip(RESNET_STAGES, RESNET_BLOCKS[cfg.depth]):
        for block in range(blocks):
            prefix = f"backbone.bottom_up.{stage}.{block}"
            names += [n for i in (1, 2, 3) for n in conv(f"{prefix}.conv{i}")]
            if block == 0:
                names += conv(f"{prefix}.shortcut")
    for stage in cfg.fpn_in_features:
        names += [f"backbone.fpn_{kind}{stage[3:]}.{p}" for kind in ("lateral", "output") for p in ("weight", "bias")]
    names += [f"proposal_generator.rpn_head.{layer}.{p}" for layer in ("conv", "objectness_logits", "anchor_deltas")
              for p in ("weight", "bias")]
    names += [f"roi_heads.box_head.fc{i}.{p}" for i in range(1, cfg.box_num_fc + 1) for p in ("weight", "bias")]
    names += [f"roi_heads.box_predictor.{layer}.{p}" for layer in ("cls_score", "bbox_pred") for p in ("weight", "bias")]
    names += [f"roi_heads.mask_head.mask_fcn{i}.{p}" for i in range(1, cfg.mask_num_conv + 1) for p in ("weight", "bias")]
    names += [f"roi_heads.mask_head.{layer}.{p}" for layer in ("deconv", "predictor") for p in ("weight", "bias")]
    return names


class _NumpyOnly(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, strings and numpy arrays; refuses every other global,
    so a .pkl cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
               ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it pickles {module}.{name}, which a weights file has no need of")


def read_detectron2_weights(path, weights_key: str | None = None) -> tuple[dict, str]:
    """(state_dict of float tensors under detectron2's names, layout in words) from a
    model-zoo .pkl or a training .pth. Raises CheckpointError (a ValueError) saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".pkl":
        try:
            data = _NumpyOnly(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        except Exception as exc:
            raise CheckpointError(f"cannot read {path} as a detectron2 .pkl: {exc}") from None
        weights = data
        if isinstance(data, dict):  # the zoo's {"model": ...}; Detectron1's and Caffe2's {"blobs": ...}
            key = weights_key or next((k for k in ("model", "blobs") if isinstance(data.get(k), dict)), None)
            weights = data.get(key, data) if key else {k: v for k, v in data.items() if isinstance(v, np.ndarray)}
        if not isinstance(weights, dict) or not weights or not all(isinstance(v, np.ndarray) for v in weights.values()):
            raise CheckpointError(f"{path} holds no {{name: numpy array}} weights under 'model'")
        if MARKER_KEY not in weights and any(k.endswith("_w") or k.endswith("_b") for k in weights):
            raise CheckpointError(f"{path} is in Caffe2's naming (an ImageNet-pretrained backbone such as R-50.pkl, not "
                                  f"a trained Mask R-CNN): give the model_final .pkl or .pth of a Mask R-CNN")
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
        author = data.get("__author__") if isinstance(data, dict) else None
        return state, "detectron2 .pkl" + (f" ({author})" if author else "")
    checkpoint = read_checkpoint(path, weights_key=weights_key, marker=MARKER_KEY)
    if checkpoint.state_dict is None:
        raise CheckpointError(f"{path} holds a whole model, not detectron2 weights")
    return checkpoint.state_dict, "detectron2 " + checkpoint.layout


def load_model(cfg: Detectron2Config, weights_path, weights_key: str | None = None):
    """(model, layout): build_model(cfg) with the weights in `weights_path`. Weights that do not
    fit are one WeightsError listing the missing, unexpected and mis-shaped names, all in
    detectron2's naming."""
    from .weights import WeightsError, misfit

    state, layout = read_detectron2_weights(weights_path, weights_key)
    model = build_model(cfg)
    expected = model.state_dict()
    renamed = torchvision_state_dict(state, cfg)
    # torchvision name -> detectron2 name, for the messages: the file's names, and the names
    # detectron2's model has (for weights the file lacks)
    every = detectron2_weight_names(cfg)
    back = {**dict(zip(torchvision_state_dict(dict.fromkeys(every), cfg), every)), **dict(zip(renamed, state))}
    renamed = {k: v for k, v in renamed.items() if not k.endswith("num_batches_tracked")}  # BN's step counters
    missing = [back.get(k, k) for k in expected if k not in renamed]
    unexpected = [back[k] for k in renamed if k not in expected]
    mismatched = [f"{back[k]} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in renamed.items()
                  if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        raise WeightsError(f"{weights_path} does not fit the model {cfg.source} describes: "
                           + misfit(missing, unexpected, mismatched))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in renamed.items()})
    return model.eval(), layout


def class_names_for(cfg: Detectron2Config, names: list[str] | None) -> tuple[list[str], bool]:
    """(model.json's class names, whether they were made up): background first, then
    detectron2's thing_classes in its order; `names` may start with a background line."""
    if names is None:
        return [BACKGROUND] + [f"class_{i}" for i in range(1, cfg.num_classes + 1)], True
    if names and names[0] == BACKGROUND:
        names = names[1:]
    if len(names) != cfg.num_classes:
        raise ValueError(f"--class-names lists {len(names)} classes but {cfg.source} has "
                         f"MODEL.ROI_HEADS.NUM_CLASSES {cfg.num_classes}")
    return [BACKGROUND] + list(names), False


def export_detectron2(config_path, weights_path, output_dir, class_names: list[str] | None = None, *,
                      weights_key: str | None = None, quiet: bool = False, int8_images=None, **export_options) -> Path:
    """Convert a detectron2 Mask R-CNN (YAML config + weights) into the model directory
    `output_dir`; INT8 graphs when `int8_images` (calibration photos) are given.
    export_options go to exporter.export (name, overwrite, weight_bits with INT8)."""
    from engine.model_directory.directory import sha256_of

    from .export import export

    cfg = read_detectron2_config(config_path)
    names, made_up = class_names_for(cfg, class_names)
    if made_up:
        log.log(logging.DEBUG if quiet else logging.WARNING,
                "no --class-names: the %d classes are named class_1..class_%d", cfg.num_classes, cfg.num_classes)
    model, layout = load_model(cfg, weights_path, weights_key)
    info = {"source": "file", "framework": "detectron2", "backbone": backbone_name(cfg), "path": str(weights_path),
            "sha256": sha256_of(Path(weights_path)), "layout": layout, "config": str(config_path), "trained": True}
    options = dict(arch=architecture_name(cfg), weights_info=info, quiet=quiet, conventions=conventions(cfg),
                   **export_options)
    if int8_images is not None:
        from .quantize import export_int8

        return export_int8(model, output_dir, names, int8_images, **options)
    return export(model, output_dir, names, **options)


def backbone_name(cfg: Detectron2Config) -> str:
    """e.g. "ResNet-50 FPN (stride in 1x1)", "ResNeXt-101 32x8d FPN" (model.json's weights.backbone)."""
    net = f"ResNeXt-{cfg.depth} {cfg.num_groups}x{cfg.width_per_group}d" if cfg.num_groups > 1 else f"ResNet-{cfg.depth}"
    return f"{net} FPN{' (stride in 1x1)' if cfg.stride_in_1x1 else ''}"


def architecture_name(cfg: Detectron2Config) -> str:
    """e.g. "detectron2_R_50_FPN", "detectron2_X_101_32x8d_FPN" (model.json's arch)."""
    if cfg.num_groups > 1:
        return f"detectron2_X_{cfg.depth}_{cfg.num_groups}x{cfg.width_per_group}d_FPN"
    return f"detectron2_R_{cfg.depth}_FPN"

"""Building torchvision Mask R-CNN models with COCO, file or seeded random weights.

A model is one of the two presets (`arch`) or MaskRCNN on one of torchvision's FPN
backbones (`backbone`, BACKBONES), with the keyword arguments it was trained with
(exporter.model_kwargs); the box and mask predictors take their sizes from the weights, so
the fine-tuning tutorial's replaced predictors (any hidden layer, any class count) fit.
"""

from __future__ import annotations

from pathlib import Path

import torch

# torch-free, so `serve --model` and build_engine.py's --help share them: the architectures and
# backbones, the download probe and its message
from engine.model_directory.named import ARCHS, BACKBONES, MOBILENET_BACKBONES, RESNET_BACKBONES, url_file_name
from provision.download import download_hint, unreachable_reason

from .checkpoints import read_checkpoint
from .model_kwargs import maskrcnn_kwargs


class WeightsError(Exception):
    """Weights could not be obtained or do not fit the architecture; the message says why."""


def coco_class_names() -> list[str]:
    """torchvision's 91-entry COCO category list, "__background__" first, with its "N/A" gaps."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    return list(MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def _builder(arch: str):
    import torchvision.models.detection as detection

    if arch not in ARCHS:
        raise WeightsError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return getattr(detection, arch)


def coco_weights(arch: str):
    """torchvision's COCO_V1 weights enum member for `arch` (its `.url` names the file)."""
    import torchvision.models.detection as detection

    _builder(arch)  # an unknown arch is a WeightsError, not a KeyError
    return dict(zip(ARCHS, (detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1,
                            detection.MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1)))[arch]


def hub_checkpoint(url: str) -> Path:
    """Where torch.hub.load_state_dict_from_url caches `url`: <hub dir>/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url_file_name(url)


def coco_model(arch: str):
    """The architecture with torchvision's COCO weights, through torchvision's weights API.

    From the torch-hub cache when the file is there (silently); otherwise downloaded with
    torchvision's progress bar, after a quick reachability probe of the URL, so that without
    network the one WeightsError is all the user sees (torch.hub would first print its
    "Downloading:" line and an empty progress bar).
    """
    weights = coco_weights(arch)
    cached = hub_checkpoint(weights.url)
    if not cached.is_file():
        reason = unreachable_reason(weights.url)
        if reason:
            raise WeightsError(download_hint(arch, weights.url, reason))
    try:
        return _builder(arch)(weights=weights, progress=True)  # the bar shows only when downloading
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a truncated file a RuntimeError
        reason = getattr(exc, "reason", None) or exc
        where = f"the torch-hub cache ({cached}; delete it to download again)" if cached.is_file() else weights.url
        raise WeightsError(f"could not load torchvision's COCO weights for {arch} from {where}: {reason}; "
                           f"or download that file elsewhere and pass --weights PATH") from None


def architecture_name(arch: str, backbone: str | None) -> str:
    """The tag model.json records: the preset's name, or maskrcnn_<backbone>_fpn."""
    return f"maskrcnn_{backbone}_fpn" if backbone else arch


def fpn_backbone(name: str):
    """torchvision's FPN backbone `name` without weights, as a user who trained on it built it
    (FrozenBatchNorm2d, torchvision's default returned layers and extra max-pool level)."""
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone

    if name in RESNET_BACKBONES:
        return resnet_fpn_backbone(backbone_name=name, weights=None, trainable_layers=5)
    if name in MOBILENET_BACKBONES:
        return mobilenet_backbone(backbone_name=name, weights=None, fpn=True, trainable_layers=6)
    raise WeightsError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def build_model(arch: str, num_classes: int, backbone: str | None = None, model_kwargs: dict | None = None):
    """An untrained MaskRCNN: the preset `arch`, or MaskRCNN(fpn_backbone(backbone), ...) with
    its own heads; `model_kwargs` is exporter.model_kwargs.parse_model_kwargs' result."""
    from torchvision.models.detection import MaskRCNN

    kwargs = maskrcnn_kwargs(model_kwargs or {})
    try:
        if backbone:
            return MaskRCNN(fpn_backbone(backbone), num_classes=num_classes, **kwargs)
        return _builder(arch)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    except (ValueError, TypeError, AssertionError) as exc:  # e.g. anchors for 3 levels on a 5-level FPN
        raise WeightsError(f"cannot build {architecture_name(arch, backbone)} with these settings: {exc}") from None


def fit_predictors(model, state: dict) -> None:
    """Give `model` box and mask predictors of the sizes `state` has (the fine-tuning tutorial
    replaces both: FastRCNNPredictor(in, classes), MaskRCNNPredictor(in, hidden, classes))."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    heads = model.roi_heads
    cls = state.get("roi_heads.box_predictor.cls_score.weight")
    if cls is not None and cls.ndim == 2 and tuple(cls.shape) != tuple(heads.box_predictor.cls_score.weight.shape):
        heads.box_predictor = FastRCNNPredictor(int(cls.shape[1]), int(cls.shape[0]))
    up = state.get("roi_heads.mask_predictor.conv5_mask.weight")  # ConvTranspose2d: (in, hidden, 2, 2)
    logits = state.get("roi_heads.mask_predictor.mask_fcn_logits.weight")  # (classes, hidden, 1, 1)
    if up is not None and logits is not None and up.ndim == 4 and logits.ndim == 4 and (
            tuple(up.shape) != tuple(heads.mask_predictor.conv5_mask.weight.shape)
            or tuple(logits.shape) != tuple(heads.mask_predictor.mask_fcn_logits.weight.shape)):
        heads.mask_predictor = MaskRCNNPredictor(int(up.shape[0]), int(up.shape[1]), int(logits.shape[0]))


def file_model(arch: str, path: Path, num_classes: int | None = None, backbone: str | None = None,
               model_kwargs: dict | None = None, weights_key: str | None = None, trust_pickle: bool = False):
    """(model, checkpoint): the architecture with the weights in checkpoint file `path`
    (exporter.checkpoints.read_checkpoint's result: its `layout` says how they were found).

    Published torchvision checkpoints use FrozenBatchNorm2d (no `num_batches_tracked`
    buffers); a model built without weights has BatchNorm2d, which only adds those buffers,
    so their absence is the one mismatch tolerated. Anything else is an error listing keys.
    A whole pickled MaskRCNN (trust_pickle only) is its own configuration and is returned as it is.
    """
    from torchvision.models.detection import MaskRCNN

    path = Path(path)
    checkpoint = read_checkpoint(path, weights_key=weights_key, trust_pickle=trust_pickle)
    if isinstance(checkpoint.model, MaskRCNN):
        if backbone or model_kwargs:
            raise WeightsError(f"{path} is a whole MaskRCNN, which carries its own configuration: "
                               f"drop --backbone and --model-kwargs")
        return checkpoint.model.eval(), checkpoint
    state = checkpoint.state_dict if checkpoint.model is None else checkpoint.model.state_dict()
    cls_key = "roi_heads.box_predictor.cls_score.weight"
    if num_classes is None:
        num_classes = int(state[cls_key].shape[0]) if cls_key in state else 91
    model = build_model(arch, num_classes, backbone, model_kwargs)
    fit_predictors(model, state)
    expected = model.state_dict()
    # BatchNorm2d's step counters, where the model has FrozenBatchNorm2d (resnet_fpn_backbone's)
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise WeightsError(f"{path} does not fit {architecture_name(arch, backbone)}: "
                           + misfit(missing, unexpected, mismatched))
    model.load_state_dict(state, strict=False)
    return model.eval(), checkpoint


def misfit(missing: list[str], unexpected: list[str], mismatched: list[str]) -> str:
    """Weights that do not fit a model, in one line: how many names of each kind, the first five."""
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
    return "; ".join(parts)


def set_resize_rule(model, min_size: int, max_size: int | None = None):
    """Change `model`'s resize rule (torchvision's transform) before export: the short side to
    `min_size`, the long-side cap to `max_size` or, by default, scaled in proportion."""
    old_min, old_max = model.transform.min_size[-1], model.transform.max_size
    model.transform.min_size = (int(min_size),)
    model.transform.max_size = int(max_size) if max_size else round(old_max * min_size / old_min)
    return model


def random_model(arch: str, seed: int, num_classes: int = 91, backbone: str | None = None,
                 model_kwargs: dict | None = None):
    """The architecture with seeded random weights, for tests and benchmarks.

    torchvision's own initialisation gives class logits of std ~0.01, so every score is
    ~1/num_classes and nothing clears any threshold: a useless test subject. For the presets
    we re-draw the box classifier so that class scores spread out (some above 0.9), the RPN
    objectness so proposals are ranked, and the normalisation statistics so features are not
    all alike. Other backbones (MobileNetV3's FrozenBatchNorm2d and squeeze-excitation shrink
    activations a hundredfold per stage) are scaled layer by layer instead
    (scale_activations). The result is untrained and says so in model.json.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_model(arch, num_classes, backbone, model_kwargs)
    if backbone:
        scale_activations(model.eval(), generator)
        return model.eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.5, 1.0, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
        model.rpn.head.cls_logits.weight.normal_(0.0, 0.1, generator=generator)
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0.0, 0.01, generator=generator)
        spread_class_scores(model.eval(), generator)
    return model.eval()


# Natural photos' amplitude spectrum falls as 1 / frequency ** ~1.5 over the scales a backbone
# sees; random images with it reach MobileNetV3's deep layers within a few times a photo's
# strength (blocks or shapes leave them ten to fifty times weaker, and a model scaled on them
# saturates on photos).
PHOTO_SPECTRUM_SLOPE = 1.5


def calibration_image(generator, height: int = 480, width: int = 640) -> torch.Tensor:
    """(3, H, W) in [0, 1]: seeded noise with a photo's amplitude spectrum (a shared
    luminance field plus a weaker one per channel), mean 0.45, spread 0.25."""
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    amplitude = torch.sqrt(fx ** 2 + fy ** 2).clamp_min(1.0 / max(height, width)) ** -PHOTO_SPECTRUM_SLOPE

    def field(channels: int) -> torch.Tensor:
        phase = torch.rand(channels, height, width // 2 + 1, generator=generator) * (2 * torch.pi)
        return torch.fft.irfft2(amplitude * torch.exp(1j * phase), s=(height, width))

    weights = torch.rand(3, 1, 1, generator=generator) * 0.5 + 0.5
    image = field(1) * weights + 0.5 * field(3)
    image = (image - image.mean()) / image.std() * 0.25 + 0.45
    return image.clamp(0, 1).float()


def scale_activations(model, generator) -> None:
    """Make a randomly initialised MaskRCNN a useful test subject: every convolution and
    linear layer rescaled so its output has unit spread on a seeded calibration_image (layer
    by layer, in one forward pass), the RPN's box deltas small, the box classifier spread by
    spread_class_scores."""
    image = calibration_image(generator)
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    scale_to_unit_spread(layers, lambda: model.eval()([image]))
    with torch.no_grad():
        head = model.rpn.head
        head.bbox_pred.weight.mul_(0.1)
        head.bbox_pred.bias.mul_(0.1)
        model.roi_heads.box_predictor.bbox_pred.weight.normal_(0.0, 0.01, generator=generator)
        model.roi_heads.box_predictor.bbox_pred.bias.zero_()
        spread_class_scores(model, generator, image=image, logit_std=0.5)


def scale_to_unit_spread(layers, forward) -> None:
    """Rescale each of `layers` (weight and bias) so that its output has unit standard
    deviation while `forward()` runs, layer by layer in that one pass (each later layer sees
    its inputs already rescaled)."""

    def unit_spread(module, inputs, output):
        spread = output.std().clamp_min(1e-6)
        module.weight.div_(spread)
        if module.bias is not None:
            module.bias.div_(spread)
        return output / spread

    hooks = [layer.register_forward_hook(unit_spread) for layer in layers]
    try:
        with torch.no_grad():
            forward()
    finally:
        for hook in hooks:
            hook.remove()


def spread_class_scores(model, generator, logit_std: float = 2.0, image: torch.Tensor | None = None) -> None:
    """Re-draw the box classifier around the box-head features of a calibration image
    (default: a seeded smooth random one).

    Centring on the mean feature and scaling by the features' spread makes the class
    decision depend on each RoI (not on a shared offset), so a random model still yields
    detections of many classes with scores spread over (0, 1).
    """
    if image is None:
        smooth = torch.rand(1, 3, 30, 40, generator=generator)
        image = torch.nn.functional.interpolate(smooth, size=(480, 640), mode="bilinear")[0]
    captured = {}
    hook = model.roi_heads.box_head.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    try:
        model([image])
    finally:
        hook.remove()
    features = captured["x"]
    mean = features.mean(dim=0)
    spread = (features - mean).norm(dim=1).mean().clamp_min(1e-6)
    cls_score = model.roi_heads.box_predictor.cls_score
    cls_score.weight.normal_(0.0, float(logit_std / spread), generator=generator)
    cls_score.bias.copy_(-cls_score.weight @ mean)

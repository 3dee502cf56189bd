"""Building torchvision Mask R-CNN models with COCO, file or seeded random weights."""

from __future__ import annotations

from pathlib import Path

import torch

# torch-free, so `serve --model` shares them: the architectures, the download probe and its message
from engine.named_models import ARCHS, download_hint, unreachable_reason, url_file_name


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


def file_model(arch: str, path: Path, num_classes: int | None = None):
    """The architecture with a torchvision Mask R-CNN `state_dict` file.

    Published torchvision checkpoints use FrozenBatchNorm2d (no `num_batches_tracked`
    buffers); a model built without weights has BatchNorm2d, which only adds those buffers,
    so their absence is the one mismatch tolerated. Anything else is an error listing keys.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # training checkpoints often nest the state_dict
    if not isinstance(state, dict):
        raise WeightsError(f"{path} does not hold a state_dict (got {type(state).__name__})")
    cls_key = "roi_heads.box_predictor.cls_score.weight"
    if num_classes is None:
        num_classes = int(state[cls_key].shape[0]) if cls_key in state else 91
    model = _builder(arch)(weights=None, weights_backbone=None, num_classes=num_classes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
        raise WeightsError(f"{path} does not fit {arch}: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return model


def set_resize_rule(model, min_size: int, max_size: int | None = None):
    """Change `model`'s resize rule (torchvision's transform) before export: the short side to
    `min_size`, the long-side cap to `max_size` or, by default, scaled in proportion."""
    old_min, old_max = model.transform.min_size[-1], model.transform.max_size
    model.transform.min_size = (int(min_size),)
    model.transform.max_size = int(max_size) if max_size else round(old_max * min_size / old_min)
    return model


def random_model(arch: str, seed: int, num_classes: int = 91):
    """The architecture with seeded random weights, for tests and benchmarks.

    torchvision's own initialisation gives class logits of std ~0.01, so every score is
    ~1/num_classes and nothing clears any threshold: a useless test subject. We re-draw the
    box classifier so that class scores spread out (some above 0.9), the RPN objectness so
    proposals are ranked, and the normalisation statistics so features are not all alike.
    The result is untrained and says so in model.json.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = _builder(arch)(weights=None, weights_backbone=None, num_classes=num_classes)
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


def spread_class_scores(model, generator, logit_std: float = 2.0) -> None:
    """Re-draw the box classifier around the box-head features of a seeded calibration image.

    Centring on the mean feature and scaling by the features' spread makes the class
    decision depend on each RoI (not on a shared offset), so a random model still yields
    detections of many classes with scores spread over (0, 1).
    """
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

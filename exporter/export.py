"""Export any torchvision MaskRCNN to a model directory the engine can load.

The directory holds three ONNX graphs (see `exporter.graphs`) and `model.json`, the single
source of every number the engine uses (normalisation, resize rule, anchors, RPN and RoI
head settings, RoIAlign scales, class names), plus provenance. It is written into a
temporary sibling directory and renamed into place, so a failed export leaves nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from engine.backends.base import RPN_DELTAS_PREFIX, RPN_LOGITS_PREFIX  # the backends' rpn_output_names reads these
from engine.model_directory.config import (GRAPHS, MODEL_FORMAT, PASTE_MODES, BoxHeadConfig, GraphFile, GraphFiles,
                                           MaskHeadConfig, ModelConfig, RoIPoolConfig, RpnConfig, TransformConfig)
from engine.model_directory.directory import sha256_of

from .graphs import BoxHeadGraph, DenseGraph, MaskHeadGraph

OPSET = 17
# Graph-level ops the engine keeps out of the graphs (done in numpy), so TensorRT can build them.
FORBIDDEN_OPS = {"NonMaxSuppression", "NonZero", "Loop", "If"}

log = logging.getLogger(__name__)


def _infer_scale(feature_hw, image_hw) -> float:
    """torchvision's MultiScaleRoIAlign rule: 2 ** round(log2(feature / image)), from the height."""
    approx = float(feature_hw[0]) / float(image_hw[0])
    return 2.0 ** float(torch.tensor(approx).log2().round())


def _sizes(value) -> tuple:
    """Anchor sizes or aspect ratios per level, as tuples of floats."""
    return tuple(tuple(float(x) for x in v) if isinstance(v, (tuple, list)) else (float(v),) for v in value)


def rpn_settings(rpn) -> RpnConfig:
    """model.json's "rpn" section for a torchvision RegionProposalNetwork (its eval settings)."""
    return RpnConfig(
        anchor_sizes=_sizes(rpn.anchor_generator.sizes),
        aspect_ratios=_sizes(rpn.anchor_generator.aspect_ratios),
        pre_nms_top_n=int(rpn._pre_nms_top_n["testing"]),
        post_nms_top_n=int(rpn._post_nms_top_n["testing"]),
        nms_thresh=float(rpn.nms_thresh),
        score_thresh=float(rpn.score_thresh),
        min_size=float(rpn.min_size),
        box_coder_weights=tuple(float(w) for w in rpn.box_coder.weights),
        bbox_xform_clip=float(rpn.box_coder.bbox_xform_clip),
    )


def _export_graph(module, args, path, input_names, output_names, dynamic_axes):
    # A new wrapper module is in training mode, and torch.onnx.export restores the mode it
    # found, recursively: without eval() here the caller's model would come back training.
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes; the graphs are checked below
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    found = sorted({node.op_type for node in graph.graph.node} & FORBIDDEN_OPS)
    if found:
        raise RuntimeError(f"{path.name} contains {found}; the engine expects dense graphs only")


# The model.json sections `conventions` may change (exporter.detectron2.conventions).
CONVENTION_SECTIONS = ("transform", "rpn", "box_head", "mask_head")
_POOL_FIELDS = {f.name for f in dataclasses.fields(RoIPoolConfig)}


@dataclasses.dataclass(frozen=True)
class _Traced:
    """What one backbone run on a blank image says about a model: the maps it makes, which of
    them the RoI heads pool, and each head's RoIAlign settings."""

    image: torch.Tensor  # (1, 3, H, W) zeros, H and W multiples of the size divisor: what every graph is traced on
    features: dict  # name -> (1, C, h, w) feature map of `image`
    pooled_names: list[str]  # the maps either head pools, in the backbone's order
    box_pool: RoIPoolConfig
    mask_pool: RoIPoolConfig

    @property
    def feature_outputs(self) -> list[str]:
        """The dense graph's outputs the heads read (and the heads' inputs)."""
        return [f"feature_{n}" for n in self.pooled_names]


def _check_arguments(model, output_dir: Path, class_names, overwrite: bool, mask_paste: str,
                     conventions: dict[str, dict]) -> list[str]:
    """The export's arguments checked before any work: the class names as strings."""
    from torchvision.models.detection import MaskRCNN

    if not isinstance(model, MaskRCNN):
        raise TypeError(f"expected a torchvision MaskRCNN, got {type(model).__name__}")
    class_names = [str(c) for c in class_names]
    num_classes = model.roi_heads.box_predictor.cls_score.out_features
    if len(class_names) != num_classes:
        raise ValueError(f"model has {num_classes} classes but {len(class_names)} class names were given")
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists (pass overwrite=True / --force to replace it)")
    if mask_paste not in PASTE_MODES:
        raise ValueError(f"mask_paste must be one of {PASTE_MODES}, not {mask_paste!r}")
    unknown = sorted(set(conventions) - set(CONVENTION_SECTIONS))
    if unknown:
        raise ValueError(f"conventions: unknown model.json sections {unknown}")
    return class_names


def _pool_conventions(conventions: dict[str, dict], section: str) -> dict:
    """A head's conventions that are RoIAlign settings (RoIPoolConfig fields)."""
    return {k: v for k, v in conventions.get(section, {}).items() if k in _POOL_FIELDS}


def _head_conventions(conventions: dict[str, dict], section: str) -> dict:
    """A head's other conventions (its own config's fields)."""
    return {k: v for k, v in conventions.get(section, {}).items() if k not in _POOL_FIELDS}


def _pool_settings(pool, pooled_names: list[str], features: dict, image_hw) -> RoIPoolConfig:
    """model.json's RoIAlign settings for a torchvision MultiScaleRoIAlign: its maps (as indices
    into the pooled maps), their scales, output size and sampling ratio, level mapping."""
    size = pool.output_size
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    return RoIPoolConfig(
        featmap_names=tuple(pool.featmap_names),
        feature_indices=tuple(pooled_names.index(n) for n in pool.featmap_names),
        scales=tuple(_infer_scale(features[n].shape[-2:], image_hw) for n in pool.featmap_names),
        output_size=size,
        sampling_ratio=int(pool.sampling_ratio),
        canonical_scale=int(getattr(pool, "canonical_scale", 224)),
        canonical_level=int(getattr(pool, "canonical_level", 4)),
    )


def _trace_backbone(model, conventions: dict[str, dict]) -> _Traced:
    """Run the backbone once on a blank image (12 x 16 size divisors) and read the layout."""
    divisor = model.transform.size_divisible
    image = torch.zeros(1, 3, 12 * divisor, 16 * divisor)
    with torch.no_grad():
        features = model.backbone(image)
    heads = model.roi_heads
    box_pool, mask_pool = heads.box_roi_pool, heads.mask_roi_pool
    pooled_names = [n for n in features.keys() if n in box_pool.featmap_names or n in mask_pool.featmap_names]
    image_hw = image.shape[-2:]
    return _Traced(
        image=image,
        features=features,
        pooled_names=pooled_names,
        box_pool=dataclasses.replace(_pool_settings(box_pool, pooled_names, features, image_hw),
                                     **_pool_conventions(conventions, "box_head")),
        mask_pool=dataclasses.replace(_pool_settings(mask_pool, pooled_names, features, image_hw),
                                      **_pool_conventions(conventions, "mask_head")),
    )


def _export_dense(model, traced: _Traced, path: Path) -> None:
    """dense.onnx: backbone, FPN and RPN head; the pooled feature maps and every level's RPN
    logits and deltas out, every spatial size dynamic."""
    num_levels = len(traced.features)
    logits_outputs = [f"{RPN_LOGITS_PREFIX}{i}" for i in range(num_levels)]
    deltas_outputs = [f"{RPN_DELTAS_PREFIX}{i}" for i in range(num_levels)]
    outputs = traced.feature_outputs + logits_outputs + deltas_outputs
    _export_graph(
        DenseGraph(model, traced.pooled_names),
        (traced.image,),
        path,
        ["images"],
        outputs,
        {"images": {0: "batch", 2: "height", 3: "width"}, **{n: {2: f"{n}_h", 3: f"{n}_w"} for n in outputs}},
    )


def _mask_head_output(model, traced: _Traced) -> tuple[int, int]:
    """(channels, size) of the mask predictor's output: one mask per class, size x size."""
    heads = model.roi_heads
    channels = traced.features[traced.pooled_names[0]].shape[1]
    with torch.no_grad():
        probe = heads.mask_predictor(heads.mask_head(torch.zeros(1, channels, *traced.mask_pool.output_size)))
    return int(probe.shape[1]), int(probe.shape[-1])


def _sample_rois(count: int) -> torch.Tensor:
    """(count, 4) seeded boxes to trace a head on; distinct counts per level keep the tracer
    from baking a size in."""
    torch.manual_seed(0)
    xy = torch.rand(count, 2) * 100
    return torch.cat([xy, xy + 20 + torch.rand(count, 2) * 100], dim=1)


def _export_head(model, traced: _Traced, graph_cls, settings: RoIPoolConfig, path: Path, output_names: list[str],
                 mask_channels: int | None = None) -> None:
    """box_head.onnx or mask_head.onnx: multi-level RoIAlign and the head, on the pooled maps
    and one RoI array per pooled level (the mask head also takes each RoI's class id, given
    mask_channels: the classes it predicts masks for); the RoI counts dynamic."""
    rois = [_sample_rois(2 + j) for j in range(len(settings.featmap_names))]
    roi_names = [f"rois_{j}" for j in range(len(rois))]
    args = [*(traced.features[n] for n in traced.pooled_names), *rois]
    input_names = traced.feature_outputs + roi_names
    axes = {**{n: {2: f"{n}_h", 3: f"{n}_w"} for n in traced.feature_outputs},
            **{n: {0: f"{n}_count"} for n in roi_names}}
    if mask_channels is not None:
        total = sum(r.shape[0] for r in rois)
        args.append(torch.arange(total, dtype=torch.int64) % mask_channels)
        input_names.append("class_ids")
        axes["class_ids"] = {0: "num_rois"}
    axes.update({n: {0: "num_rois"} for n in output_names})
    module = graph_cls(
        model,
        len(traced.pooled_names),
        list(settings.feature_indices),
        list(settings.scales),
        settings.output_size,
        settings.sampling_ratio,
        settings.aligned,
    )
    _export_graph(module, tuple(args), path, input_names, output_names, axes)


def _model_config(model, traced: _Traced, graphs_dir: Path, *, name: str, arch: str, class_names: list[str],
                  weights_info: dict | None, mask_paste: str, mask_size: int,
                  conventions: dict[str, dict]) -> ModelConfig:
    """model.json's content: the model's eval settings as torchvision holds them, with the
    conventions applied, the graphs' sha256s (in graphs_dir) and the tools' versions."""
    import onnx
    import torchvision

    transform, heads = model.transform, model.roi_heads
    return ModelConfig(
        format=MODEL_FORMAT,
        name=name,
        arch=arch,
        class_names=tuple(class_names),
        weights=weights_info or {"source": "unknown", "trained": True},
        transform=TransformConfig(**{
            "image_mean": tuple(float(v) for v in transform.image_mean),
            "image_std": tuple(float(v) for v in transform.image_std),
            "min_size": int(transform.min_size[-1]),
            "max_size": int(transform.max_size),
            "size_divisible": int(transform.size_divisible),
            **conventions.get("transform", {}),
        }),
        rpn=dataclasses.replace(rpn_settings(model.rpn), **conventions.get("rpn", {})),
        box_head=BoxHeadConfig(**{
            **dataclasses.asdict(traced.box_pool),
            "box_coder_weights": tuple(float(w) for w in heads.box_coder.weights),
            "bbox_xform_clip": float(heads.box_coder.bbox_xform_clip),
            "score_thresh": float(heads.score_thresh),
            "nms_thresh": float(heads.nms_thresh),
            "detections_per_img": int(heads.detections_per_img),
            **_head_conventions(conventions, "box_head"),
        }),
        mask_head=MaskHeadConfig(**{**dataclasses.asdict(traced.mask_pool), "mask_size": mask_size,
                                    "mask_threshold": 0.5, "paste": mask_paste,
                                    **_head_conventions(conventions, "mask_head")}),
        features=tuple(traced.feature_outputs),
        graphs=GraphFiles(**{key: GraphFile(file=f"{key}.onnx", sha256=sha256_of(graphs_dir / f"{key}.onnx"))
                             for key in GRAPHS}),
        tools={"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
               "opset": OPSET},
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def _write_model_json(directory: Path, config: ModelConfig) -> None:
    (directory / "model.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")


def _move_into_place(staging: Path, output_dir: Path) -> None:
    """The finished staging directory becomes output_dir (an earlier one there is replaced)."""
    os.chmod(staging, 0o755)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(staging, output_dir)


def export(
    model,
    output_dir,
    class_names,
    *,
    name: str | None = None,
    arch: str = "custom",
    weights_info: dict | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    mask_paste: str = "torchvision",
    conventions: dict[str, dict] | None = None,
) -> Path:
    """Export `model` (a torchvision `MaskRCNN`) to the model directory `output_dir`.

    Args:
        model: torchvision.models.detection.MaskRCNN, any backbone or number of classes.
        output_dir: directory to create; refused if it exists unless `overwrite`.
        class_names: one name per model class, index 0 the background (torchvision's rule).
        name: model name reported by the server; defaults to the directory name.
        arch: architecture tag recorded in model.json.
        weights_info: provenance, e.g. {"source": "random", "seed": 0, "trained": False}.
        quiet: progress as DEBUG records of this module's logger instead of INFO ones (an
            entry point shows INFO: exporter.show_progress).
        mask_paste: "torchvision" (its paste_masks_in_image, exactly) or "aligned" (float
            boxes in the frame the mask head is trained in; see engine.masks).
        conventions: model.json fields that differ from what the torchvision modules say,
            per section ("transform", "rpn", "box_head", "mask_head"), e.g. a detectron2
            model's (exporter.detectron2.conventions). The RoIAlign's own (aligned) reach
            the graphs too.
    Returns:
        The path of the written directory.
    """
    output_dir = Path(output_dir)
    conventions = conventions or {}
    class_names = _check_arguments(model, output_dir, class_names, overwrite, mask_paste, conventions)
    progress = logging.DEBUG if quiet else logging.INFO
    model = model.eval().cpu()
    traced = _trace_backbone(model, conventions)

    parent = output_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=parent))
    try:
        log.log(progress, "[1/3] exporting the dense graph (backbone, FPN, RPN head)...")
        _export_dense(model, traced, staging / "dense.onnx")
        mask_channels, mask_size = _mask_head_output(model, traced)
        log.log(progress, "[2/3] exporting box head graph...")
        _export_head(model, traced, BoxHeadGraph, traced.box_pool, staging / "box_head.onnx",
                     ["class_probs", "box_deltas"])
        log.log(progress, "[3/3] exporting mask head graph...")
        _export_head(model, traced, MaskHeadGraph, traced.mask_pool, staging / "mask_head.onnx", ["mask_probs"],
                     mask_channels)
        config = _model_config(model, traced, staging, name=name or output_dir.name, arch=arch,
                               class_names=class_names, weights_info=weights_info, mask_paste=mask_paste,
                               mask_size=mask_size, conventions=conventions)
        _write_model_json(staging, config)
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.log(progress, "model directory written: %s", output_dir)
    return output_dir

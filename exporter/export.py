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
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

from engine.backends.base import RPN_DELTAS_PREFIX, RPN_LOGITS_PREFIX  # the backends' rpn_output_names reads these
from engine.model_config import (GRAPHS, MODEL_FORMAT, PASTE_MODES, BoxHeadConfig, GraphFile, GraphFiles, MaskHeadConfig,
                                 ModelConfig, RoIPoolConfig, RpnConfig, TransformConfig)
from engine.model_dir import sha256_of

from .graphs import BoxHeadGraph, DenseGraph, MaskHeadGraph

OPSET = 17
# Graph-level ops the engine keeps out of the graphs (done in numpy), so TensorRT can build them.
FORBIDDEN_OPS = {"NonMaxSuppression", "NonZero", "Loop", "If"}


def _log(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


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
        mask_paste: "torchvision" (its paste_masks_in_image, exactly) or "aligned" (float
            boxes in the frame the mask head is trained in; see engine.masks).
        conventions: model.json fields that differ from what the torchvision modules say,
            per section ("transform", "rpn", "box_head", "mask_head"), e.g. a detectron2
            model's (exporter.detectron2.conventions). The RoIAlign's own (aligned) reach
            the graphs too.
    Returns:
        The path of the written directory.
    """
    from torchvision.models.detection import MaskRCNN

    if not isinstance(model, MaskRCNN):
        raise TypeError(f"expected a torchvision MaskRCNN, got {type(model).__name__}")
    output_dir = Path(output_dir)
    class_names = [str(c) for c in class_names]
    num_classes = model.roi_heads.box_predictor.cls_score.out_features
    if len(class_names) != num_classes:
        raise ValueError(f"model has {num_classes} classes but {len(class_names)} class names were given")
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists (pass overwrite=True / --force to replace it)")
    if mask_paste not in PASTE_MODES:
        raise ValueError(f"mask_paste must be one of {PASTE_MODES}, not {mask_paste!r}")

    model = model.eval().cpu()
    transform, rpn, heads = model.transform, model.rpn, model.roi_heads
    divisor = transform.size_divisible
    dummy = torch.zeros(1, 3, 12 * divisor, 16 * divisor)

    with torch.no_grad():
        features = model.backbone(dummy)
    backbone_names = list(features.keys())
    box_pool, mask_pool = heads.box_roi_pool, heads.mask_roi_pool
    pooled_names = [n for n in backbone_names if n in box_pool.featmap_names or n in mask_pool.featmap_names]
    image_hw = dummy.shape[-2:]

    def pool_settings(pool) -> RoIPoolConfig:
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

    conventions = conventions or {}
    unknown = sorted(set(conventions) - {"transform", "rpn", "box_head", "mask_head"})
    if unknown:
        raise ValueError(f"conventions: unknown model.json sections {unknown}")
    pool_fields = {f.name for f in dataclasses.fields(RoIPoolConfig)}

    def pool_part(section: str) -> dict:
        return {k: v for k, v in conventions.get(section, {}).items() if k in pool_fields}

    def head_part(section: str) -> dict:
        return {k: v for k, v in conventions.get(section, {}).items() if k not in pool_fields}

    box_settings = dataclasses.replace(pool_settings(box_pool), **pool_part("box_head"))
    mask_settings = dataclasses.replace(pool_settings(mask_pool), **pool_part("mask_head"))
    num_levels = len(backbone_names)
    feature_outputs = [f"feature_{n}" for n in pooled_names]
    logits_outputs = [f"{RPN_LOGITS_PREFIX}{i}" for i in range(num_levels)]
    deltas_outputs = [f"{RPN_DELTAS_PREFIX}{i}" for i in range(num_levels)]

    parent = output_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=parent))
    try:
        _log("[1/3] exporting the dense graph (backbone, FPN, RPN head)...", quiet)
        spatial = {0: "batch", 2: "height", 3: "width"}
        _export_graph(
            DenseGraph(model, pooled_names),
            (dummy,),
            staging / "dense.onnx",
            ["images"],
            feature_outputs + logits_outputs + deltas_outputs,
            {"images": spatial, **{n: {2: f"{n}_h", 3: f"{n}_w"} for n in feature_outputs + logits_outputs + deltas_outputs}},
        )

        with torch.no_grad():
            probe = heads.mask_predictor(heads.mask_head(torch.zeros(1, features[pooled_names[0]].shape[1], *mask_settings.output_size)))
        mask_channels, mask_size = int(probe.shape[1]), int(probe.shape[-1])
        feature_inputs = [features[n] for n in pooled_names]
        feature_axes = {n: {2: f"{n}_h", 3: f"{n}_w"} for n in feature_outputs}

        def sample_rois(count):
            # distinct counts per level keep the tracer from baking a size in
            torch.manual_seed(0)
            xy = torch.rand(count, 2) * 100
            return torch.cat([xy, xy + 20 + torch.rand(count, 2) * 100], dim=1)

        for step, (graph_cls, settings, extra_in, out_names, filename) in enumerate(
            [
                (BoxHeadGraph, box_settings, [], ["class_probs", "box_deltas"], "box_head.onnx"),
                (MaskHeadGraph, mask_settings, ["class_ids"], ["mask_probs"], "mask_head.onnx"),
            ],
            start=2,
        ):
            _log(f"[{step}/3] exporting {filename[:-5].replace('_', ' ')} graph...", quiet)
            rois = [sample_rois(2 + j) for j in range(len(settings.featmap_names))]
            roi_names = [f"rois_{j}" for j in range(len(rois))]
            args = [*feature_inputs, *rois]
            axes = {**feature_axes, **{n: {0: f"{n}_count"} for n in roi_names}}
            if extra_in:
                total = sum(r.shape[0] for r in rois)
                args.append(torch.arange(total, dtype=torch.int64) % mask_channels)
                axes["class_ids"] = {0: "num_rois"}
            axes.update({n: {0: "num_rois"} for n in out_names})
            module = graph_cls(
                model,
                len(pooled_names),
                list(settings.feature_indices),
                list(settings.scales),
                settings.output_size,
                settings.sampling_ratio,
                settings.aligned,
            )
            _export_graph(module, tuple(args), staging / filename, feature_outputs + roi_names + extra_in, out_names, axes)


        import onnx
        import torchvision

        config = ModelConfig(
            format=MODEL_FORMAT,
            name=name or output_dir.name,
            arch=arch,
            class_names=tuple(class_names),
            weights=weights_info or {"source": "unknown", "trained": True},
            transform=TransformConfig(**{
                "image_mean": tuple(float(v) for v in transform.image_mean),
                "image_std": tuple(float(v) for v in transform.image_std),
                "min_size": int(transform.min_size[-1]),
                "max_size": int(transform.max_size),
                "size_divisible": int(divisor),
                **conventions.get("transform", {}),
            }),
            rpn=dataclasses.replace(rpn_settings(rpn), **conventions.get("rpn", {})),
            box_head=BoxHeadConfig(**{
                **dataclasses.asdict(box_settings),
                "box_coder_weights": tuple(float(w) for w in heads.box_coder.weights),
                "bbox_xform_clip": float(heads.box_coder.bbox_xform_clip),
                "score_thresh": float(heads.score_thresh),
                "nms_thresh": float(heads.nms_thresh),
                "detections_per_img": int(heads.detections_per_img),
                **head_part("box_head"),
            }),
            mask_head=MaskHeadConfig(**{**dataclasses.asdict(mask_settings), "mask_size": mask_size,
                                        "mask_threshold": 0.5, "paste": mask_paste, **head_part("mask_head")}),
            features=tuple(feature_outputs),
            graphs=GraphFiles(**{key: GraphFile(file=f"{key}.onnx", sha256=sha256_of(staging / f"{key}.onnx"))
                                 for key in GRAPHS}),
            tools={"torch": torch.__version__, "torchvision": torchvision.__version__, "onnx": onnx.__version__,
                   "opset": OPSET},
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )
        (staging / "model.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")
        os.chmod(staging, 0o755)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _log(f"model directory written: {output_dir}", quiet)
    return output_dir

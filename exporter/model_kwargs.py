"""The MaskRCNN keyword arguments a model was trained with, from JSON (build_engine.py
--model-kwargs): the configuration a state_dict does not carry.

    parse_model_kwargs(text_or_path) -> dict   checked JSON values (one clear ValueError otherwise)
    maskrcnn_kwargs(spec) -> dict              the keyword arguments, modules built

Scalars and lists are torchvision's MaskRCNN/FasterRCNN/GeneralizedRCNNTransform arguments
of the same names. Three take modules, given as their constructor arguments:

    "rpn_anchor_generator": {"sizes": [[32, 64], [128]], "aspect_ratios": [[0.5, 1, 2], [1]]}
        AnchorGenerator; aspect_ratios may be one list, used for every level
    "box_roi_pool" / "mask_roi_pool": {"featmap_names": ["0", "1"], "output_size": 7, "sampling_ratio": 2}
        MultiScaleRoIAlign; output_size an int or [h, w]
"""

from __future__ import annotations

import json
from pathlib import Path

INT_KEYS = ("max_size", "size_divisible", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test", "rpn_batch_size_per_image",
            "box_batch_size_per_image", "box_detections_per_img")
FLOAT_KEYS = ("rpn_nms_thresh", "rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_positive_fraction",
              "rpn_score_thresh", "box_score_thresh", "box_nms_thresh", "box_fg_iou_thresh",
              "box_bg_iou_thresh", "box_positive_fraction")
VECTOR_KEYS = {"image_mean": 3, "image_std": 3, "bbox_reg_weights": 4}  # float lists of this length
MODULE_KEYS = ("rpn_anchor_generator", "box_roi_pool", "mask_roi_pool")
KNOWN_KEYS = ("min_size", *INT_KEYS, *FLOAT_KEYS, *VECTOR_KEYS, *MODULE_KEYS)
# Set elsewhere, or not something the engine serves.
REFUSED = {
    "num_classes": "comes from --class-names (or the checkpoint)",
    "fixed_size": "resizes to a fixed size; the engine serves torchvision's min/max-size rule only",
    "_skip_resize": "is a training-time switch",
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _numbers(value, where: str, length: int | None = None, positive: bool = False) -> list[float]:
    if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
        raise ValueError(f"--model-kwargs: {where} must be a non-empty list of numbers, got {json.dumps(value)}")
    if length is not None and len(value) != length:
        raise ValueError(f"--model-kwargs: {where} must have {length} numbers, got {len(value)}")
    if positive and any(v <= 0 for v in value):
        raise ValueError(f"--model-kwargs: {where} must be positive, got {json.dumps(value)}")
    return [float(v) for v in value]


def _check_positive_int(value, where: str) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"--model-kwargs: {where} must be a positive integer, got {json.dumps(value)}")
    return value


def _check_fields(value, where: str, required: tuple, optional: tuple = ()) -> dict:
    if not isinstance(value, dict):
        raise ValueError(f"--model-kwargs: {where} must be an object with {', '.join(required)}, got {json.dumps(value)}")
    unknown = sorted(set(value) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"--model-kwargs: {where}.{unknown[0]} is not a known key (use {', '.join(required + optional)})")
    missing = [k for k in required if k not in value]
    if missing:
        raise ValueError(f"--model-kwargs: {where}.{missing[0]} is missing")
    return value


def _check_anchors(value) -> dict:
    value = _check_fields(value, "rpn_anchor_generator", ("sizes",), ("aspect_ratios",))
    sizes = value["sizes"]
    if not isinstance(sizes, list) or not sizes:
        raise ValueError("--model-kwargs: rpn_anchor_generator.sizes must be a list with one list of sizes per level")
    sizes = [_numbers(level if isinstance(level, list) else [level], f"rpn_anchor_generator.sizes[{i}]", positive=True)
             for i, level in enumerate(sizes)]
    ratios = value.get("aspect_ratios", [0.5, 1.0, 2.0])
    if isinstance(ratios, list) and ratios and all(_is_number(r) for r in ratios):
        ratios = [ratios] * len(sizes)  # one list for every level
    if not isinstance(ratios, list) or len(ratios) != len(sizes):
        raise ValueError(f"--model-kwargs: rpn_anchor_generator.aspect_ratios must be one list, or one per level "
                         f"({len(sizes)}), got {json.dumps(value.get('aspect_ratios'))}")
    ratios = [_numbers(level, f"rpn_anchor_generator.aspect_ratios[{i}]", positive=True) for i, level in enumerate(ratios)]
    if len({len(s) * len(r) for s, r in zip(sizes, ratios)}) != 1:
        raise ValueError("--model-kwargs: rpn_anchor_generator must give every level the same number of anchors "
                         "(sizes x aspect ratios): torchvision's RPN head shares one conv across levels")
    return {"sizes": sizes, "aspect_ratios": ratios}


def _check_pool(value, where: str) -> dict:
    value = _check_fields(value, where, ("featmap_names", "output_size", "sampling_ratio"))
    names = value["featmap_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"--model-kwargs: {where}.featmap_names must be a non-empty list of feature map names "
                         f"(strings such as \"0\"), got {json.dumps(names)}")
    size = value["output_size"]
    size = [size, size] if _is_int(size) else size
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) and s > 0 for s in size)):
        raise ValueError(f"--model-kwargs: {where}.output_size must be a positive integer or [h, w], "
                         f"got {json.dumps(value['output_size'])}")
    ratio = value["sampling_ratio"]
    if not _is_int(ratio) or ratio < 0:
        raise ValueError(f"--model-kwargs: {where}.sampling_ratio must be an integer >= 0, got {json.dumps(ratio)}")
    return {"featmap_names": names, "output_size": size, "sampling_ratio": ratio}


def parse_model_kwargs(text_or_path: str) -> dict:
    """The JSON object in `text_or_path` (inline JSON, or a file holding it), checked: every
    key known, every value of the right type and range. Raises ValueError naming the key."""
    text = text_or_path
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"--model-kwargs: {text!r} is neither a JSON object nor a file")
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--model-kwargs: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("--model-kwargs: must be a JSON object of MaskRCNN keyword arguments")
    spec = {}
    for key, value in data.items():
        if key in REFUSED:
            raise ValueError(f"--model-kwargs: {key} {REFUSED[key]}")
        if key not in KNOWN_KEYS:
            raise ValueError(f"--model-kwargs: {key} is not a MaskRCNN argument the engine serves; known: "
                             f"{', '.join(KNOWN_KEYS)}")
        if key == "min_size":
            sizes = value if isinstance(value, list) else [value]  # a list: training's multi-scale sizes
            checked = [_check_positive_int(s, key) for s in sizes] or [_check_positive_int(None, key)]
            spec[key] = checked if isinstance(value, list) else checked[0]
        elif key in INT_KEYS:
            spec[key] = _check_positive_int(value, key)
        elif key in FLOAT_KEYS:
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"--model-kwargs: {key} must be a number in [0, 1], got {json.dumps(value)}")
            spec[key] = float(value)
        elif key in VECTOR_KEYS:
            if key == "bbox_reg_weights" and value is None:
                spec[key] = None
                continue
            spec[key] = _numbers(value, key, VECTOR_KEYS[key], positive=key != "image_mean")
        elif key == "rpn_anchor_generator":
            spec[key] = _check_anchors(value)
        else:
            spec[key] = _check_pool(value, key)
    return spec


def maskrcnn_kwargs(spec: dict) -> dict:
    """parse_model_kwargs' result as MaskRCNN keyword arguments (modules constructed)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.ops import MultiScaleRoIAlign

    kwargs = dict(spec)
    if "min_size" in kwargs and isinstance(kwargs["min_size"], list):
        kwargs["min_size"] = tuple(kwargs["min_size"])
    if kwargs.get("bbox_reg_weights") is not None:
        kwargs["bbox_reg_weights"] = tuple(kwargs["bbox_reg_weights"])
    if "rpn_anchor_generator" in kwargs:
        anchors = kwargs["rpn_anchor_generator"]
        kwargs["rpn_anchor_generator"] = AnchorGenerator(
            sizes=tuple(tuple(level) for level in anchors["sizes"]),
            aspect_ratios=tuple(tuple(level) for level in anchors["aspect_ratios"]))
    for key in ("box_roi_pool", "mask_roi_pool"):
        if key in kwargs:
            pool = kwargs[key]
            kwargs[key] = MultiScaleRoIAlign(pool["featmap_names"], tuple(pool["output_size"]), pool["sampling_ratio"])
    return kwargs

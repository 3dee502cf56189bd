"""What a model directory holds, from model.json alone: `python -m engine info DIR [--json]`.

No graph is loaded and no runtime imported, so it answers on the serving image (no torch) and
on a machine without any backend. `model_info` is the JSON form; `describe` writes that same
dict for people, so the two cannot disagree.
"""

from __future__ import annotations

import json
import textwrap

from .directory import ModelDir

WIDTH = 100  # human form: lines wrapped here
LABEL = 15  # human form: width of the label column


def model_info(model_dir: ModelDir) -> dict:
    """A JSON-ready summary of a checked model directory.

    Keys: name, path, arch, backbone (str, or None when model.json's weights record names
    none), model_kwargs (the MaskRCNN keyword arguments given, or None), num_classes, classes
    (background first, as stored), resize (model.json's transform), rpn, box_head, mask_head,
    graphs (model.json's sections as written), precision ("fp32", or the quantization
    section's, e.g. "int8"), quantization and tensorrt (the sections, or None), provenance
    ({weights, trained, tools, created, format}).
    """
    config = model_dir.config
    data = config.to_json()
    weights = data["weights"]
    return {
        "name": model_dir.name,
        "path": str(model_dir.path.resolve()),
        "arch": data["arch"],
        "backbone": weights.get("backbone"),
        "model_kwargs": weights.get("model_kwargs"),
        "num_classes": len(data["class_names"]),
        "classes": data["class_names"],
        "resize": data["transform"],
        "rpn": data["rpn"],
        "box_head": data["box_head"],
        "mask_head": data["mask_head"],
        "graphs": data["graphs"],
        "precision": config.quantization.precision if config.quantization else "fp32",
        "quantization": data.get("quantization"),
        "tensorrt": data.get("tensorrt"),
        "provenance": {
            "weights": weights,
            "trained": config.trained,
            "tools": data["tools"],
            "created": data.get("created"),
            "format": data["format"],
        },
    }


def _num(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _nums(values) -> str:
    return ", ".join(_num(v) for v in values)


def _value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _pairs(mapping: dict) -> str:
    return ", ".join(f"{key} {_value(value)}" for key, value in mapping.items())


def _packed(names: list[str], width: int) -> list[str]:
    """`names` joined by ", " into lines of at most `width` characters, never splitting a name
    (COCO's have spaces: "traffic light")."""
    lines = [""]
    for i, name in enumerate(names):
        item = name + ("," if i < len(names) - 1 else "")
        if lines[-1] and len(lines[-1]) + 1 + len(item) > width:
            lines.append("")
        lines[-1] += (" " if lines[-1] else "") + item
    return lines


def _roi_align(head: dict) -> str:
    height, width = head["output_size"]
    epsilon = (f"log2(size / {head['canonical_scale']} + {_num(head.get('level_epsilon', 1e-6))})"
               if head.get("level_epsilon_in_log") else
               f"log2(size / {head['canonical_scale']}) + {_num(head.get('level_epsilon', 1e-6))}")
    return (f"RoIAlign {height}x{width}{' aligned (half-pixel)' if head.get('aligned') else ''} from feature maps "
            f"{', '.join(head['featmap_names'])} (scales {_nums(head['scales'])}), sampling ratio "
            f"{head['sampling_ratio']}{' (adaptive)' if head['sampling_ratio'] <= 0 else ''}; level "
            f"{head['canonical_level']} + {epsilon}")


def _resize(resize: dict) -> list[str]:
    rule = resize.get("resize", "torchvision")
    if rule == "shortest_edge" and resize["min_size"] == 0:
        size = "no resize (the photo's own size)"
    else:
        size = f"short side to {resize['min_size']} px, long side at most {resize['max_size']} px"
    how = ("sizes rounded, PIL bilinear on the 8-bit image (detectron2's ResizeShortestEdge)" if rule == "shortest_edge"
           else "sizes truncated, bilinear on the normalised image (torchvision's transform)")
    scale = " / 255" if resize.get("pixel_range", 1.0) == 1.0 else ""
    lines = [f"{size}, padded to a multiple of {resize['size_divisible']}", how,
             f"(x{scale} - mean) / std, {resize.get('channel_order', 'RGB')} mean {_nums(resize['image_mean'])}, "
             f"std {_nums(resize['image_std'])}"]
    if resize.get("clip_output"):
        lines.append("boxes clipped to the photo, empty ones dropped")
    return lines


def _anchors(rpn: dict) -> list[str]:
    lines = [f"level {level}: sizes {_nums(sizes)}; aspect ratios {_nums(ratios)}"
             for level, (sizes, ratios) in enumerate(zip(rpn["anchor_sizes"], rpn["aspect_ratios"]))]
    strides = rpn.get("anchor_strides")
    lines.append(f"{'rounded' if rpn.get('anchor_round', True) else 'unrounded'}, "
                 f"{rpn.get('anchor_order', 'ratios_outer').replace('_', ' ')}, offset {_num(rpn.get('anchor_offset', 0.0))}, "
                 f"strides {_nums(strides) if strides else 'padded size / grid size'}")
    return lines


def _weights(info: dict) -> str:
    if info["provenance"]["trained"]:
        return "trained"
    record = info["provenance"]["weights"]
    seed = f" (seed {record['seed']})" if "seed" in record else ""
    return f"UNTRAINED: {record.get('source', 'random')} weights{seed}, so its detections mean nothing"


def _precision(info: dict) -> list[str]:
    quantization = info["quantization"]
    if quantization is None:
        return ["FP32 graphs"]
    kept = {graph: len(nodes) for graph, nodes in quantization["fp32_layers"].items() if nodes}
    return [f"{quantization['precision'].upper()} graphs ({quantization['format']}, "
            f"{quantization['weight_bits']}-bit weights), ops {', '.join(quantization['ops'])}",
            f"calibration {_pairs(quantization['calibration'])}",
            "layers left in FP32: " + (", ".join(f"{graph} {n}" for graph, n in kept.items()) or "none")]


def _tensorrt(plans: dict | None) -> list[str]:
    if plans is None:
        return ["no plans (build_engine.py --tensorrt adds them on a GPU)"]
    lines = [f"{plans['precision'].upper()} plans for {plans['gpu_name']} (compute capability "
             f"{plans['compute_capability']}), TensorRT {plans['tensorrt_version']}, "
             f"{plans['profiles_per_plan']} profile(s) per plan",
             "files " + ", ".join(plan["file"] for plan in plans["plans"].values())]
    if plans.get("int8_graphs"):
        lines.append("INT8 graphs: " + ", ".join(plans["int8_graphs"]))
    if plans.get("built"):
        lines.append(f"built {plans['built']}")
    return lines


def describe(info: dict) -> str:
    """`model_info(...)` as labelled, wrapped lines for a terminal."""
    resize, rpn, box, mask = info["resize"], info["rpn"], info["box_head"], info["mask_head"]
    provenance = info["provenance"]
    # backbone, model_kwargs and trained have lines of their own
    record = {k: v for k, v in provenance["weights"].items() if k not in ("backbone", "model_kwargs", "trained")}
    rows = [
        ("model", [f"{info['name']} ({info['path']})"]),
        ("architecture", [info["arch"]]),
        ("backbone", [info["backbone"] or "unknown (model.json's weights record names none)"]),
    ]
    if info["model_kwargs"] is not None:
        rows.append(("model kwargs", [", ".join(f"{k}={json.dumps(v)}" for k, v in info["model_kwargs"].items())
                                      or "none"]))
    rows += [
        ("weights", [_weights(info), *(f"{key}: {_value(value)}" for key, value in record.items())]),
        ("classes", [f"{info['num_classes']}, background first:", *_packed(info["classes"], WIDTH - LABEL)]),
        ("resize", _resize(resize)),
        ("rpn anchors", _anchors(rpn)),
        ("rpn", [f"top {rpn['pre_nms_top_n']} per level before NMS, {rpn['post_nms_top_n']} after; "
                 f"ranked by the objectness {'logit' if rpn.get('objectness') == 'logits' else 'probability'}, "
                 f"NMS IoU {_num(rpn['nms_thresh'])}, score threshold {_num(rpn['score_thresh'])}, "
                 f"min box side {rpn.get('min_size_rule', '>=')} {_num(rpn['min_size'])} px"]),
        ("box head", [f"score threshold {_num(box['score_thresh'])}, NMS IoU {_num(box['nms_thresh'])}, "
                      f"at most {box['detections_per_img']} detections per image",
                      f"background class {box.get('background', 'first')}, min box side "
                      f"{_num(box.get('min_size', 1e-2))} px",
                      _roi_align(box)]),
        ("mask head", [f"{mask['mask_size']}x{mask['mask_size']} masks, threshold {_num(mask['mask_threshold'])}, "
                       f"paste {mask['paste']}"
                       f"{'' if mask.get('background_channel', True) else ', no background channel'}",
                       _roi_align(mask)]),
        ("precision", _precision(info)),
        ("tensorrt", _tensorrt(info["tensorrt"])),
        ("graphs", [", ".join(graph["file"] for graph in info["graphs"].values())]),
        ("tools", [_pairs(provenance["tools"]) or "not recorded"]),
        ("created", [f"{provenance['created'] or 'not recorded'}, model.json format {provenance['format']}"]),
    ]
    lines = []
    for label, texts in rows:
        for i, text in enumerate(texts):
            lines.append(textwrap.fill(text, WIDTH, initial_indent=f"{label if i == 0 else '':{LABEL}}",
                                       subsequent_indent=" " * (LABEL + 2), break_on_hyphens=False))
    return "\n".join(lines)

#!/usr/bin/env python3
"""Build a model directory for the engine from a torchvision Mask R-CNN (offline, needs torch).

    python build_engine.py --weights coco --output models/coco-v1
    python build_engine.py --arch maskrcnn_resnet50_fpn_v2 --weights model.pth --output models/v2
    python build_engine.py --weights random --seed 0 --output /tmp/random-r50

TensorRT plans, built on the GPU that will serve (plans are GPU- and TensorRT-specific; no
torch needed when the model directory exists):

    python build_engine.py --tensorrt --fp16 --output models/coco-v1
    python build_engine.py --tensorrt --fp16 --from-model-dir /opt/ml/model --output /tmp/model --if-missing
    python build_engine.py --tensorrt --tensorrt-int8-calibration --calib-images photos/ --output models/coco-v1

Your own Mask R-CNN: any checkpoint layout (train.py's, DDP's "module.", torch.compile's,
Lightning's, .safetensors), another torchvision FPN backbone, the settings you trained with:

    python build_engine.py --weights checkpoint.pth --class-names names.txt --output models/mine
    python build_engine.py --backbone mobilenet_v3_large --weights model.pth --class-names names.txt \
        --model-kwargs '{"min_size": 480, "rpn_anchor_generator": {"sizes": [[32, 64, 128, 256, 512]] }}' ...

A detectron2 Mask R-CNN (R50/R101/X101 FPN), from its YAML config and its weights (a model-zoo
.pkl or a training run's .pth); detectron2 itself is not needed:

    python build_engine.py --detectron2-config config.yaml --weights model_final.pth \
        --class-names names.txt --output models/mine-d2

Models built in code go through the same path from Python:

    from build_engine import export
    export(my_maskrcnn, "models/mine", ["__background__", "cat", "dog"])
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.model_directory.named import ARCHS, BACKBONES  # torch-free, like the --tensorrt path

try:
    from exporter import export  # noqa: F401  (re-exported: the Python entry point)
except ImportError:  # no torch (the GPU image): only --tensorrt on an existing model directory
    export = None

# The old spelling of --tensorrt-int8-calibration: --int8 alone is INT8 ONNX graphs (QDQ).
OLD_TENSORRT_INT8 = "--int8 with --tensorrt means TensorRT's INT8 calibration; give --tensorrt-int8-calibration instead"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_engine.py",
        description="Export a torchvision Mask R-CNN to a model directory (ONNX graphs + model.json).",
    )
    parser.add_argument("--arch", choices=ARCHS, help=f"one of torchvision's two presets (default {ARCHS[0]})")
    parser.add_argument("--backbone", choices=BACKBONES, metavar="NAME",
                        help="instead of --arch: MaskRCNN(backbone, ...) with its own heads on torchvision's FPN "
                        "backbone NAME (resnet_fpn_backbone: resnet18/34/50/101/152, resnext50_32x4d, "
                        "resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2; "
                        "mobilenet_backbone(fpn=True): mobilenet_v3_large, mobilenet_v3_small)")
    parser.add_argument("--detectron2-config", metavar="CONFIG.yaml", type=Path,
                        help="convert a detectron2 Mask R-CNN (GeneralizedRCNN, ResNet/ResNeXt FPN) instead: its YAML "
                        "config (a model-zoo config with its _BASE_ chain, or the config.yaml a training run dumps); "
                        "--weights is then its model-zoo .pkl or training .pth, --class-names its thing_classes in "
                        "order (a leading __background__ line is accepted)")
    parser.add_argument("--model-kwargs", metavar="JSON_OR_FILE",
                        help="the MaskRCNN keyword arguments you trained with, as JSON or a JSON file: min_size, "
                        "max_size, image_mean, image_std, rpn_*, box_*, box_detections_per_img, bbox_reg_weights, "
                        "size_divisible; rpn_anchor_generator as {\"sizes\": [[...], ...], \"aspect_ratios\": "
                        "[[...], ...]}; box_roi_pool / mask_roi_pool as {\"featmap_names\": [...], "
                        "\"output_size\": N, \"sampling_ratio\": N}")
    parser.add_argument(
        "--weights",
        default="coco",
        help="'coco' (torchvision's COCO weights, downloaded through torchvision), "
        "'random' (seeded random weights, for tests and benchmarks) or PATH to a checkpoint: a state_dict, "
        "a training checkpoint holding one (train.py's, Lightning's, ...; prefixes such as 'module.' removed) "
        "or a .safetensors file",
    )
    parser.add_argument("--weights-key", metavar="KEY",
                        help="the checkpoint key (or key prefix) that holds the weights, e.g. model_ema "
                        "(default: the state_dict itself, else 'model', 'state_dict', 'model_state_dict')")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="also load a whole pickled model (torch.save(model)). UNSAFE: unpickling runs any "
                        "code the file names; only for files you made or trust. Without it, weights load with "
                        "torch.load(weights_only=True)")
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random (default %(default)s)")
    parser.add_argument("--output", required=True, type=Path, help="model directory to write")
    parser.add_argument(
        "--class-names",
        type=Path,
        help="file with one class name per line (or a JSON list), background first; "
        "default: torchvision's 91 COCO categories. With --detectron2-config: its thing_classes in order "
        "(a leading __background__ line is accepted), or 'coco' for COCO's 80 (the model zoo's); default class_1...",
    )
    parser.add_argument("--min-size", type=int, help="resize rule: short side (default: the model's, 800 for R50)")
    parser.add_argument("--max-size", type=int, help="resize rule: long-side cap (default: scaled with --min-size)")
    parser.add_argument("--int8", action="store_true",
                        help="quantize the ONNX graphs to INT8 (static QDQ; needs --calib-images); for TensorRT's "
                        "INT8 calibration of its plans: --tensorrt-int8-calibration")
    parser.add_argument("--calib-images", type=Path, help="directory of JPEG/PNG photos like the ones you will serve "
                        "(--int8, --tensorrt-int8-calibration)")
    parser.add_argument("--int8-weight-bits", type=int, choices=(7, 8), default=7,
                        help="with --int8: 7 (default) gives the same results on every x86 CPU; 8 keeps one more bit "
                        "of each weight, for CPUs with VNNI or AMX: CPUs without VNNI (AVX2-only, older AVX-512) "
                        "saturate its products: OpenVINO requantizes it to 7 bits there, ONNX Runtime is wrong")
    parser.add_argument("--name", help="model name reported by the server (default: the directory name)")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")
    trt = parser.add_argument_group(
        "TensorRT", "build GPU plans into the model directory --output (exported first if it does not exist); "
        "run on the GPU that will serve")
    trt.add_argument("--tensorrt", action="store_true", help="build TensorRT plans (needs tensorrt and an NVIDIA GPU)")
    precision = trt.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_const", const="fp16", dest="precision",
                           help="FP16 kernels where faster (the default with --tensorrt)")
    precision.add_argument("--fp32", action="store_const", const="fp32", dest="precision", help="FP32 only")
    precision.add_argument("--tensorrt-int8-calibration", action="store_const", const="int8", dest="precision",
                           help="TensorRT's INT8 calibration of the dense plan on --calib-images (the heads FP16)")
    trt.add_argument("--from-model-dir", type=Path,
                     help="read-only model directory to take the graphs from; --output becomes a writable "
                     "copy (graphs symlinked) that holds the plans")
    trt.add_argument("--if-missing", action="store_true",
                     help="do nothing when --output already has plans of this precision for this GPU and TensorRT")
    trt.add_argument("--slots", type=int, default=2,
                     help="requests the plans can run at once (one optimization profile each; default %(default)s)")
    return parser.parse_args(argv)


def read_class_names(path: Path) -> list[str]:
    text = path.read_text()
    if text.lstrip().startswith("["):
        return [str(c) for c in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_tensorrt(args) -> int:
    """--tensorrt: plans into --output (a writable copy of --from-model-dir, or exported first
    when it does not exist). Every failure is one line on stderr and a non-zero exit."""
    from exporter.tensorrt_build import TensorRTBuildError, build_plans, environment_reason, writable_copy
    from engine.errors import EngineError

    precision = args.precision or "fp16"
    reason = environment_reason()
    if reason:  # before any export: fail in a second, not after minutes
        print(f"error: --tensorrt needs TensorRT and an NVIDIA GPU: {reason}", file=sys.stderr)
        return 2
    try:
        if args.from_model_dir:
            writable_copy(args.from_model_dir, args.output)
        elif not args.output.exists():
            status = export_model_dir(args, quantize=False)
            if status:
                return status
        build_plans(args.output, precision, calib_images=args.calib_images, slots=args.slots, if_missing=args.if_missing)
    except (TensorRTBuildError, EngineError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from exporter.progress import show_progress

    show_progress()  # the exporter's progress lines ("[1/3] exporting ...") on stderr
    if args.arch and args.backbone:
        print("error: give --arch (a preset) or --backbone (MaskRCNN on that backbone), not both", file=sys.stderr)
        return 2
    if args.detectron2_config and args.arch:
        print("error: --arch names a torchvision preset; a detectron2 model is described by --detectron2-config",
              file=sys.stderr)
        return 2
    args.arch = args.arch or ARCHS[0]
    if args.int8 and args.tensorrt:
        print(f"warning: {OLD_TENSORRT_INT8}", file=sys.stderr)
        args.int8, args.precision = False, "int8"
    if (args.int8 or args.precision == "int8") and not args.calib_images:
        flag = "--int8" if args.int8 else "--tensorrt-int8-calibration"
        print(f"error: {flag} needs --calib-images DIR (photos like the ones you will serve)", file=sys.stderr)
        return 2
    if args.tensorrt:
        return build_tensorrt(args)
    if args.precision or args.from_model_dir or args.if_missing:
        print("error: --fp16, --fp32, --tensorrt-int8-calibration, --from-model-dir and --if-missing go with "
              "--tensorrt", file=sys.stderr)
        return 2
    return export_model_dir(args, quantize=args.int8)


def export_model_dir(args, quantize: bool) -> int:
    """The ONNX model directory --output (needs torch)."""
    if args.output.exists() and not args.force:
        print(f"error: {args.output} already exists (use --force to replace it)", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: build_engine.py needs torch: pip install '.[export]'", file=sys.stderr)
        return 2
    if args.detectron2_config:
        return export_detectron2_dir(args, quantize)
    from exporter.model_kwargs import parse_model_kwargs
    from exporter.weights import (WeightsError, architecture_name, coco_class_names, coco_model, file_model,
                                  random_model, set_resize_rule)

    try:
        model_kwargs = parse_model_kwargs(args.model_kwargs) if args.model_kwargs else {}
        if args.min_size and "min_size" in model_kwargs:
            raise ValueError("give min_size once: --min-size or --model-kwargs")
        class_names = read_class_names(args.class_names) if args.class_names else None
        arch = architecture_name(args.arch, args.backbone)
        # nothing printed before the weights are in hand: offline, --weights coco is one line
        if args.weights == "coco":
            if args.backbone or model_kwargs:
                raise ValueError("--weights coco is torchvision's preset as published: no --backbone or --model-kwargs")
            model = coco_model(args.arch)
            info = {"source": "torchvision-coco", "trained": True}
        elif args.weights == "random":
            model = random_model(args.arch, args.seed, num_classes=len(class_names or coco_class_names()),
                                 backbone=args.backbone, model_kwargs=model_kwargs)
            info = {"source": "random", "seed": args.seed, "trained": False}
        else:
            from exporter import sha256_of

            model, checkpoint = file_model(args.arch, Path(args.weights), len(class_names) if class_names else None,
                                           backbone=args.backbone, model_kwargs=model_kwargs,
                                           weights_key=args.weights_key, trust_pickle=args.trust_pickle)
            info = {"source": "file", "path": str(args.weights), "sha256": sha256_of(Path(args.weights)),
                    "layout": checkpoint.layout, "trained": True}
            if model is checkpoint.model:  # a whole pickled MaskRCNN: its own configuration, whatever --arch says
                arch = "custom"
        if class_names is None:
            class_names = coco_class_names()
            found = model.roi_heads.box_predictor.cls_score.out_features
            if found != len(class_names):
                raise ValueError(f"the model has {found} classes (background included): name them with "
                                 f"--class-names FILE ({found} lines, background first)")
        info.update({k: v for k, v in (("backbone", args.backbone), ("model_kwargs", model_kwargs)) if v})
        print(f"exporting {arch} with {args.weights} weights...", file=sys.stderr, flush=True)
        if args.min_size:
            set_resize_rule(model, args.min_size, args.max_size)
        options = dict(name=args.name, arch=arch, weights_info=info, overwrite=args.force)
        if quantize:
            from exporter.quantize import export_int8, load_calibration_images

            export_int8(model, args.output, class_names, load_calibration_images(args.calib_images),
                        weight_bits=args.int8_weight_bits, **options)
        else:
            export(model, args.output, class_names, **options)
    except (WeightsError, ValueError, FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def export_detectron2_dir(args, quantize: bool) -> int:
    """--detectron2-config: the model directory --output from a detectron2 config and weights."""
    from exporter.detectron2 import export_detectron2
    from exporter.detectron2_config import Detectron2ConfigError
    from exporter.weights import WeightsError

    given = [flag for flag, value in (("--backbone", args.backbone), ("--model-kwargs", args.model_kwargs),
                                      ("--min-size", args.min_size), ("--max-size", args.max_size),
                                      ("--trust-pickle", args.trust_pickle)) if value]
    if args.weights in ("coco", "random") or given:
        problem = f"{', '.join(given)} do not apply" if given else "--weights must be the model's .pkl or .pth file"
        print(f"error: with --detectron2-config, {problem} (the config holds the settings: set INPUT.MIN_SIZE_TEST "
              f"and the like there)", file=sys.stderr)
        return 2
    try:
        if args.class_names == Path("coco") and not args.class_names.exists():
            from exporter.weights import coco_class_names

            class_names = [name for name in coco_class_names()[1:] if name != "N/A"]  # detectron2's thing_classes
        else:
            class_names = read_class_names(args.class_names) if args.class_names else None
        print(f"converting the detectron2 model {args.detectron2_config} with weights {args.weights}...",
              file=sys.stderr, flush=True)
        options = dict(weights_key=args.weights_key, name=args.name, overwrite=args.force)
        if quantize:
            from exporter.quantize import load_calibration_images

            options.update(int8_images=load_calibration_images(args.calib_images), weight_bits=args.int8_weight_bits)
        export_detectron2(args.detectron2_config, Path(args.weights), args.output, class_names, **options)
    except (Detectron2ConfigError, WeightsError, ValueError, FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

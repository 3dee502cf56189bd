#!/usr/bin/env python3
"""Build a model directory for the engine from a torchvision Mask R-CNN (offline, needs torch).

    python build_engine.py --weights coco --output models/coco-v1
    python build_engine.py --arch maskrcnn_resnet50_fpn_v2 --weights model.pth --output models/v2
    python build_engine.py --weights random --seed 0 --output /tmp/random-r50

Custom models go through the same path from Python:

    from build_engine import export
    export(my_maskrcnn, "models/mine", ["__background__", "cat", "dog"])
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from exporter import export  # noqa: F401  (re-exported: the Python entry point)

ARCHS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="build_engine.py",
        description="Export a torchvision Mask R-CNN to a model directory (ONNX graphs + model.json).",
    )
    parser.add_argument("--arch", choices=ARCHS, default=ARCHS[0], help="architecture (default %(default)s)")
    parser.add_argument(
        "--weights",
        default="coco",
        help="'coco' (torchvision's COCO weights, downloaded through torchvision), "
        "'random' (seeded random weights, for tests and benchmarks) or PATH to a state_dict file",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights random (default %(default)s)")
    parser.add_argument("--output", required=True, type=Path, help="model directory to write")
    parser.add_argument(
        "--class-names",
        type=Path,
        help="file with one class name per line (or a JSON list), background first; "
        "default: torchvision's 91 COCO categories",
    )
    parser.add_argument("--min-size", type=int, help="resize rule: short side (default: the model's, 800 for R50)")
    parser.add_argument("--max-size", type=int, help="resize rule: long-side cap (default: scaled with --min-size)")
    parser.add_argument("--int8", action="store_true", help="quantize the graphs to INT8 (static QDQ; needs --calib-images)")
    parser.add_argument("--calib-images", type=Path, help="directory of JPEG/PNG photos like the ones you will serve")
    parser.add_argument("--name", help="model name reported by the server (default: the directory name)")
    parser.add_argument("--force", action="store_true", help="replace --output if it exists")
    return parser.parse_args(argv)


def read_class_names(path: Path) -> list[str]:
    text = path.read_text()
    if text.lstrip().startswith("["):
        return [str(c) for c in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.int8 and not args.calib_images:
        print("error: --int8 needs --calib-images DIR (photos like the ones you will serve)", file=sys.stderr)
        return 2
    if args.output.exists() and not args.force:
        print(f"error: {args.output} already exists (use --force to replace it)", file=sys.stderr)
        return 2
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: build_engine.py needs torch: pip install '.[export]'", file=sys.stderr)
        return 2
    from exporter.weights import WeightsError, coco_class_names, coco_model, file_model, random_model, set_resize_rule

    try:
        class_names = read_class_names(args.class_names) if args.class_names else coco_class_names()
        print(f"building {args.arch} with {args.weights} weights...", file=sys.stderr, flush=True)
        if args.weights == "coco":
            model = coco_model(args.arch)
            info = {"source": "torchvision-coco", "trained": True}
        elif args.weights == "random":
            model = random_model(args.arch, args.seed, num_classes=len(class_names))
            info = {"source": "random", "seed": args.seed, "trained": False}
        else:
            from exporter import sha256_of

            model = file_model(args.arch, Path(args.weights), num_classes=len(class_names))
            info = {"source": "file", "path": str(args.weights), "sha256": sha256_of(Path(args.weights)), "trained": True}
        if args.min_size:
            set_resize_rule(model, args.min_size, args.max_size)
        options = dict(name=args.name, arch=args.arch, weights_info=info, overwrite=args.force)
        if args.int8:
            from exporter.quantize import export_int8, load_calibration_images

            export_int8(model, args.output, class_names, load_calibration_images(args.calib_images), **options)
        else:
            export(model, args.output, class_names, **options)
    except (WeightsError, ValueError, FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

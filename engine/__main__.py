"""Command line for the engine, usable without the server.

    python -m engine predict [--model-dir DIR | --model coco-v1] [--backend B] [--precision P]
                             photo.jpg [--json | --out segmented.jpg]
    python -m engine backends [--model-dir DIR]
    python -m engine info DIR [--json]

Without --model-dir, `predict` uses the same model as `serve`: $SM_MODEL_DIR, else
/opt/ml/model, else the bundled demo model; it says which on stderr. `--model coco-v1` is
`serve --model coco-v1`'s model directory (built on first use, see the `provision` package).
`info` says what a model directory holds (classes, resize rule, RPN and head settings,
precision, provenance) from its model.json, without loading a graph (engine.model_directory.info).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import Engine, EngineError, decode_image
from .detections import format_label
from .backends import (AUTO_BACKEND, BACKEND_CHOICES, PRECISIONS, available_backends, backend_precisions,
                       choose_backend)
from .model_directory.defaults import DEFAULT_MODEL_DIR, ModelDirChoice, choose_model_dir, demo_notice
from .model_directory.directory import ModelDir
from .model_directory.named import NAMED_MODELS


def detections_json(detections) -> dict:
    """The service's JSON shape ({"labels", "boxes"}) plus scores and class ids."""
    return {
        "labels": [format_label(name, s) for name, s in zip(detections.labels, detections.scores)],
        "boxes": detections.boxes.astype(float).tolist(),
        "scores": detections.scores.astype(float).tolist(),
        "class_ids": detections.class_ids.astype(int).tolist(),
        "timings_ms": {k: round(v, 1) for k, v in detections.timings.items()},
    }


def cmd_predict(args) -> int:
    from .render import encode_image, render_detections

    if args.model:
        from provision import ensure_named_model  # the provisioning layer: built on first use

        choice = ModelDirChoice(ensure_named_model(args.model, args.weights, os.environ), f"--model {args.model}", demo=False)
    else:
        choice = choose_model_dir(args.model_dir, os.environ)
    print(choice.describe(), file=sys.stderr)
    engine = Engine.load(choice.path, backend=args.backend, threads=args.threads, precision=args.precision)
    if choice.demo:
        print(demo_notice(engine.class_names), file=sys.stderr)
    image = decode_image(Path(args.image).read_bytes())
    detections = engine.predict(image, score_threshold=args.score_threshold, max_detections=args.max_detections)
    if args.out:
        fmt = "png" if args.out.suffix.lower() == ".png" else "jpeg"
        args.out.write_bytes(encode_image(render_detections(image, detections), fmt))
        print(f"{len(detections)} instances; segmented image written to {args.out}", file=sys.stderr)
    if args.json or not args.out:
        json.dump(detections_json(detections), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


def int8_report(status: dict, model_dir=None) -> str:
    """Lines saying whether each CPU runtime's INT8 arithmetic is exact here (engine.int8_arithmetic)
    and, for an INT8 model directory, what each CPU backend does with its weights."""
    from . import int8_arithmetic

    runtimes = {"onnxruntime": "onnxruntime-cpu", "openvino": "openvino"}
    lines = [f"INT8 on {runtime}: {int8_arithmetic.describe(runtime)}"
             for runtime, backend in runtimes.items() if status.get(backend) is None]
    quantization = ModelDir.open(model_dir, verify_checksums=False).config.quantization if model_dir else None
    if quantization is not None:
        lines.append(f"{model_dir}: INT8, {quantization.weight_bits}-bit weights")
        for runtime, backend in runtimes.items():
            if status.get(backend) is None and int8_arithmetic.eight_bit_wrong_here(quantization, runtime):
                lines.append(f"  {backend}: " + ("requantizes them to 7 bits at load" if runtime == "openvino" else
                                                 "would give wrong results here (rebuild with build_engine.py --int8)"))
    return "\n".join(lines)


def cmd_backends(args) -> int:
    status = available_backends(args.model_dir)
    for name, reason in status.items():
        state = f"available ({', '.join(backend_precisions(name))})" if reason is None else "unavailable: " + reason
        if name == "openvino" and reason is None:
            from . import roi_align

            state += ("; RoIAlign native" if roi_align.available() else
                      "; RoIAlign in the head graphs (the native one was not built: no C compiler at install)")
        print(f"{name:20s} {state}")
    print(int8_report(status, args.model_dir))
    scope = f" for {args.model_dir}" if args.model_dir else " (without --model-dir: TensorRT plans not checked)"
    print(f"auto picks {choose_backend(status)}{scope}")
    return 0


def cmd_info(args) -> int:
    from .model_directory.info import describe, model_info

    info = model_info(ModelDir.open(args.model_dir))  # checks the files and their sha256, as Engine.load does
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(describe(info))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser("predict", help="segment one photo")
    predict.add_argument("image", type=Path, help="a JPEG or PNG file")
    which = predict.add_mutually_exclusive_group()
    which.add_argument("--model-dir", help="directory written by build_engine.py (default: $SM_MODEL_DIR, "
                       f"else {DEFAULT_MODEL_DIR}, else the bundled demo model)")
    which.add_argument("--model", choices=list(NAMED_MODELS),
                       help="torchvision's COCO model, as `serve --model` (built on first use)")
    predict.add_argument("--weights", metavar="PATH", help="with --model: build from this state_dict file")
    predict.add_argument("--json", action="store_true", help="print detections as JSON (default without --out)")
    predict.add_argument("--out", type=Path, help="write the segmented image here (.jpg or .png)")
    predict.add_argument("--score-threshold", type=float, default=0.5)
    predict.add_argument("--max-detections", type=int, default=100)
    predict.add_argument("--backend", default=AUTO_BACKEND, choices=BACKEND_CHOICES,
                         help=f"inference backend (default {AUTO_BACKEND}: the first that can run here)")
    predict.add_argument("--threads", type=int, help="inference threads (default: every usable core)")
    predict.add_argument("--precision", choices=PRECISIONS,
                         help="default: the backend's here (bf16 for openvino on a CPU with BF16 instructions, "
                              "else fp32)")
    predict.set_defaults(func=cmd_predict)
    backends = sub.add_parser("backends", help="list inference backends and whether they can run here")
    backends.add_argument("--model-dir", type=Path, help="also check this model directory's TensorRT plans")
    backends.set_defaults(func=cmd_backends)
    info = sub.add_parser("info", help="say what a model directory holds (read from model.json; nothing is loaded)")
    info.add_argument("model_dir", type=Path, metavar="DIR", help="directory written by build_engine.py")
    info.add_argument("--json", action="store_true", help="print it as JSON")
    info.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    if getattr(args, "weights", None) and not args.model:
        parser.error("--weights goes with --model")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (EngineError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

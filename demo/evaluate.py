"""COCO evaluation (pycocotools' COCOeval, bbox and segm) of the demo model on held-out scenes.

    # through the serving engine (ONNX Runtime + numpy): the figures demo/RESULTS.md quotes
    python demo/evaluate.py --model-dir demo/model --scenes 300
    # a torch checkpoint in eager mode, for quick checks during training
    python demo/evaluate.py --checkpoint /tmp/shapes_maskrcnn/model.pt --scenes 100

Held-out scenes use seeds EVAL_SEED_START, EVAL_SEED_START + 1, ...; training uses seeds
>= TRAIN_SEED_START only (see demo/shapes.py). A predictor is any callable taking an
HxWx3 uint8 RGB image and returning a `Prediction`; `torch_predictor` and
`engine_predictor` adapt the two kinds of model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

# See demo/train_shapes.py: spin-waiting OpenMP threads are very slow on a shared machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if __package__ in (None, ""):  # run as a script: make `demo` (and `engine`) importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.shapes import EVAL_SEED_START, Scene, coco_ground_truth, generate_scene  # noqa: E402

STAT_NAMES = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")


@dataclass
class Prediction:
    """boxes float32 (N, 4) x1, y1, x2, y2 in image pixels; scores float32 (N,);
    class_ids int (N,) into CLASS_NAMES; masks bool (N, H, W)."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    masks: np.ndarray


Predictor = Callable[[np.ndarray], Prediction]


def torch_predictor(model, score_threshold: float = 0.05, max_detections: int = 100) -> Predictor:
    """Eager torchvision Mask R-CNN (masks thresholded at 0.5, as the engine does)."""
    import torch

    model.eval()
    model.roi_heads.score_thresh = score_threshold
    model.roi_heads.detections_per_img = max_detections

    def predict(image: np.ndarray) -> Prediction:
        x = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        with torch.no_grad():
            out = model([x])[0]
        return Prediction(
            boxes=out["boxes"].numpy().astype(np.float32),
            scores=out["scores"].numpy().astype(np.float32),
            class_ids=out["labels"].numpy(),
            masks=(out["masks"][:, 0] > 0.5).numpy(),
        )

    return predict


def engine_predictor(engine, score_threshold: float = 0.05, max_detections: int = 100) -> Predictor:
    """The serving engine: `engine.predict(image, score_threshold=..., max_detections=...)`."""

    def predict(image: np.ndarray) -> Prediction:
        det = engine.predict(image, score_threshold=score_threshold, max_detections=max_detections)
        return Prediction(det.boxes, det.scores, det.class_ids, det.masks)

    return predict


def held_out_scenes(n: int, start: int = EVAL_SEED_START, width: int = 320, height: int = 240) -> list[Scene]:
    """n scenes with seeds start, start + 1, ... (disjoint from the training seeds)."""
    return [generate_scene(start + i, width, height) for i in range(n)]


def coco_results(predictions: Sequence[Prediction], first_image_id: int = 1) -> tuple[list[dict], list[dict]]:
    """(bbox results, segm results) in COCO's result format, image ids in order."""
    from pycocotools import mask as mask_utils

    bbox, segm = [], []
    for k, p in enumerate(predictions):
        image_id = first_image_id + k
        for box, score, cid, mask in zip(p.boxes, p.scores, p.class_ids, p.masks):
            x1, y1, x2, y2 = (float(v) for v in box)
            common = {"image_id": image_id, "category_id": int(cid), "score": float(score)}
            bbox.append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            segm.append({**common, "segmentation": rle})
    return bbox, segm


def coco_eval(scenes: Sequence[Scene], predictions: Sequence[Prediction], verbose: bool = False) -> dict:
    """{"bbox": {AP, AP50, ...}, "segm": {...}} from COCOeval over all scenes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        gt = COCO()
        gt.dataset = coco_ground_truth(scenes)
        gt.createIndex()
        figures = {}
        for iou_type, results in zip(("bbox", "segm"), coco_results(predictions)):
            if not results:  # loadRes cannot take an empty list; nothing found scores zero
                figures[iou_type] = {name: 0.0 for name in STAT_NAMES}
                continue
            ev = COCOeval(gt, gt.loadRes(results), iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            figures[iou_type] = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats[:6])}
    return figures


def evaluate(predict: Predictor, scenes: Sequence[Scene], verbose: bool = False) -> dict:
    """Run `predict` on every scene and COCO-evaluate; adds latency and counts."""
    predictions, times = [], []
    for scene in scenes:
        t0 = time.perf_counter()
        predictions.append(predict(scene.image))
        times.append((time.perf_counter() - t0) * 1000)
    figures = coco_eval(scenes, predictions, verbose=verbose)
    figures["scenes"] = len(scenes)
    figures["instances"] = int(sum(len(s.class_ids) for s in scenes))
    figures["median_ms"] = statistics.median(times)
    return figures


def format_figures(figures: dict) -> str:
    lines = [f"{figures['scenes']} scenes, {figures['instances']} instances, "
             f"median {figures['median_ms']:.1f} ms per scene"]
    for iou_type in ("bbox", "segm"):
        f = figures[iou_type]
        lines.append(f"{iou_type:5s} AP {f['AP']:.3f}  AP50 {f['AP50']:.3f}  AP75 {f['AP75']:.3f}  "
                     f"(small {f['AP_small']:.3f} medium {f['AP_medium']:.3f} large {f['AP_large']:.3f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-dir", help="exported model directory, run through engine.Engine")
    src.add_argument("--checkpoint", help="state_dict of demo.shapes_model, run in torch eager")
    p.add_argument("--scenes", type=int, default=300)
    p.add_argument("--seed-start", type=int, default=EVAL_SEED_START)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--score-threshold", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2, help="torch or ONNX Runtime threads")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--verbose", action="store_true", help="print COCOeval's own summary")
    args = p.parse_args(argv)

    if args.model_dir:
        from engine import Engine

        predict = engine_predictor(Engine.load(args.model_dir, threads=args.threads), args.score_threshold)
    else:
        import torch

        from demo.shapes_model import build_shapes_model

        torch.set_num_threads(args.threads)
        model = build_shapes_model()
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
        predict = torch_predictor(model, args.score_threshold)

    scenes = held_out_scenes(args.scenes, args.seed_start, args.width, args.height)
    figures = evaluate(predict, scenes, verbose=args.verbose)
    figures["source"] = args.model_dir or args.checkpoint
    figures["size"] = [args.width, args.height]
    print(format_figures(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()

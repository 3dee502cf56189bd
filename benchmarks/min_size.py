#!/usr/bin/env python3
"""Speed against accuracy of the resize rule (`build_engine.py --min-size`).

    python benchmarks/min_size.py [--model-dir demo/model | --checkpoint DEMO_CKPT]
        [--sizes 800 640 512] [--demo-sizes 240 200 160]

R50-FPN v1 (seeded random weights: latency only) at each --min-size on the 640x480 photo, and
the demo model's COCO AP on 300 held-out 320x240 scenes at each of its min sizes (max size
scaled alike): from the committed demo model directory (its resize rule is in model.json;
the graphs take any input size), or exported again from a checkpoint. Each engine runs on
`auto` at its default precision here. Writes benchmarks/results/min_size.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.machine import write_results  # noqa: E402
from harness.photos import benchmark_photo  # noqa: E402
from harness.timing import median_s, timed  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "demo" / "model", help="the demo model directory")
    parser.add_argument("--checkpoint", type=Path, help="demo.shapes_model state_dict (instead of --model-dir)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[800, 640, 512])
    parser.add_argument("--demo-sizes", type=int, nargs="+", default=[240, 200, 160])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "min_size.json")
    args = parser.parse_args(argv)

    import json
    import shutil

    from demo.evaluate import engine_predictor, evaluate, held_out_scenes
    from demo.shapes import CLASS_NAMES
    from demo.shapes_model import build_shapes_model
    from engine import Engine
    from exporter import export
    from exporter.weights import coco_class_names, random_model, set_resize_rule

    work = Path(tempfile.mkdtemp(prefix="minsize-"))
    photo = benchmark_photo()
    r50 = []
    for size in args.sizes:
        export(set_resize_rule(random_model("maskrcnn_resnet50_fpn", seed=0), size), work / f"r50-{size}", coco_class_names(), quiet=True)
        engine = Engine.load(work / f"r50-{size}")
        engine.predict(photo)
        seconds, _ = median_s(lambda: engine.predict(photo, score_threshold=0.05, max_detections=10), args.runs)
        r50.append({"min_size": size, "backend": engine.backend_name, "precision": engine.precision, "median_s": round(seconds, 4)})
        print(r50[-1], file=sys.stderr)

    scenes = held_out_scenes(300)
    demo = []
    for size in args.demo_sizes:
        target = work / f"demo-{size}"
        if args.checkpoint is not None:
            import torch

            model = build_shapes_model()
            model.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
            export(set_resize_rule(model.eval(), size), target, CLASS_NAMES, mask_paste="aligned", quiet=True)
        else:  # what set_resize_rule + export give: the same graphs, the rule in model.json
            shutil.copytree(args.model_dir, target)
            config = json.loads((target / "model.json").read_text())
            old_min, old_max = config["transform"]["min_size"], config["transform"]["max_size"]
            config["transform"].update(min_size=size, max_size=round(old_max * size / old_min))
            (target / "model.json").write_text(json.dumps(config, indent=2) + "\n")
        engine = Engine.load(work / f"demo-{size}")
        seconds, figures = timed(evaluate, engine_predictor(engine), scenes)
        demo.append({"min_size": size, "ms_per_scene": round(seconds / len(scenes) * 1000, 1),
                     "bbox_AP": round(figures["bbox"]["AP"], 3), "segm_AP": round(figures["segm"]["AP"], 3),
                     "segm_AP50": round(figures["segm"]["AP50"], 3)})
        print(demo[-1], file=sys.stderr)

    write_results({"benchmark": "min_size", "r50_v1_640x480_latency": r50, "demo_model_300_scenes": demo}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())

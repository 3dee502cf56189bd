"""Draw a few held-out scenes and what the demo model finds in them, as one PNG.

    python demo/render_examples.py --model-dir demo/model --output demo/segmented_examples.png

Each row pair shows a generated scene and the engine's segmentation of it
(`engine.render.render_detections`, score threshold 0.5).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a script: make `demo` and `engine` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.shapes import EVAL_SEED_START, generate_scene  # noqa: E402

DEFAULT_SEEDS = (EVAL_SEED_START + 1, EVAL_SEED_START + 4, EVAL_SEED_START + 7, EVAL_SEED_START + 12)


def render_examples(engine, seeds=DEFAULT_SEEDS, size=(320, 240), score_threshold: float = 0.5) -> np.ndarray:
    """(rows * H, 4 * W, 3) uint8 RGB: [scene | segmented | scene | segmented] per row."""
    from engine.render import render_detections

    tiles = []
    for seed in seeds:
        scene = generate_scene(seed, *size)
        det = engine.predict(scene.image, score_threshold=score_threshold)
        tiles.append(np.concatenate([scene.image, render_detections(scene.image, det)], axis=1))
    if len(tiles) % 2:
        tiles.append(np.zeros_like(tiles[0]))
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    rows = [np.concatenate([tiles[i], gap, tiles[i + 1]], axis=1) for i in range(0, len(tiles), 2)]
    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    out = rows[0]
    for row in rows[1:]:
        out = np.concatenate([out, sep, row], axis=0)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=str(Path(__file__).resolve().parent / "model"))
    p.add_argument("--output", default=str(Path(__file__).resolve().parent / "segmented_examples.png"))
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    args = p.parse_args(argv)

    from engine import Engine

    grid = render_examples(Engine.load(args.model_dir, threads=1), args.seeds, (args.width, args.height))
    cv2.imwrite(args.output, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(args.output)


if __name__ == "__main__":
    main()

"""Train the demo Mask R-CNN (`demo.shapes_model`) from scratch on synthetic shape scenes.

    python demo/train_shapes.py --steps 6000 --minutes 43 --checkpoint /tmp/shapes_maskrcnn2/model.pt

(the run behind demo/model; see demo/RESULTS.md).

Every batch is drawn fresh from `demo.shapes` with seeds derived from the step index
(TRAIN_SEED_START + step * batch + k) and torch is seeded, so data never depends on timing.
The learning rate follows a linear warm-up and then a cosine over the run's *progress*,
max(step / --steps, elapsed / --minutes): on a machine fast enough to do --steps within
--minutes, progress is the step count and the run is reproducible step for step; on a slow
or shared machine the schedule is compressed to fit the time budget (the log then says
"time-bound"), so the run still ends annealed rather than cut off mid-schedule.

The model's `state_dict` is written to `--checkpoint` every `--save-every` steps and at
the end (atomically); `<checkpoint>.state.pt` holds what `--resume` needs, and
`<checkpoint>.json` a summary of the run that `demo/export_shapes.py` records as the
weights' provenance. `--export demo/model` exports the result when training ends.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

# Must precede the first import of torch (libgomp reads it at load time). On a shared
# machine, OpenMP's default spin-waiting made each step several times slower next to another
# busy process (benchmarks/results/FIGURES.md); passive waiting costs little when the
# machine is idle.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

if __package__ in (None, ""):  # run as a script: make `demo` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo.shapes import TRAIN_SEED_START, generate_scene  # noqa: E402
from demo.shapes_model import build_shapes_model  # noqa: E402

log = logging.getLogger("demo.train_shapes")


def scene_frame(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) of a training scene: mostly 320x240, some portrait and wide frames.

    Every frame is a fixed point of the model's resize (min 240 / max 320), so the model
    sees the scene at its drawn size.
    """
    r = rng.random()
    if r < 0.7:
        return 320, 240
    if r < 0.85:
        return 240, 320
    if r < 0.93:
        return 320, int(rng.integers(180, 240))
    return int(rng.integers(240, 320)), 240


def training_batch(step: int, batch_size: int) -> tuple[list[torch.Tensor], list[dict]]:
    """Images (3, H, W) float in [0, 1] and torchvision targets for one step."""
    images, targets = [], []
    for k in range(batch_size):
        rng = np.random.default_rng(TRAIN_SEED_START + step * batch_size + k)
        w, h = scene_frame(rng)
        scene = generate_scene(rng, w, h)
        images.append(torch.from_numpy(scene.image).permute(2, 0, 1).float().div_(255.0))
        targets.append({
            "boxes": torch.from_numpy(scene.boxes),
            "labels": torch.from_numpy(scene.class_ids),
            "masks": torch.from_numpy(scene.masks.astype(np.uint8)),
        })
    return images, targets


class _Batches(torch.utils.data.IterableDataset):
    """Batches for steps [start, stop), drawn in a worker process while the model trains."""

    def __init__(self, start: int, stop: int, batch_size: int) -> None:
        self.start, self.stop, self.batch_size = start, stop, batch_size

    def __iter__(self):
        import cv2

        cv2.setNumThreads(1)
        for step in range(self.start, self.stop):
            yield step, training_batch(step, self.batch_size)


def lr_at(step: int, progress: float, base_lr: float, warmup: int, total: int,
          final_fraction: float = 0.01) -> float:
    """Linear warm-up from 1% to base_lr over `warmup` steps, then cosine down to final_fraction.

    `progress` in [0, 1] is how far the run is (see the module docstring); the cosine spans
    the part of it after the warm-up.
    """
    if step < warmup:
        return base_lr * (0.01 + 0.99 * step / warmup)
    start = warmup / total
    t = min(max((progress - start) / max(1.0 - start, 1e-9), 0.0), 1.0)
    return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * t)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # No weight decay on norms and biases (the usual AdamW practice).
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    checkpoint = Path(args.checkpoint)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    state_path = checkpoint.with_name(checkpoint.name + ".state.pt")

    model = build_shapes_model()
    model.train()
    optimizer = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr)
    start = 0
    if args.resume:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        start = state["step"]
        log.info("resumed from %s at step %d", state_path, start)

    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %.3f M parameters; %d steps of batch %d, lr %g, warm-up %d, limit %.1f min",
             n_params / 1e6, args.steps, args.batch_size, args.lr, args.warmup, args.minutes)
    loader = torch.utils.data.DataLoader(
        _Batches(start, args.steps, args.batch_size), batch_size=None,
        num_workers=args.workers, prefetch_factor=4 if args.workers else None,
    )

    t_start = time.monotonic()
    running: dict[str, float] = {}
    done = start
    stopped_early = False
    time_bound = False
    budget_s = args.minutes * 60
    for step, (images, targets) in loader:
        # Time already spent before a --resume is not known; the budget counts from here.
        step_progress = step / args.steps
        time_progress = start / args.steps + (time.monotonic() - t_start) / budget_s
        if time_progress > step_progress and not time_bound and step >= args.warmup:
            time_bound = True
            log.warning("time-bound from step %d: the schedule now follows the %.1f min budget",
                        step, args.minutes)
        progress = max(step_progress, time_progress) if time_bound else step_progress
        if progress >= 1.0:
            stopped_early = True
            break
        lr = lr_at(step, progress, args.lr, args.warmup, args.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        losses = model(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}: {losses}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        optimizer.step()

        for k, v in losses.items():
            v = float(v.detach())
            running[k] = 0.95 * running.get(k, v) + 0.05 * v
        done = step + 1
        elapsed = time.monotonic() - t_start
        if done % args.log_every == 0 or done == args.steps:
            log.info("step %d/%d progress %.3f lr %.2e loss %.3f (%s) %.3f s/step, %.1f min",
                     done, args.steps, progress, lr, sum(running.values()),
                     " ".join(f"{k[5:]} {v:.3f}" for k, v in running.items()),
                     elapsed / (done - start), elapsed / 60)
        if done % args.save_every == 0 or done == args.steps:
            _save(model, optimizer, done, checkpoint, state_path, args.keep_snapshots)
    if stopped_early:
        _save(model, optimizer, done, checkpoint, state_path, args.keep_snapshots)
    minutes = (time.monotonic() - t_start) / 60
    log.info("finished at step %d of %d in %.1f min (%s)", done, args.steps, minutes,
             "time-bound: schedule compressed to the time budget" if time_bound else "step-bound, reproducible")
    summary = {
        "script": "demo/train_shapes.py",
        "argv": sys.argv[1:],
        "steps_done": done,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup": args.warmup,
        "seed": args.seed,
        "minutes_budget": args.minutes,
        "wall_minutes": round(minutes, 1),
        "time_bound": time_bound,
        "resumed_from_step": start if args.resume else None,
        "train_seeds": f">= {TRAIN_SEED_START}",
        "torch": torch.__version__,
    }
    checkpoint.with_name(checkpoint.name + ".json").write_text(json.dumps(summary, indent=2) + "\n")
    if args.export:
        from demo.export_shapes import export_shapes_model

        export_shapes_model(checkpoint, args.export)
    return checkpoint


def _save(model, optimizer, done: int, checkpoint: Path, state_path: Path, keep_snapshot: bool) -> None:
    _save_atomic(model.state_dict(), checkpoint)
    _save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "torch_rng": torch.get_rng_state(), "step": done}, state_path)
    if keep_snapshot:
        _save_atomic(model.state_dict(), checkpoint.with_name(f"{checkpoint.stem}.step{done}.pt"))
    log.info("saved %s at step %d", checkpoint, done)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="/tmp/shapes_maskrcnn/model.pt", help="state_dict output path")
    p.add_argument("--steps", type=int, default=4000, help="optimiser steps (the schedule's length)")
    p.add_argument("--minutes", type=float, default=40.0,
                   help="wall-clock budget; the schedule is compressed to it on a slow machine")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1.5e-3, help="AdamW peak learning rate")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=300, help="linear warm-up steps")
    p.add_argument("--clip", type=float, default=10.0, help="gradient-norm clip")
    p.add_argument("--seed", type=int, default=0, help="torch seed (weights init, RoI sampling)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--workers", type=int, default=1, help="data worker processes (0: in-process)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--keep-snapshots", action="store_true", help="also keep <stem>.step<N>.pt files")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--resume", action="store_true", help="continue from <checkpoint>.state.pt")
    p.add_argument("--export", metavar="DIR", help="export the trained model to this model directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    train(parse_args(argv))


if __name__ == "__main__":
    main()

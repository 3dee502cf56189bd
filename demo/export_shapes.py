"""Export a trained demo checkpoint to a model directory, through the project's exporter.

    python demo/export_shapes.py --checkpoint /tmp/shapes_maskrcnn/model.pt --output demo/model

This is the same `exporter.export` that build_engine.py uses; the weights' provenance
(checkpoint sha256 and the training summary `<checkpoint>.json`, when present) goes into
model.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `demo` and `exporter` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL_NAME = "shapes-demo"
ARCH = "maskrcnn-shapes-small-fpn"


def export_shapes_model(checkpoint: str | Path, output_dir: str | Path, *, quiet: bool = False,
                        mask_paste: str = "aligned") -> Path:
    """Load a `demo.shapes_model` state_dict and export it to `output_dir` (replaced if present)."""
    import torch

    from demo.shapes import CLASS_NAMES
    from demo.shapes_model import build_shapes_model
    from exporter import export, sha256_of

    checkpoint = Path(checkpoint)
    model = build_shapes_model()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    model.eval()
    summary_path = checkpoint.with_name(checkpoint.name + ".json")
    weights_info = {
        "source": "demo/train_shapes.py (synthetic shapes from demo/shapes.py, trained from scratch)",
        "trained": True,
        "checkpoint_sha256": sha256_of(checkpoint),
    }
    if summary_path.exists():
        weights_info["training"] = json.loads(summary_path.read_text())
    # "aligned" paste: float boxes in the frame torchvision trains masks in (engine.masks);
    # a higher mask AP than torchvision's integer paste (demo/RESULTS.md)
    return export(model, output_dir, CLASS_NAMES, name=MODEL_NAME, arch=ARCH,
                  weights_info=weights_info, overwrite=True, quiet=quiet, mask_paste=mask_paste)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="state_dict written by demo/train_shapes.py")
    p.add_argument("--output", default=str(Path(__file__).resolve().parent / "model"), help="model directory")
    p.add_argument("--mask-paste", default="aligned", choices=["aligned", "torchvision"],
                   help="how the engine pastes masks (default %(default)s; see engine/masks.py)")
    args = p.parse_args(argv)
    from exporter.progress import show_progress

    show_progress()  # the exporter's progress lines on stderr
    out = export_shapes_model(args.checkpoint, args.output, mask_paste=args.mask_paste)
    size = sum(f.stat().st_size for f in Path(out).iterdir() if f.is_file())
    print(f"{out}: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()

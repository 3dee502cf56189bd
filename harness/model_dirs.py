"""Model directories the benchmarks export for themselves (needs the export extra)."""

from __future__ import annotations

import tempfile
from pathlib import Path


def random_r50_model_dir(prefix: str) -> str:
    """R50-FPN v1 with seeded random weights (seed 0), exported to a new temp directory: the
    benchmarks' default model (no COCO download here)."""
    from exporter import export
    from exporter.weights import coco_class_names, random_model

    model_dir = str(Path(tempfile.mkdtemp(prefix=prefix)) / "r50")
    export(random_model("maskrcnn_resnet50_fpn", seed=0), model_dir, coco_class_names(), quiet=True,
           weights_info={"source": "random", "seed": 0, "trained": False})
    return model_dir

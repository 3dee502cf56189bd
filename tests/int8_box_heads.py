"""The openvino backend's INT8 box head in each arrangement, compared on one photo's
proposals, in a process of its own so that oneDNN can be told which instructions to use
(ONEDNN_MAX_CPU_ISA=AVX2 stands in for a CPU without VNNI: oneDNN reads it once per process).

    python tests/int8_box_heads.py MODEL_DIR [MODEL_DIR ...]

For each INT8 directory, one JSON line: whether OpenVINO's INT8 products saturate here
(engine.int8_arithmetic), how many weight tensors the backend requantized, and the largest
differences between the box head with fc6's columns permuted for channels-last features
("permuted") and without ("plain"): the same products summed in another order, so the same
numbers up to FP32 rounding on every CPU. Exits 1 if any directory's arrangements differ more.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import assert_same_box_head, box_head_variants  # noqa: E402


def compare(model_dir: Path) -> dict:
    from engine import int8_arithmetic

    with pytest.MonkeyPatch.context() as patch:
        out = box_head_variants(model_dir, patch, {"permuted": ("quantized_input_head",),
                                                   "plain": ("channels_last_head",)})
    (probs, deltas), (plain_probs, plain_deltas) = out["permuted"], out["plain"]
    row = {"model_dir": str(model_dir), "saturates": int8_arithmetic.saturates("openvino"),
           "requantized": sum(n for n, _ in out["permuted", "backend"].requantized.values()),
           "int8_weights": out["permuted", "backend"].int8_weights,  # what its log line says
           "max_probability_difference": float(np.abs(probs - plain_probs).max()),
           "max_delta_difference": float(np.abs(deltas - plain_deltas).max()),
           "top_class_agreement": float((probs.argmax(1) == plain_probs.argmax(1)).mean())}
    try:
        assert_same_box_head(out["permuted"], out["plain"])
        row["same"] = True
    except AssertionError:
        row["same"] = False
    return row


def main(argv: list[str]) -> int:
    rows = [compare(Path(d)) for d in argv]
    for row in rows:
        print(json.dumps(row))
    return 0 if all(row["same"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

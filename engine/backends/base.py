"""The contract every inference backend implements, and what the backends share.

    backend.run_dense(images)                   -> DenseOutputs (feature maps stay backend-owned)
    backend.run_box_head(features, rois)        -> class_probs (R, C), box_deltas (R, 4C)
    backend.run_mask_head(features, rois, ids)  -> mask_probs (R, M, M)
    backend.release(dense)                      the engine is done with this DenseOutputs

`images` is (1, 3, H, W) float32, normalised and padded (engine.preprocess). `rois` is one
float32 (Rj, 4) array per pooled level, (x1, y1, x2, y2) in padded-image pixels, Rj >= 1
(FILLER_BOX where a level has none); outputs come back in level order (all of level 0,
then level 1, ...). `ids` (R,) int64 are the classes whose mask channel to return.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass

import numpy as np

from ..model_directory.config import GRAPHS  # noqa: F401  (the graph names, for the backends)

# A stand-in RoI for a pyramid level that received none, so every head-graph input has at
# least one row (TensorRT profiles and some runtimes dislike empty tensors); its output row
# is dropped.
FILLER_BOX = np.array([[0.0, 0.0, 1.0, 1.0]], np.float32)
FILLER_BOX.setflags(write=False)

RPN_LOGITS_PREFIX, RPN_DELTAS_PREFIX = "rpn_logits_", "rpn_deltas_"  # + the level, as exporter.graphs names them


@dataclass
class DenseOutputs:
    """features: backend-owned feature maps (opaque), one per pooled map, in model.json order.
    rpn_logits / rpn_deltas: per RPN level, float32 (1, A, H, W) / (1, 4A, H, W)."""

    features: list
    rpn_logits: list[np.ndarray]
    rpn_deltas: list[np.ndarray]


def rpn_output_names(output_names) -> tuple[list[str], list[str]]:
    """The dense graph's RPN outputs, (logits, deltas), each in level order whatever order
    the graph or plan lists them in (rpn_logits_10 after rpn_logits_9)."""
    output_names = list(output_names)

    def by_level(prefix):
        names = [n for n in output_names if n.startswith(prefix)]
        return sorted(names, key=lambda n: int(n[len(prefix):]))

    logits, deltas = by_level(RPN_LOGITS_PREFIX), by_level(RPN_DELTAS_PREFIX)
    if not logits or len(logits) != len(deltas):
        raise ValueError(f"the dense graph's outputs {list(output_names)} lack matching rpn_logits_<i>/rpn_deltas_<i>")
    return logits, deltas


def default_threads() -> int:
    """Cores this process may use (affinity-aware): a backend's thread count when none is given."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class Backend(abc.ABC):
    """Runs the three graphs of a model directory (see the module docstring for shapes)."""

    name: str
    # The arithmetic the graphs run in, as the runtime reports it: "fp32", "bf16", "fp16",
    # "int8", or a "+"-joined mix (an INT8 directory keeps some layers in FP32).
    precision: str = "fp32"

    @abc.abstractmethod
    def run_dense(self, images: np.ndarray) -> DenseOutputs:
        """The backbone, FPN and RPN head on one padded image."""

    @abc.abstractmethod
    def run_box_head(self, features, rois: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """RoIAlign + box head on the RoIs: class probabilities and per-class box deltas."""

    @abc.abstractmethod
    def run_mask_head(self, features, rois: list[np.ndarray], class_ids: np.ndarray) -> np.ndarray:
        """RoIAlign + mask head: each row's mask probabilities for its class."""

    @abc.abstractmethod
    def release(self, dense: DenseOutputs) -> None:
        """Give back what `dense` holds (the GPU backends' pooled device buffers); idempotent."""

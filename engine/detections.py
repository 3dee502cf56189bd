"""The result of one inference: what `Engine.predict` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def format_label(name: str, score: float) -> str:
    """The API's label, e.g. "horse 100%": class name, a space, the score as a rounded whole percent, '%'.

    The one spelling of it: JSON answers, image captions and the engine CLI all use this."""
    return f"{name} {round(float(score) * 100)}%"


@dataclass
class Detections:
    """Instances found in one image, sorted by score, highest first.

    Attributes:
        boxes: float32 array (N, 4), (x1, y1, x2, y2) in the pixel coordinates of the
            image given to `predict` (origin at its top-left corner, x to the right).
        scores: float32 array (N,), class probabilities in [0, 1].
        class_ids: int64 array (N,), indices into the model's class-name list.
        labels: list of N class names.
        masks: bool array (N, H, W), one full-image mask per instance (probability > 0.5).
        image_size: (H, W) of the input image.
        timings: milliseconds per pipeline stage, for benchmarks and logs.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    labels: list[str]
    masks: np.ndarray
    image_size: tuple[int, int]
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls, image_size: tuple[int, int], timings: dict[str, float] | None = None) -> "Detections":
        """No instances: an ordinary result, with correctly shaped empty arrays."""
        h, w = image_size
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            labels=[],
            masks=np.zeros((0, h, w), bool),
            image_size=(h, w),
            timings=dict(timings or {}),
        )

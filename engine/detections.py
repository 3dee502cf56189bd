"""The result of one inference: what `Engine.predict` returns."""

from __future__ import annotations

import numpy as np

from .masks import CroppedMasks, InstanceMasks


def format_label(name: str, score: float) -> str:
    """The API's label, e.g. "horse 100%": class name, a space, the score as a rounded whole percent, '%'.

    The one spelling of it: JSON answers, image captions and the engine CLI all use this."""
    return f"{name} {round(float(score) * 100)}%"


class Detections:
    """Instances found in one image, sorted by score, highest first.

    Attributes:
        boxes: float32 array (N, 4), (x1, y1, x2, y2) in the pixel coordinates of the
            image given to `predict` (origin at its top-left corner, x to the right).
        scores: float32 array (N,), class probabilities in [0, 1].
        class_ids: int64 array (N,), indices into the model's class-name list.
        labels: list of N class names.
        mask_crops: an `engine.masks.InstanceMasks`: each instance's mask (probability
            > 0.5) at its box's extent, made when asked for (`crop(i)`, `full(i)`).
        masks: bool array (N, H, W), one full-image mask per instance, built from
            `mask_crops` on first access and then kept: N * H * W bytes (1.2 GB for 100
            instances on a 12-megapixel photo), so code that handles large photos reads
            `mask_crops` instead.
        image_size: (H, W) of the input image.
        timings: milliseconds per pipeline stage, for benchmarks and logs.

    `masks` given to the constructor may be an InstanceMasks or an (N, H, W) bool array.
    """

    def __init__(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, labels: list[str],
                 masks, image_size: tuple[int, int], timings: dict[str, float] | None = None):
        self.boxes = boxes
        self.scores = scores
        self.class_ids = class_ids
        self.labels = labels
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.timings = dict(timings or {})
        self._masks = None if isinstance(masks, InstanceMasks) else np.asarray(masks, dtype=bool)
        self.mask_crops = masks if self._masks is None else CroppedMasks.from_array(self._masks)
        if self.mask_crops.image_size != self.image_size or len(self.mask_crops) != len(scores):
            raise ValueError(f"{len(self.mask_crops)} masks on {self.mask_crops.image_size} do not fit "
                             f"{len(scores)} detections on {self.image_size}")

    @property
    def masks(self) -> np.ndarray:
        if self._masks is None:
            self._masks = self.mask_crops.to_array()
        return self._masks

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __repr__(self) -> str:
        return f"Detections({len(self)} instances on {self.image_size[0]}x{self.image_size[1]})"

    @classmethod
    def empty(cls, image_size: tuple[int, int], timings: dict[str, float] | None = None) -> "Detections":
        """No instances: an ordinary result, with correctly shaped empty arrays."""
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
            labels=[],
            masks=CroppedMasks([], image_size),
            image_size=image_size,
            timings=timings,
        )

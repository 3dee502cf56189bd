"""The engine: photo in, Detections out, with ONNX graphs for the network and numpy for the rest.

    image (H, W, 3) uint8 RGB
      -> preprocess: normalise, resize (torchvision's rule), pad     (1, 3, Hp, Wp)
      -> dense graph: feature maps + RPN outputs
      -> proposals (numpy): top-k, decode, clip, NMS per level        (P, 4)
      -> box head graph on the proposals, split by FPN level          (P, C), (P, 4C)
      -> detections (numpy): decode, threshold, per-class NMS, top-k  (N, 4)
      -> mask head graph on those N boxes only                        (N, M, M)
      -> boxes scaled to the input image, masks pasted                (N, H, W)
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .backends import create_backend
from .detect import select_detections, split_by_level
from .detections import Detections
from .masks import paste_masks, paste_masks_aligned
from .model_defaults import is_demo_model
from .model_dir import ModelDir
from .preprocess import preprocess, validate_image
from .proposals import select_proposals

log = logging.getLogger(__name__)


class Engine:
    """A loaded model directory and the backend that runs its graphs. Thread-safe for
    concurrent `predict` calls (ONNX Runtime sessions are; the GPU backends give each call
    its own pooled slot of device buffers), though on the CPU each call already uses every
    core the backend was given."""

    def __init__(self, model_dir: ModelDir, backend):
        self.model_dir = model_dir
        self.config = model_dir.config
        self.backend = backend
        self.class_names = model_dir.class_names
        self.model_name = model_dir.name
        self.untrained = model_dir.untrained
        # The bundled demo model (circles, squares, triangles): every surface says so.
        self.demo = is_demo_model(model_dir.path)

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @classmethod
    def load(cls, model_dir, backend: str = "auto", threads: int | None = None) -> "Engine":
        """Open and check `model_dir` (model.json + graphs) and start the backend.

        Raises ModelDirError naming the missing or corrupt file, BackendUnavailableError if
        the backend cannot run here.
        """
        directory = ModelDir.open(Path(model_dir))
        engine = cls(directory, create_backend(backend, directory, threads=threads))
        if engine.untrained:
            log.warning(
                "model %s has untrained (random) weights: its detections are meaningless", engine.model_name
            )
        log.info("loaded model %s (%d classes) on %s", engine.model_name, len(engine.class_names), engine.backend_name)
        return engine

    def warmup(self) -> None:
        """One inference on a synthetic image, so the first real request pays no start-up cost."""
        t = self.config["transform"]
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, size=(t["min_size"], t["min_size"] * 4 // 3, 3), dtype=np.uint8)
        self.predict(image, score_threshold=0.0, max_detections=1)

    def predict(self, image: np.ndarray, score_threshold: float = 0.5, max_detections: int = 100, class_ids=None) -> Detections:
        """Instances in `image` (H, W, 3) uint8 RGB with score > score_threshold, at most
        max_detections of them, optionally only of the given class indices.

        Follows torchvision's eval path step for step, so its results match
        `model.eval()(image)` run with box_score_thresh=score_threshold and
        box_detections_per_img=max_detections.
        """
        validate_image(image)
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if int(max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = (now - clock) * 1000.0
            clock = now

        cfg = self.config
        t = cfg["transform"]
        prepared = preprocess(image, t["image_mean"], t["image_std"], t["min_size"], t["max_size"], t["size_divisible"])
        lap("preprocess")
        dense = self.backend.run_dense(prepared.tensor)
        # From here the backend may hold per-request resources (the GPU backends keep the
        # feature maps in a pooled slot of device buffers) until release(), which comes as
        # soon as the last graph has run, before the CPU-only mask paste.
        try:
            lap("dense")
            proposals, _ = select_proposals(
                dense.rpn_logits, dense.rpn_deltas, prepared.padded_size, prepared.resized_size, cfg["rpn"]
            )
            lap("proposals")
            result = Detections.empty(prepared.original_size)
            if proposals.shape[0] == 0:
                result.timings = timings
                return result
            split = split_by_level(proposals, cfg["box_head"])
            class_probs, box_deltas = self.backend.run_box_head(dense.features, split.rois)
            lap("box_head")
            boxes, scores, labels = select_detections(
                split.restore(class_probs),
                split.restore(box_deltas),
                proposals,
                prepared.resized_size,
                cfg["box_head"],
                float(score_threshold),
                int(max_detections),
                class_ids,
            )
            lap("detections")
            if boxes.shape[0] == 0:
                result.timings = timings
                return result
            mask_split = split_by_level(boxes, cfg["mask_head"])
            # class of each graph row (filler rows get class 0; their output is dropped)
            ordered_labels = np.where(mask_split.order >= 0, labels[np.maximum(mask_split.order, 0)], 0)
            mask_probs = mask_split.restore(self.backend.run_mask_head(dense.features, mask_split.rois, ordered_labels))
            lap("mask_head")
        finally:
            release = getattr(self.backend, "release", None)  # backend wrappers may lack it
            if release is not None:
                release(dense)
        boxes = scale_boxes(boxes, prepared.resized_size, prepared.original_size)
        masks = self._paste(mask_probs, boxes, prepared)
        lap("paste")
        return Detections(
            boxes=boxes,
            scores=scores.astype(np.float32),
            class_ids=labels,
            labels=[self.class_names[i] for i in labels],
            masks=masks,
            image_size=prepared.original_size,
            timings=timings,
        )

    def _paste(self, mask_probs, boxes, prepared):
        """torchvision's paste (the default), or the opt-in aligned paste (model.json
        mask_head.paste = "aligned"; see engine.masks.paste_masks_aligned)."""
        head = self.config["mask_head"]
        threshold = head.get("mask_threshold", 0.5)
        if head.get("paste") == "aligned":
            factor = [o / r for o, r in zip(prepared.original_size, prepared.resized_size)]
            return paste_masks_aligned(mask_probs, boxes, prepared.original_size, factor, threshold)
        return paste_masks(mask_probs, boxes, prepared.original_size, threshold)


def scale_boxes(boxes: np.ndarray, from_hw, to_hw) -> np.ndarray:
    """torchvision resize_boxes: multiply by the float32 size ratios (to / from)."""
    ratio_h = np.float32(to_hw[0]) / np.float32(from_hw[0])
    ratio_w = np.float32(to_hw[1]) / np.float32(from_hw[1])
    out = boxes.copy()
    out[:, 0::2] *= ratio_w
    out[:, 1::2] *= ratio_h
    return out

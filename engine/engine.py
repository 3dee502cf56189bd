"""The engine: photo in, Detections out, with ONNX graphs for the network and numpy for the rest.

    image (H, W, 3) uint8 RGB
      -> transform: normalise, resize (torchvision's rule), pad            (1, 3, Hp, Wp)
      -> backend.run_dense: backbone, FPN and RPN head (dense graph)      feature maps, RPN outputs
      -> rpn (numpy): top-k, decode, clip, NMS per level                   (P, 4)
      -> box_head (graph) on the proposals, split by FPN level             (P, C), (P, 4C)
      -> postprocess_detections (numpy): decode, threshold, NMS, top-k     (N, 4)
      -> mask_head (graph) on those N boxes only                           (N, M, M)
      -> postprocess: boxes scaled to the input image; masks kept as crops, pasted on access

Each arrow is a method of Engine under torchvision's name for the stage; `predict` runs them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .backends import AUTO_BACKEND, create_backend
from .backends.base import Backend, DenseOutputs
from .box_ops import clip_boxes, remove_small_boxes
from .detections import Detections
from .masks import PastedMasks
from .model_directory.defaults import is_demo_model
from .model_directory.directory import ModelDir
from .preprocess import PreparedImage, preprocess, preprocess_shortest_edge, validate_image
from .proposals import select_proposals
from .roi_heads import select_detections, split_by_level

log = logging.getLogger(__name__)

# The server's default max_detections, and the most detections the CPU backend's mask head
# runs at once (backends.onnxruntime_common.CPU_MASK_HEAD_ROWS_PER_RUN): what warm-up exercises.
WARMUP_DETECTIONS = 100


class Engine:
    """A loaded model directory and the backend that runs its graphs. Thread-safe for
    concurrent `predict` calls (ONNX Runtime sessions are; the GPU backends give each call
    its own pooled slot of device buffers), though on the CPU each call already uses every
    core the backend was given."""

    def __init__(self, model_dir: ModelDir, backend: Backend):
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

    @property
    def precision(self) -> str:
        """What the backend's graphs run in, as its runtime reports it ("fp32", "bf16", ...)."""
        return self.backend.precision

    @classmethod
    def load(cls, model_dir, backend: str = AUTO_BACKEND, threads: int | None = None, cuda_tf32: bool = False,
             precision: str | None = None) -> "Engine":
        """Open and check `model_dir` (model.json + graphs) and start the backend (see
        engine.backends.create_backend for `threads`, `cuda_tf32` and `precision`: None or
        "fp32", or "bf16" with backend "openvino" or "auto").

        Raises ModelDirError naming the missing or corrupt file, BackendUnavailableError if
        the backend cannot run here.
        """
        directory = ModelDir.open(Path(model_dir))
        engine = cls(directory, create_backend(backend, directory, threads=threads, cuda_tf32=cuda_tf32,
                                               precision=precision))
        if engine.untrained:
            log.warning(
                "model %s has untrained (random) weights: its detections are meaningless", engine.model_name
            )
        log.info("loaded model %s (%d classes) on %s, %s", engine.model_name, len(engine.class_names),
                 engine.backend_name, engine.precision)
        return engine

    def warmup(self) -> None:
        """One inference on a synthetic image at the largest network input the resize rule
        gives (min_size x max_size) with WARMUP_DETECTIONS detections, so that the first real
        request pays no start-up cost and the runtime's memory (ONNX Runtime's arena keeps
        the largest activations it has needed) reaches its working size here, not under load."""
        t = self.config.transform
        rng = np.random.default_rng(0)
        short = t.min_size or t.max_size  # min_size 0: the image's own size, at most max_size
        image = rng.integers(0, 256, size=(short, max(t.max_size, short), 3), dtype=np.uint8)
        self.predict(image, score_threshold=0.0, max_detections=WARMUP_DETECTIONS)

    def predict(self, image: np.ndarray, score_threshold: float = 0.5, max_detections: int = 100, class_ids=None) -> Detections:
        """Instances in `image` (H, W, 3) uint8 RGB with score > score_threshold, at most
        max_detections of them, optionally only of the given class indices.

        Follows torchvision's eval path step for step (GeneralizedRCNN.forward: transform,
        backbone, rpn, roi_heads, transform.postprocess), so its results match
        `model.eval()(image)` run with box_score_thresh=score_threshold and
        box_detections_per_img=max_detections.
        """
        validate_image(image)
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if int(max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        timer = _StageTimer()
        prepared = timer.lap("preprocess", self.transform(image))
        dense = timer.lap("dense", self.backend.run_dense(prepared.tensor))  # backbone, FPN, RPN head
        # From here the backend may hold per-request resources (the GPU backends keep the
        # feature maps in a pooled slot of device buffers) until release(), which comes as
        # soon as the last graph has run, before the CPU-only mask paste.
        try:
            proposals = timer.lap("proposals", self.rpn(dense, prepared))
            if proposals.shape[0] == 0:
                return Detections.empty(prepared.original_size, timer.timings)
            class_probs, box_deltas = timer.lap("box_head", self.box_head(dense, proposals))
            boxes, scores, labels = timer.lap("detections", self.postprocess_detections(
                class_probs, box_deltas, proposals, prepared, float(score_threshold), int(max_detections), class_ids))
            if boxes.shape[0] == 0:
                return Detections.empty(prepared.original_size, timer.timings)
            mask_probs = timer.lap("mask_head", self.mask_head(dense, boxes, labels))
        finally:
            self.backend.release(dense)
        # masks are pasted when a consumer reads them (the renderer, the mask encoders), one
        # at a time: at photo size they would be N * H * W bytes
        boxes, masks, kept = timer.lap("postprocess", self.postprocess(boxes, mask_probs, prepared))
        scores, labels = scores[kept], labels[kept]
        return Detections(
            boxes=boxes,
            scores=scores.astype(np.float32),
            class_ids=labels,
            labels=[self.class_names[i] for i in labels],
            masks=masks,
            image_size=prepared.original_size,
            timings=timer.timings,
        )

    # The stages, in order, each under torchvision's name for it (or one that says what it does).

    def transform(self, image: np.ndarray) -> PreparedImage:
        """GeneralizedRCNNTransform (or detectron2's ResizeShortestEdge and preprocess_image):
        normalise, resize by the model's rule, pad: (1, 3, Hp, Wp)."""
        t = self.config.transform
        if t.resize == "shortest_edge":
            mean, std = (tuple(v * 255.0 / t.pixel_range for v in values) for values in (t.image_mean, t.image_std))
            return preprocess_shortest_edge(image, mean, std, t.min_size, t.max_size, t.size_divisible, t.channel_order)
        mean, std = (tuple(v / t.pixel_range for v in values) for values in (t.image_mean, t.image_std))
        if t.channel_order == "BGR":
            image = image[:, :, ::-1]
        return preprocess(image, mean, std, t.min_size, t.max_size, t.size_divisible)

    def rpn(self, dense: DenseOutputs, prepared: PreparedImage) -> np.ndarray:
        """RegionProposalNetwork after its head: proposals (P, 4), padded-image pixels, best first."""
        proposals, _ = select_proposals(dense.rpn_logits, dense.rpn_deltas, prepared.padded_size,
                                        prepared.resized_size, self.config.rpn)
        return proposals

    def box_head(self, dense: DenseOutputs, proposals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """RoIHeads' box_roi_pool + box_head + box_predictor on every proposal: class
        probabilities (P, C) and per-class box deltas (P, 4C), in proposal order."""
        split = split_by_level(proposals, self.config.box_head)
        class_probs, box_deltas = self.backend.run_box_head(dense.features, split.rois)
        return split.restore(class_probs), split.restore(box_deltas)

    def postprocess_detections(self, class_probs, box_deltas, proposals, prepared: PreparedImage,
                               score_threshold: float, max_detections: int, class_ids=None):
        """RoIHeads.postprocess_detections: boxes (N, 4) in resized-image pixels, scores (N,), labels (N,)."""
        return select_detections(class_probs, box_deltas, proposals, prepared.resized_size, self.config.box_head,
                                 score_threshold, max_detections, class_ids)

    def mask_head(self, dense: DenseOutputs, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """RoIHeads' mask_roi_pool + mask_head + mask_predictor on the N detections only, each
        box's own class channel: mask probabilities (N, M, M)."""
        head = self.config.mask_head
        split = split_by_level(boxes, head)
        channels = labels if head.background_channel else labels - 1  # the predictor's channel of each class
        # channel of each graph row (filler rows get channel 0; their output is dropped)
        ordered_labels = np.where(split.order >= 0, channels[np.maximum(split.order, 0)], 0)
        return split.restore(self.backend.run_mask_head(dense.features, split.rois, ordered_labels))

    def postprocess(self, boxes: np.ndarray, mask_probs: np.ndarray, prepared: PreparedImage):
        """GeneralizedRCNNTransform.postprocess (or detectron2's detector_postprocess, where
        model.json's transform.clip_output): boxes (N', 4) float32 scaled to the input image,
        the masks to paste into it (PastedMasks: each mask is pasted by the model's paste rule
        when a consumer asks for its crop), and the indices (N',) of the N detections kept."""
        kept = np.arange(boxes.shape[0])
        if self.config.transform.clip_output:
            boxes = scale_boxes(boxes, prepared.resized_size, prepared.original_size, double_ratio=True)
            boxes = clip_boxes(boxes, prepared.original_size)
            kept = remove_small_boxes(boxes, 0.0, strict=True)
            boxes, mask_probs = boxes[kept], mask_probs[kept]
        else:
            boxes = scale_boxes(boxes, prepared.resized_size, prepared.original_size)
        head = self.config.mask_head
        # the aligned paste (opt-in, model.json mask_head.paste = "aligned") needs the
        # network frame's scale; see engine.masks.paste_masks_aligned
        factor = [o / r for o, r in zip(prepared.original_size, prepared.resized_size)]
        return boxes, PastedMasks(mask_probs, boxes, prepared.original_size, head.mask_threshold,
                                  mode=head.paste, resize_factor=factor), kept


class _StageTimer:
    """Milliseconds per stage: `lap(name, result)` books the time since the previous lap."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, stage: str, result):
        now = time.perf_counter()
        self.timings[stage] = (now - self._clock) * 1000.0
        self._clock = now
        return result


def scale_boxes(boxes: np.ndarray, from_hw, to_hw, double_ratio: bool = False) -> np.ndarray:
    """torchvision resize_boxes: multiply by the size ratios (to / from) divided in float32;
    or, where `double_ratio`, divided in double precision and then rounded to float32
    (detectron2's Boxes.scale by a Python float)."""
    if double_ratio:
        ratio_h, ratio_w = np.float32(to_hw[0] / from_hw[0]), np.float32(to_hw[1] / from_hw[1])
    else:
        ratio_h = np.float32(to_hw[0]) / np.float32(from_hw[0])
        ratio_w = np.float32(to_hw[1]) / np.float32(from_hw[1])
    out = boxes.copy()
    out[:, 0::2] *= ratio_w
    out[:, 1::2] *= ratio_h
    return out

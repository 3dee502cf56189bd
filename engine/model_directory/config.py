"""model.json as typed, frozen dataclasses: the schema, defined once, checked at load.

`ModelConfig.from_json(data, file)` checks every key, type and range and raises
ModelDirError naming the file and the key ("model.json: rpn.nms_thresh is missing"), so a
bad model directory fails at load, never at the first request. The exporter builds the same
dataclasses and writes `to_json()`, so what is written is what is read.

    ModelConfig
      transform   TransformConfig   torchvision GeneralizedRCNNTransform: normalise, resize rule, padding
      rpn         RpnConfig         RegionProposalNetwork: anchors, pre/post-NMS top-n, BoxCoder
      box_head    BoxHeadConfig     MultiScaleRoIAlign (RoIPoolConfig) + RoIHeads.postprocess_detections
      mask_head   MaskHeadConfig    MultiScaleRoIAlign + mask size, threshold and paste mode
      features    tuple[str]        the pooled feature maps, in the dense graph's output order
      graphs      GraphFiles        the three ONNX files and their sha256
      quantization QuantizationConfig | None   INT8 graphs (build_engine.py --int8)
      tensorrt    TensorRTConfig | None        plans built on a GPU (build_engine.py --tensorrt)

Coordinates: boxes are (x1, y1, x2, y2) pixels everywhere; RoIAlign `scales` are feature
pixels per image pixel (1/4 for the stride-4 map).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelDirError
from ..masks import PASTE_MODES  # torchvision's paste, the aligned one, or detectron2's grid_sample
from .schema import Invalid, Section, convention, fraction, kind, one_of, positive, require

# The conventions below are data, each with torchvision's behaviour as its default, so that
# model directories written before a field existed load and behave exactly as they did.
RESIZE_RULES = ("torchvision", "shortest_edge")  # see TransformConfig
CHANNEL_ORDERS = ("RGB", "BGR")
ANCHOR_ORDERS = ("ratios_outer", "sizes_outer")  # see RpnConfig
OBJECTNESS_SCORES = ("sigmoid", "logits")
MIN_SIZE_RULES = (">=", ">")
BACKGROUND_COLUMNS = ("first", "last")  # see BoxHeadConfig

MODEL_FORMAT = "maskrcnn-serve/1"
GRAPHS = ("dense", "box_head", "mask_head")  # the three ONNX graphs (and TensorRT plans) of a model
TENSORRT_PRECISIONS = ("fp32", "fp16", "int8")  # what TensorRT plans are built in


def _box_coder(weights: tuple, clip: float) -> None:
    """torchvision BoxCoder(weights, bbox_xform_clip): both positive."""
    positive(weights, "box_coder_weights")
    positive(clip, "bbox_xform_clip")


@dataclass(frozen=True)
class TransformConfig(Section):
    """The network input: (x / 255 * pixel_range - mean) / std per channel, channels in
    channel_order; the short side scaled to min_size unless the long side would pass max_size;
    padded to a multiple of size_divisible (bottom and right).

    resize "torchvision" (GeneralizedRCNNTransform): the scale is a float, sizes truncated,
    the normalised image resized bilinearly without antialias (F.interpolate).
    resize "shortest_edge" (detectron2's ResizeShortestEdge in its DefaultPredictor): sizes
    rounded, the uint8 image resized by PIL's bilinear filter, then normalised; min_size 0
    keeps the image's size.
    clip_output: boxes scaled back to the input image are clipped to it and the empty ones
    dropped (detectron2's detector_postprocess); torchvision does neither.
    """

    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    min_size: int
    max_size: int
    size_divisible: int
    resize: str = convention(RESIZE_RULES[0])
    channel_order: str = convention(CHANNEL_ORDERS[0])
    pixel_range: float = convention(1.0)  # 1.0: mean and std are in 0..1 (torchvision); 255.0: in 0..255 (detectron2)
    clip_output: bool = convention(False)

    def check(self):
        positive(self.image_std, "image_std")
        if self.resize == "shortest_edge":
            require(self.min_size >= 0, "min_size", f"must be >= 0 (0: no resize), got {self.min_size!r}")
        else:
            positive(self.min_size, "min_size")
        positive(self.max_size, "max_size")
        positive(self.size_divisible, "size_divisible")
        one_of(self.resize, RESIZE_RULES, "resize")
        one_of(self.channel_order, CHANNEL_ORDERS, "channel_order")
        positive(self.pixel_range, "pixel_range")


@dataclass(frozen=True)
class RpnConfig(Section):
    """torchvision RegionProposalNetwork (eval): anchors per level, BoxCoder(box_coder_weights,
    bbox_xform_clip), pre_nms_top_n per level, NMS at nms_thresh per level, post_nms_top_n in all.

    Anchors (engine.anchors): a level's zero-centred cell anchors, one per (size, ratio),
    ordered ratios_outer (torchvision) or sizes_outer (detectron2), rounded to whole pixels
    (anchor_round, torchvision) or not, shifted by (cell index + anchor_offset) * stride, the
    stride being anchor_strides[level] or, where that is not given, padded size // grid size
    (torchvision's rule). Proposals are ranked and NMS'd by the sigmoid of the objectness
    logit (torchvision) or the logit itself (detectron2); a box is kept when both its sides
    are >= min_size (torchvision) or > min_size (detectron2's nonempty).
    """

    anchor_sizes: tuple[tuple[float, ...], ...]  # per level, in image pixels
    aspect_ratios: tuple[tuple[float, ...], ...]  # per level, height / width
    pre_nms_top_n: int
    post_nms_top_n: int
    nms_thresh: float
    score_thresh: float
    min_size: float  # boxes with a side under this (pixels) are dropped
    box_coder_weights: tuple[float, float, float, float]
    bbox_xform_clip: float
    anchor_order: str = convention(ANCHOR_ORDERS[0])
    anchor_round: bool = convention(True)
    anchor_offset: float = convention(0.0)
    anchor_strides: tuple[int, ...] | None = None
    objectness: str = convention(OBJECTNESS_SCORES[0])
    min_size_rule: str = convention(MIN_SIZE_RULES[0])

    def check(self):
        require(len(self.anchor_sizes) >= 1, "anchor_sizes", "must list at least one level")
        one_of(self.anchor_order, ANCHOR_ORDERS, "anchor_order")
        one_of(self.objectness, OBJECTNESS_SCORES, "objectness")
        one_of(self.min_size_rule, MIN_SIZE_RULES, "min_size_rule")
        if self.anchor_strides is not None:
            require(len(self.anchor_strides) == len(self.anchor_sizes), "anchor_strides",
                     f"must have one entry per level ({len(self.anchor_sizes)}), got {len(self.anchor_strides)}")
            positive(self.anchor_strides, "anchor_strides")
        require(len(self.aspect_ratios) == len(self.anchor_sizes), "aspect_ratios",
                 f"must have one entry per level ({len(self.anchor_sizes)}), got {len(self.aspect_ratios)}")
        for name in ("anchor_sizes", "aspect_ratios"):
            for level, values in enumerate(getattr(self, name)):
                require(len(values) >= 1, f"{name}[{level}]", "must not be empty")
                positive(values, f"{name}[{level}]")
        positive(self.pre_nms_top_n, "pre_nms_top_n")
        positive(self.post_nms_top_n, "post_nms_top_n")
        fraction(self.nms_thresh, "nms_thresh")
        fraction(self.score_thresh, "score_thresh")
        require(self.min_size >= 0, "min_size", f"must be >= 0, got {self.min_size!r}")
        _box_coder(self.box_coder_weights, self.bbox_xform_clip)


@dataclass(frozen=True)
class RoIPoolConfig(Section):
    """torchvision MultiScaleRoIAlign: which feature maps (indices into ModelConfig.features)
    at which scales, and its LevelMapper (canonical_scale, canonical_level).

    aligned: RoIAlign's half-pixel offset (torchvision's roi_align aligned=True, detectron2's
    ROIAlignV2); sampling_ratio 0 samples ceil(bin size) points per bin. A box's level is
    floor(canonical_level + log2(sqrt(area) / canonical_scale) + level_epsilon) (torchvision),
    or with the epsilon added inside the log2 where level_epsilon_in_log (detectron2).
    """

    featmap_names: tuple[str, ...]
    feature_indices: tuple[int, ...]
    scales: tuple[float, ...]
    output_size: tuple[int, int]
    sampling_ratio: int
    canonical_scale: int
    canonical_level: int
    # keyword-only: the subclasses' own fields, without defaults, follow these
    aligned: bool = convention(False, kw_only=True)
    level_epsilon: float = convention(1e-6, kw_only=True)
    level_epsilon_in_log: bool = convention(False, kw_only=True)

    def check(self):
        require(len(self.scales) >= 1, "scales", "must list at least one level")
        for name in ("featmap_names", "feature_indices"):
            require(len(getattr(self, name)) == len(self.scales), name,
                     f"must have one entry per scale ({len(self.scales)}), got {len(getattr(self, name))}")
        positive(self.scales, "scales")
        positive(self.output_size, "output_size")
        positive(self.canonical_scale, "canonical_scale")


@dataclass(frozen=True)
class BoxHeadConfig(RoIPoolConfig):
    """RoIAlign for the box head, then torchvision RoIHeads.postprocess_detections.

    background: where the graph's class_probs put the background: column "first"
    (torchvision: box_deltas (R, 4C), a row for every class) or "last" (detectron2: box_deltas
    (R, 4(C - 1)), none for the background). Class index i of class_names (0 = background) is
    probability column i, or i - 1 where the background is last. Detections with a side under
    min_size are dropped before NMS (torchvision's 1e-2; 0 keeps them all).
    """

    box_coder_weights: tuple[float, float, float, float]
    bbox_xform_clip: float
    score_thresh: float
    nms_thresh: float
    detections_per_img: int
    background: str = convention(BACKGROUND_COLUMNS[0], kw_only=True)
    min_size: float = convention(1e-2, kw_only=True)

    def check(self):
        super().check()
        one_of(self.background, BACKGROUND_COLUMNS, "background")
        require(self.min_size >= 0, "min_size", f"must be >= 0, got {self.min_size!r}")
        _box_coder(self.box_coder_weights, self.bbox_xform_clip)
        fraction(self.score_thresh, "score_thresh")
        fraction(self.nms_thresh, "nms_thresh")
        positive(self.detections_per_img, "detections_per_img")


@dataclass(frozen=True)
class MaskHeadConfig(RoIPoolConfig):
    """RoIAlign for the mask head; masks of mask_size^2, thresholded at mask_threshold after
    the paste (`paste`: "torchvision", "aligned" or "grid_sample", see engine.masks).
    background_channel: the mask predictor has a channel for the background, so class i's
    mask is channel i (torchvision); without one (detectron2) it is channel i - 1."""

    mask_size: int
    mask_threshold: float = 0.5  # optional in model.json: the first exports did not write these two
    paste: str = PASTE_MODES[0]
    background_channel: bool = convention(True)

    def check(self):
        super().check()
        positive(self.mask_size, "mask_size")
        fraction(self.mask_threshold, "mask_threshold")
        require(self.paste in PASTE_MODES, "paste", f"must be one of {PASTE_MODES}, got {self.paste!r}")


@dataclass(frozen=True)
class GraphFile(Section):
    """A file of the model directory (relative name) and its sha256, checked at load when given."""

    file: str
    sha256: str | None = None

    def check(self):
        require(bool(self.file) and not Path(self.file).is_absolute() and ".." not in Path(self.file).parts,
                 "file", f"must be a file name inside the model directory, got {self.file!r}")


@dataclass(frozen=True)
class GraphFiles(Section):
    """The three graphs (or plans), by GRAPHS name."""

    dense: GraphFile
    box_head: GraphFile
    mask_head: GraphFile

    def __getitem__(self, graph: str) -> GraphFile:
        if graph not in GRAPHS:
            raise KeyError(graph)
        return getattr(self, graph)

    def items(self):
        return ((graph, self[graph]) for graph in GRAPHS)


@dataclass(frozen=True)
class QuantizationConfig(Section):
    """INT8 graphs written by `build_engine.py --int8` (static QDQ with ONNX Runtime's tools)."""

    precision: str
    format: str
    ops: tuple[str, ...]
    fp32_layers: dict[str, list]  # per graph, the nodes left in FP32
    calibration: dict  # {"method": "MinMax", "images": N}
    # 7: weights in -64..64, whose U8 x S8 products no x86 CPU saturates; 8: -127..127 (what
    # directories written before the field existed hold; see engine.int8_arithmetic)
    weight_bits: int = 8

    def check(self) -> None:
        require(self.weight_bits in (7, 8), "weight_bits", f"must be 7 or 8, got {self.weight_bits!r}")


@dataclass(frozen=True)
class TensorRTConfig(Section):
    """Plans built on a GPU by `build_engine.py --tensorrt` (see engine.model_directory.tensorrt_plans)."""

    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    plans: GraphFiles
    profiles_per_plan: int = 1  # identical profiles: one per concurrent request
    profiles: dict = field(default_factory=dict)  # {graph: {input: [min, opt, max]}} as built
    int8_graphs: tuple[str, ...] = ()
    built: str | None = None

    def check(self):
        require(self.precision in TENSORRT_PRECISIONS, "precision",
                f"must be one of {TENSORRT_PRECISIONS}, got {self.precision!r}")
        for name in ("tensorrt_version", "gpu_name", "compute_capability"):
            require(bool(getattr(self, name)), name, "must not be empty")
        positive(self.profiles_per_plan, "profiles_per_plan")


@dataclass(frozen=True)
class ModelConfig(Section):
    """All of model.json. `weights` (provenance), `tools` and `created` are free-form records."""

    format: str
    class_names: tuple[str, ...]  # index 0 is the background (torchvision's rule)
    transform: TransformConfig
    rpn: RpnConfig
    box_head: BoxHeadConfig
    mask_head: MaskHeadConfig
    features: tuple[str, ...]
    graphs: GraphFiles
    name: str | None = None
    arch: str = "custom"
    weights: dict = field(default_factory=lambda: {"source": "unknown", "trained": True})
    tools: dict = field(default_factory=dict)
    created: str | None = None
    quantization: QuantizationConfig | None = None
    tensorrt: TensorRTConfig | None = None

    def check(self):
        require(self.format == MODEL_FORMAT, "format", f"must be {MODEL_FORMAT!r}, got {self.format!r}")
        require(len(self.class_names) >= 2, "class_names", "must list the background and at least one class")
        require(len(self.features) >= 1, "features", "must name at least one feature map")
        for head in ("box_head", "mask_head"):
            for i, index in enumerate(getattr(self, head).feature_indices):
                require(0 <= index < len(self.features), f"{head}.feature_indices[{i}]",
                         f"must index features (0..{len(self.features) - 1}), got {index}")
        trained = self.weights.get("trained", True)
        require(isinstance(trained, bool), "weights.trained", f"must be true or false, got {kind(trained)}")

    @property
    def trained(self) -> bool:
        return self.weights.get("trained", True)

    @classmethod
    def from_json(cls, data, file) -> ModelConfig:
        """Parse model.json's contents; ModelDirError "<file>: <key> <problem>" if anything is off."""
        try:
            return cls.parse(data, "")
        except Invalid as exc:
            raise ModelDirError(f"{file}: {exc.where or 'the top level'} {exc.problem}") from None

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)

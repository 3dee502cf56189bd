"""INT8 model directories: static QDQ quantization of the three graphs with ONNX Runtime's tools.

Calibration runs the FP32 engine on the user's images and records the exact inputs each
graph sees in service (the photo tensor; the feature maps and level-split RoIs of the box
and mask heads), so every graph is calibrated on real activations, not on random tensors.

Choices (measured on an AMD EPYC Zen 4 with ORT 1.32; the figures are in
benchmarks/results/FIGURES.md):
- U8 activations with S8 per-channel weights: ORT's x86 kernels fuse QDQ Conv/Gemm into
  integer kernels only for U8S8; S8S8 left most convs unfused at FP32 speed.
- MinMax calibration, with CalibStridedMinMax (CalibMaxIntermediateOutputs collects nothing
  in ORT 1.32).
- Per-channel weights: as fast as per-tensor once every conv is integer (R50 dense graph,
  both far faster than FP32), and the more accurate of the two.
- Only Conv, Gemm and MatMul are quantized; RoiAlign, Resize, Softmax and Sigmoid stay FP32.
  Adding Add, Resize and MaxPool to the list left the dense graph's time unchanged; adding
  ConvTranspose made the mask head slower.
- The last layer of each head (RPN objectness/deltas, box predictor, mask logits) stays FP32:
  they write the scores and boxes directly, cost little (1x1 convs, small Gemms), and on the
  demo model keeping them raised INT8/FP32 agreement and box AP. Quantizing the RPN's output
  convs after all would save a little of the R50 dense graph's time but lost most of that
  agreement again.
- Weights in 7 bits (-64..64, ONNX Runtime's reduce_range; WEIGHT_BITS): on x86 CPUs without
  VNNI (AVX2-only, AVX-512 without VNNI) both ONNX Runtime and OpenVINO multiply U8 by S8 with
  VPMADDUBSW, which adds each two neighbouring products into an int16 and saturates at
  32767. Full-range weights overflow it (255 * 127 * 2), so results depended on the CPU and
  even on the order of a layer's input columns (engine.int8_arithmetic). 255 * 64 * 2 =
  32640 never does: the same integers on every CPU. Cost on the demo model:
  benchmarks/int8_accuracy.py --weight-bits 7 and 8 (benchmarks/results/int8_accuracy_*.json).
- Shape nodes read the quantized maps (read_shapes_before_dequantize): no DequantizeLinear
  of a whole map only for its shape.
- Every conv must reach ORT's integer kernel: shared initializers are given private copies
  first (see materialize_shared_initializers); that made the R50 dense graph far
  faster.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from engine.backends.base import Backend
from engine.model_directory.config import GRAPHS, GraphFile, GraphFiles, QuantizationConfig
from engine.model_directory.directory import ModelDir, sha256_of

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]
WEIGHT_BITS = 7  # see the module docstring; 8 is ONNX Runtime's full range (-127..127)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}

log = logging.getLogger(__name__)


def load_calibration_images(directory: Path, limit: int = 16) -> list[np.ndarray]:
    """Up to `limit` JPEG/PNG images from `directory` (sorted by name), decoded to RGB."""
    from engine import decode_image

    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"calibration image directory not found: {directory}")
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise ValueError(f"no .jpg/.jpeg/.png calibration images in {directory}")
    return [decode_image(p.read_bytes()) for p in paths]


class _RecordingBackend(Backend):
    """Wraps a backend and records the inputs of every graph run, as numpy feeds."""

    def __init__(self, backend):
        self._backend = backend
        self.name = backend.name
        self.feeds: dict[str, list[dict]] = {"dense": [], "box_head": [], "mask_head": []}

    def _features(self, features) -> dict:
        return {name: value.numpy() for name, value in zip(self._backend.feature_names, features)}

    def run_dense(self, images):
        self.feeds["dense"].append({"images": images})
        return self._backend.run_dense(images)

    def run_box_head(self, features, rois):
        self.feeds["box_head"].append({**self._features(features), **{f"rois_{j}": r for j, r in enumerate(rois)}})
        return self._backend.run_box_head(features, rois)

    def run_mask_head(self, features, rois, class_ids):
        feed = {**self._features(features), **{f"rois_{j}": r for j, r in enumerate(rois)}}
        self.feeds["mask_head"].append({**feed, "class_ids": class_ids.astype(np.int64)})
        return self._backend.run_mask_head(features, rois, class_ids)

    def release(self, dense):
        self._backend.release(dense)


def collect_feeds(model_dir: Path, images: list[np.ndarray], score_threshold: float = 0.05) -> dict[str, list[dict]]:
    """The inputs each graph receives while the FP32 engine segments `images` (the engine's
    own predict path, with a recording backend)."""
    from engine import Engine

    engine = Engine.load(model_dir, backend="onnxruntime-cpu")
    recorder = _RecordingBackend(engine.backend)
    engine.backend = recorder
    for image in images:
        engine.predict(image, score_threshold=score_threshold, max_detections=100)
    return recorder.feeds


def materialize_shared_initializers(source: Path, target: Path) -> int:
    """Copy the ONNX graph `source` to `target` with every Identity of an initializer replaced
    by a private copy of that initializer for each consumer. Returns how many were replaced.

    torch.onnx.export deduplicates equal initializers and reads the duplicates through
    Identity nodes (with random or freshly initialised weights, every all-zero conv bias
    becomes one). ORT's quantizer only quantizes a bias that is an initializer, and ORT
    fuses DQ -> Conv -> Q into an integer QLinearConv only when the bias is quantized, so
    each such conv stayed FP32: 8 of the R50 dense graph's convs, the FPN's 3x3 convs and the
    RPN head's conv at the finest level among them, most of its time. Private copies also
    let each consumer get the bias scale its own input scale implies.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    identities = {n.output[0]: n for n in graph.node if n.op_type == "Identity" and n.input[0] in initializers}
    graph_outputs = {o.name for o in graph.output}
    copies = 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in identities:
                array = numpy_helper.to_array(initializers[identities[name].input[0]])
                copy_name = f"{name}__{node.name or copies}"
                graph.initializer.append(numpy_helper.from_array(array.copy(), copy_name))
                node.input[i] = copy_name
                copies += 1
    keep = [n for n in graph.node if not (n.output[0] in identities and n.output[0] not in graph_outputs)]
    del graph.node[:]
    graph.node.extend(keep)
    onnx.save(model, str(target))
    return copies


def read_shapes_before_dequantize(path: Path) -> int:
    """Rewrite the quantized graph at `path` so that Shape nodes read the quantized tensor
    instead of its DequantizeLinear output (same shape), and drop the DequantizeLinear nodes
    that were there only for them. Returns how many Shape nodes were rewired.

    The FPN sizes each upsampling from the lateral map's shape; after quantization that Shape
    hung off a DequantizeLinear of the whole map, which ONNX Runtime computes (and transposes
    out of its NHWC layout) just to read its shape: a measurable part of the R50 INT8 dense
    graph's time.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    rewired = 0
    for node in graph.node:
        if node.op_type == "Shape" and node.input[0] in producer and producer[node.input[0]].op_type == "DequantizeLinear":
            node.input[0] = producer[node.input[0]].input[0]
            rewired += 1
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [n for n in graph.node if n.op_type != "DequantizeLinear" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(keep)
    onnx.save(model, str(path))
    return rewired


def output_layers(graph_path: Path, skip_outputs=("feature_",)) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes that produce a graph output with no other such
    node in between: the last layer of each head (RPN objectness and box regression, the box
    predictor, the mask logits). Outputs whose name starts with one of `skip_outputs` (the
    FPN feature maps, which the heads read) are not followed."""
    import onnx

    graph = onnx.load(str(graph_path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    layers, seen = [], set()
    stack = [o.name for o in graph.output if not o.name.startswith(tuple(skip_outputs))]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in QUANTIZED_OPS:
            layers.append(node.name)
        else:
            stack.extend(node.input)
    return layers


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict]):
        self._feeds = feeds
        self._iter = iter(feeds)

    def __len__(self) -> int:  # CalibStridedMinMax asks for the total
        return len(self._feeds)

    def get_next(self):
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:  # CalibStridedMinMax's batches
        self._iter = iter(self._feeds[start_index:end_index])


def quantize_graphs(fp32_dir: Path, out_dir: Path, images: list[np.ndarray], quiet: bool = False,
                    weight_bits: int = WEIGHT_BITS) -> QuantizationConfig:
    """Write INT8 versions of fp32_dir's graphs into out_dir (which holds a copy of fp32_dir)
    and update out_dir/model.json. Returns the quantization record stored there.
    weight_bits: 7 (weights in -64..64, exact on every x86 CPU) or 8 (-127..127). Progress:
    INFO records of this module's logger (DEBUG with quiet; exporter.progress)."""
    progress = logging.DEBUG if quiet else logging.INFO
    if weight_bits not in (7, 8):
        raise ValueError(f"weight_bits must be 7 or 8, got {weight_bits!r}")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    feeds = collect_feeds(fp32_dir, images)
    config = ModelDir.open(out_dir, verify_checksums=False).config
    fp32_layers: dict[str, list[str]] = {}
    graphs: dict[str, GraphFile] = {}
    for key in GRAPHS:
        if not feeds[key]:
            raise ValueError(f"the calibration images gave the {key} graph no input (no proposals or detections)")
        log.log(progress, "quantizing the %s graph on %d calibration inputs...", key, len(feeds[key]))
        target = out_dir / config.graphs[key].file
        source = out_dir / f"{key}.fp32-private-initializers.onnx"
        materialize_shared_initializers(fp32_dir / config.graphs[key].file, source)
        fp32_layers[key] = output_layers(source)
        quantize_static(
            str(source),
            str(target),
            _Reader(feeds[key]),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            nodes_to_exclude=fp32_layers[key],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=weight_bits == 7,  # weights only: activations keep 0..255
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibStridedMinMax": 1},
        )
        source.unlink()
        read_shapes_before_dequantize(target)
        graphs[key] = GraphFile(file=config.graphs[key].file, sha256=sha256_of(target))
    record = QuantizationConfig(
        precision="int8",
        format="QDQ, U8 activations, S8 per-channel weights",
        weight_bits=weight_bits,
        ops=tuple(QUANTIZED_OPS),
        fp32_layers=fp32_layers,
        calibration={"method": "MinMax", "images": len(images)},
    )
    config = config.replace(graphs=GraphFiles(**graphs), quantization=record)
    (out_dir / "model.json").write_text(json.dumps(config.to_json(), indent=2) + "\n")
    return record


def export_int8(model, output_dir, class_names, calibration_images: list[np.ndarray], *, overwrite=False, quiet=False,
                weight_bits: int = WEIGHT_BITS, **export_kwargs) -> Path:
    """Export `model` like `exporter.export`, then quantize its graphs to INT8 (weights in
    `weight_bits`: quantize_graphs), atomically."""
    import shutil
    import tempfile

    from .export import export

    output_dir = Path(output_dir)
    if output_dir.exists() and not overwrite:
        raise FileExistsError(f"{output_dir} already exists (pass overwrite=True / --force to replace it)")
    parent = output_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=parent))
    try:
        export_kwargs["name"] = export_kwargs.get("name") or output_dir.name
        fp32 = export(model, work / "fp32", class_names, quiet=quiet, **export_kwargs)
        staging = work / "int8"
        shutil.copytree(fp32, staging)
        quantize_graphs(fp32, staging, calibration_images, quiet=quiet, weight_bits=weight_bits)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.log(logging.DEBUG if quiet else logging.INFO, "INT8 model directory written: %s", output_dir)
    return output_dir

"""Build TensorRT plans from a model directory's ONNX graphs, on the GPU that will run them.

Needs tensorrt, cuda-python and numpy only (never torch), so it runs at container start in
the GPU image:

    build_plans(model_dir, "fp16")          dense.fp16.plan, box_head.fp16.plan, mask_head.fp16.plan
                                            + model.json "tensorrt" (see engine.model_directory.tensorrt_plans)
    writable_copy(read_only_dir, cache_dir) a directory whose graphs are symlinks to the
                                            read-only ones (SageMaker's /opt/ml/model), to
                                            hold the plans

Profiles cover every photo (see engine.model_directory.tensorrt_plans.profile_shapes); each plan holds
`slots` identical profiles so that `slots` requests can run at once (one execution context
per profile). Precision: fp32; fp16 (TensorRT 10's FP16 builder flag: FP16 kernels where
TensorRT finds them faster, FP32 I/O); int8 (TensorRT 10's entropy calibrator on the dense
graph, fed with the calibration photos through the engine's own preprocessing; the heads
stay FP16). TensorRT 11 removed those weakly-typed flags; there only fp32 builds here.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np

from engine import cuda_memory
from engine.model_directory.directory import ModelDir, sha256_of
from engine.model_directory.config import GRAPHS, TENSORRT_PRECISIONS as PRECISIONS, GraphFile, GraphFiles, TensorRTConfig
from engine.model_directory.tensorrt_plans import dense_range, incompatibility, merge_shape, profile_shapes


log = logging.getLogger(__name__)


class TensorRTBuildError(Exception):
    """The plans cannot be built; the message says why in one line."""


def environment_reason() -> str | None:
    """None when TensorRT and a CUDA device are both usable here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not installed (pip install 'maskrcnn-serve[gpu]', or use Dockerfile.gpu)"
    except Exception as exc:  # libnvinfer missing or broken
        return f"tensorrt cannot be imported ({exc})"
    return cuda_memory.device_reason()


def writable_copy(source, target) -> Path:
    """`target` as a model directory whose graphs (and any plans) are symlinks into the
    read-only `source` and whose model.json is a copy that can gain a "tensorrt" section.

    An existing `target` made from the same graphs (same sha256s) is kept with its plans;
    one made from other graphs (a new model was mounted) is replaced.
    """
    source, target = Path(source).resolve(), Path(target)
    src = ModelDir.open(source, verify_checksums=False)
    if (target / "model.json").is_file():
        try:
            old = json.loads((target / "model.json").read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old.get("graphs") == src.config.graphs.to_json():
            return target
        shutil.rmtree(target)
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name != "model.json" and not (target / item.name).exists():
            (target / item.name).symlink_to(item)
    shutil.copyfile(source / "model.json", target / "model.json")
    return target


def _up_to_date(model_dir: ModelDir, precision: str, trt_version: str, device: dict) -> bool:
    section = model_dir.tensorrt
    return (
        section is not None
        and section.precision == precision
        and incompatibility(section, trt_version, device) is None
    )


def _calibration_batches(model_dir: ModelDir, images_dir: Path, shape: tuple) -> list[np.ndarray]:
    """Calibration photos as dense-graph inputs of one fixed shape (the profile's opt shape,
    which TensorRT calibrates at): the engine's preprocessing, then zero-padded or cropped."""
    from engine.image_io import decode_image
    from engine.preprocess import preprocess

    t = model_dir.config.transform
    files = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise TensorRTBuildError(f"{images_dir} holds no .jpg/.jpeg/.png photos to calibrate with")
    batches = []
    for path in files:
        tensor = preprocess(decode_image(path.read_bytes()), t.image_mean, t.image_std, t.min_size,
                            t.max_size, t.size_divisible).tensor
        canvas = np.zeros(shape, np.float32)
        h, w = min(shape[2], tensor.shape[2]), min(shape[3], tensor.shape[3])
        canvas[:, :, :h, :w] = tensor[:, :, :h, :w]
        batches.append(canvas)
    return batches


def _calibrator(trt, batches: list[np.ndarray], cache: Path):
    """A TensorRT 10 IInt8EntropyCalibrator2 over `batches` (each one (1, 3, H, W) float32)."""

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._pending = list(batches)
            self._device = cuda_memory.DeviceBuffer(batches[0].nbytes)
            self._pinned = cuda_memory.PinnedBuffer(batches[0].nbytes)
            self._stream = cuda_memory.Stream()

        def get_batch_size(self):
            return 1

        def get_batch(self, names):
            if not self._pending:
                return None
            batch = self._pending.pop(0)
            np.copyto(self._pinned.array(batch.shape, np.float32), batch)
            cuda_memory.copy_to_device(self._device, self._pinned, batch.nbytes, self._stream)
            self._stream.synchronize()
            return [self._device.ptr]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data):
            cache.write_bytes(bytes(data))

    return Calibrator()


def build_plans(model_dir, precision: str = "fp16", calib_images=None, slots: int = 2,
                if_missing: bool = False, quiet: bool = False) -> TensorRTConfig:
    """Build the three plans into `model_dir` and record them in its model.json.

    Returns model.json's new "tensorrt" section. Raises TensorRTBuildError (one line) when
    TensorRT, the GPU, the precision or a graph says no. Progress: INFO records of this
    module's logger (DEBUG with quiet; exporter.progress).
    """
    progress = logging.DEBUG if quiet else logging.INFO
    if precision not in PRECISIONS:
        raise TensorRTBuildError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    if precision == "int8" and not calib_images:
        raise TensorRTBuildError("--tensorrt-int8-calibration needs --calib-images DIR (photos like the ones you will serve)")
    if slots < 1:
        raise TensorRTBuildError("need at least one profile per plan")
    reason = environment_reason()
    if reason:
        raise TensorRTBuildError(reason)
    import tensorrt as trt

    directory = ModelDir.open(model_dir)
    device = cuda_memory.device_info(0)
    if if_missing and _up_to_date(directory, precision, trt.__version__, device):
        log.log(progress, "TensorRT %s plans in %s are up to date for %s", precision, directory.path, device["name"])
        return directory.tensorrt
    if precision != "fp32" and not hasattr(trt.BuilderFlag, "FP16"):
        raise TensorRTBuildError(
            f"TensorRT {trt.__version__} builds strongly typed networks only (no FP16/INT8 builder flags); "
            "use TensorRT 10.x for --fp16/--tensorrt-int8-calibration, or --fp32")

    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    shapes = profile_shapes(directory.config)
    written: dict[str, GraphFile] = {}
    path = directory.path
    for step, graph in enumerate(GRAPHS, start=1):
        log.log(progress, "[%d/3] building the %s TensorRT plan (%s, %d profiles; minutes)...", step, graph, precision, slots)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(directory.graph_path(graph))):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise TensorRTBuildError(f"TensorRT cannot parse {directory.graph_path(graph).name}: {errors}")
        config = builder.create_builder_config()
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        elif hasattr(trt.BuilderFlag, "TF32"):
            # fp32 means FP32: TensorRT enables TF32 by default, which loses parity with the CPU
            config.clear_flag(trt.BuilderFlag.TF32)
        profiles = []
        for _ in range(slots):
            profile = builder.create_optimization_profile()
            for i in range(network.num_inputs):
                tensor = network.get_input(i)
                if tensor.name not in shapes[graph]:
                    raise TensorRTBuildError(f"{graph} graph input {tensor.name} has no profile (model.json mismatch?)")
                low, opt, high = (merge_shape(s, tensor.shape) for s in shapes[graph][tensor.name])
                profile.set_shape(tensor.name, low, opt, high)
            config.add_optimization_profile(profile)
            profiles.append(profile)
        calibrator = None
        if precision == "int8" and graph == "dense":
            config.set_flag(trt.BuilderFlag.INT8)
            opt = tuple(dense_range(directory.config.transform)[1])
            calibrator = _calibrator(trt, _calibration_batches(directory, Path(calib_images), opt),
                                     path / f".{graph}.int8.calibration")
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profiles[0])
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise TensorRTBuildError(f"TensorRT could not build the {graph} plan (its log above says why)")
        name = f"{graph}.{precision}.plan"
        staging = path / f".{name}.partial"
        staging.write_bytes(bytes(serialized))
        os.replace(staging, path / name)
        written[graph] = GraphFile(file=name, sha256=sha256_of(path / name))
        del calibrator

    section = TensorRTConfig(
        precision=precision,
        int8_graphs=("dense",) if precision == "int8" else (),
        tensorrt_version=trt.__version__,
        gpu_name=device["name"],
        compute_capability=device["compute_capability"],
        profiles_per_plan=slots,
        plans=GraphFiles(**written),
        profiles=shapes,
        built=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    old = directory.tensorrt
    meta = path / "model.json"
    staging = path / ".model.json.partial"
    staging.write_text(json.dumps(directory.config.replace(tensorrt=section).to_json(), indent=2) + "\n")
    os.replace(staging, meta)  # model.json changes at once or not at all
    for _, entry in old.plans.items() if old else ():  # plans of an earlier precision
        stale = path / entry.file
        if entry.file not in {w.file for w in written.values()} and stale.is_file():
            stale.unlink()
    log.log(progress, "TensorRT %s plans for %s written to %s", precision, device["name"], path)
    return section

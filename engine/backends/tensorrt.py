"""TensorRT plans (built on this GPU by `build_engine.py --tensorrt`) with CUDA buffers the
backend owns.

One request runs in a *slot*: per graph an IExecutionContext on its own optimization
profile, device buffers for every I/O tensor sized at that profile's maximum shapes (read
from the engine's own I/O metadata), pinned host buffers for what crosses to or from the
host, and a CUDA stream. Per request:

    images --pinned, async H2D--> dense plan --> feature maps stay in the slot's device buffers
                                             --> RPN outputs, async D2H --> numpy proposals
    rois   --async H2D--> box head plan, reading those same feature buffers --> D2H class_probs, box_deltas
    rois, class_ids --> mask head plan, same feature buffers --> D2H mask_probs

Only the RPN outputs and the heads' outputs come back to the host; everything on one
request's stream, synchronised once per graph before numpy reads the results. The slot is
taken in run_dense and given back in release(dense) (the engine calls it once the mask head
has run), so a concurrent request can never overwrite another's feature maps: requests
beyond the number of slots wait for one. The plans hold one identical profile per slot
(`profiles_per_plan` in model.json), because a profile serves one execution context at a
time.
"""

from __future__ import annotations

import logging
import queue
import threading

import numpy as np

from .. import cuda_memory as cm
from ..errors import BackendUnavailableError, EngineError, ModelDirError
from .base import GRAPHS, Backend, DenseOutputs, rpn_output_names
from .chunking import run_in_chunks

log = logging.getLogger(__name__)


class TensorRTError(EngineError, RuntimeError):
    """TensorRT refused a shape, a binding or an execution; the message says which."""


class _Plan:
    """One deserialized engine and its I/O tensors: names, modes and numpy dtypes."""

    def __init__(self, trt, runtime, path):
        self.path = path
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelDirError(f"{path} cannot be deserialized by TensorRT {trt.__version__} (see its log above)")
        self.inputs, self.outputs, self.dtypes = [], [], {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(name)
            self.dtypes[name] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
        self.num_profiles = self.engine.num_optimization_profiles

    def input_range(self, name: str, profile: int) -> tuple[tuple, tuple]:
        """(min, max) shape of an input under `profile`."""
        low, _, high = self.engine.get_tensor_profile_shape(name, profile)
        return tuple(low), tuple(high)


def _volume(shape) -> int:
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise TensorRTError(f"unresolved tensor shape {shape}")
    return int(np.prod(shape, dtype=np.int64))


class _Slot:
    """Contexts, buffers and a stream for one request at a time (see the module docstring)."""

    def __init__(self, plans: dict, profile: int, feature_names: list[str]):
        self.profile = profile
        self.stream = cm.Stream()
        self.in_use = False
        self.feature_shapes: dict[str, tuple] = {}
        self.device: dict[tuple, cm.DeviceBuffer] = {}
        self.host: dict[tuple, cm.PinnedBuffer] = {}
        self.contexts = {}
        for graph, plan in plans.items():
            context = plan.engine.create_execution_context()
            if context is None:
                raise TensorRTError(f"could not create an execution context for {plan.path} (out of GPU memory?)")
            if not context.set_optimization_profile_async(profile, self.stream.handle):
                raise TensorRTError(f"{plan.path} has no optimization profile {profile}")
            self.contexts[graph] = context
            # every input at its profile maximum, so the output shapes TensorRT reports are
            # the largest this slot will ever see: buffers are allocated once, here
            for name in plan.inputs:
                _, high = plan.input_range(name, profile)
                if not context.set_input_shape(name, high):
                    raise TensorRTError(f"{plan.path}: profile {profile} rejects {name} {high}")
            for name in plan.inputs + plan.outputs:
                nbytes = _volume(context.get_tensor_shape(name)) * plan.dtypes[name].itemsize
                if graph != "dense" and name in feature_names:
                    # the heads read the dense graph's feature buffers in place
                    shared = self.device[("dense", name)]
                    if nbytes > shared.nbytes or plan.dtypes[name] != plans["dense"].dtypes[name]:
                        raise ModelDirError(f"{plan.path}: input {name} does not fit the dense plan's output; "
                                            "rebuild all plans together")
                    self.device[(graph, name)] = shared
                else:
                    self.device[(graph, name)] = cm.DeviceBuffer(nbytes)
                    if name not in feature_names:  # features never cross to the host
                        self.host[(graph, name)] = cm.PinnedBuffer(nbytes)
                if not context.set_tensor_address(name, self.device[(graph, name)].ptr):
                    raise TensorRTError(f"{plan.path}: cannot bind {name}")

    def upload(self, graph: str, name: str, array: np.ndarray, dtype) -> None:
        """Stage `array` in the pinned buffer and queue its copy to the device buffer."""
        pinned = self.host[(graph, name)]
        staged = pinned.array(array.shape, dtype)
        np.copyto(staged, array, casting="same_kind")
        cm.copy_to_device(self.device[(graph, name)], pinned, staged.nbytes, self.stream)
        if not self.contexts[graph].set_input_shape(name, tuple(array.shape)):
            raise TensorRTError(f"{graph}: TensorRT rejects {name} of shape {tuple(array.shape)} (outside the plan's profile)")

    def execute(self, graph: str) -> None:
        if not self.contexts[graph].execute_async_v3(self.stream.handle):
            raise TensorRTError(f"TensorRT could not enqueue the {graph} plan (see its log)")

    def download(self, graph: str, name: str, dtype) -> np.ndarray:
        """Queue the copy of output `name` to its pinned buffer; returns the (not yet valid)
        pinned view: read it after stream.synchronize()."""
        shape = tuple(self.contexts[graph].get_tensor_shape(name))
        pinned = self.host[(graph, name)]
        view = pinned.array(shape, dtype)
        cm.copy_to_host(pinned, self.device[(graph, name)], view.nbytes, self.stream)
        return view

    def close(self) -> None:
        self.contexts.clear()  # contexts go before the buffers they point into
        seen = set()
        for buffer in list(self.device.values()) + list(self.host.values()):
            if id(buffer) not in seen:
                seen.add(id(buffer))
                buffer.close()
        self.device.clear()
        self.host.clear()
        self.stream.close()


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model_dir, threads: int | None = None):
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise BackendUnavailableError(f"tensorrt is not installed ({exc})") from None
        section = model_dir.tensorrt
        if section is None:
            raise BackendUnavailableError(f"{model_dir.path} has no TensorRT plans (build_engine.py --tensorrt)")
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")  # RoiAlign runs as a TensorRT plugin
        self._runtime = trt.Runtime(self._logger)
        self.plans = {g: _Plan(trt, self._runtime, model_dir.plan_path(g)) for g in GRAPHS}
        self.precision = section.precision
        self.feature_names = list(model_dir.config.features)
        dense = self.plans["dense"]
        self._rpn_logits, self._rpn_deltas = rpn_output_names(dense.outputs)
        num_slots = min(p.num_profiles for p in self.plans.values())
        self._slots = [_Slot(self.plans, k, self.feature_names) for k in range(num_slots)]
        self._free: queue.LifoQueue = queue.LifoQueue()  # LIFO: the most recently used slot is warmest
        for slot in self._slots:
            self._free.put(slot)
        self._lock = threading.Lock()
        self.row_limits = {
            graph: [self.plans[graph].input_range(f"rois_{j}", 0)[1][0] for j in range(len(getattr(model_dir.config, graph).scales))]
            for graph in ("box_head", "mask_head")
        }
        self._image_range = dense.input_range("images", 0)
        info = cm.device_info(0)
        log.info("TensorRT %s %s plans on %s, %d request slots", trt.__version__, self.precision, info["name"], num_slots)

    # -- slots -------------------------------------------------------------------------------

    def _acquire(self) -> _Slot:
        slot = self._free.get()  # waits while every slot serves a request
        slot.in_use = True
        return slot

    def release(self, dense: DenseOutputs) -> None:
        """Give the request's slot back (idempotent)."""
        slot = dense.features
        with self._lock:
            if not isinstance(slot, _Slot) or not slot.in_use:
                return
            slot.in_use = False
        self._free.put(slot)

    # -- graphs ------------------------------------------------------------------------------

    def run_dense(self, images: np.ndarray) -> DenseOutputs:
        """images (1, 3, H, W) float32 -> DenseOutputs whose `features` is this request's slot."""
        low, high = self._image_range
        if any(s < lo or s > hi for s, lo, hi in zip(images.shape, low, high)):
            raise ValueError(f"input {images.shape} is outside the TensorRT plan's range {low}..{high}")
        slot = self._acquire()
        try:
            plan = self.plans["dense"]
            slot.upload("dense", "images", images, plan.dtypes["images"])
            slot.execute("dense")
            logits = [slot.download("dense", n, plan.dtypes[n]) for n in self._rpn_logits]
            deltas = [slot.download("dense", n, plan.dtypes[n]) for n in self._rpn_deltas]
            context = slot.contexts["dense"]
            slot.feature_shapes = {n: tuple(context.get_tensor_shape(n)) for n in self.feature_names}
            slot.stream.synchronize()
            # copies: the pinned buffers are reused by this slot's next request
            return DenseOutputs(
                features=slot,
                rpn_logits=[np.array(v, np.float32) for v in logits],
                rpn_deltas=[np.array(v, np.float32) for v in deltas],
            )
        except BaseException:
            slot.in_use = False
            self._free.put(slot)
            raise

    def _run_head(self, slot: _Slot, graph: str, rois: list[np.ndarray], class_ids) -> tuple:
        if not isinstance(slot, _Slot) or not slot.in_use:
            raise ValueError("head graphs need the DenseOutputs.features of an unreleased run_dense")
        plan = self.plans[graph]
        context = slot.contexts[graph]
        for name in plan.inputs:
            if name in slot.feature_shapes:  # the feature buffers are already on the device
                if not context.set_input_shape(name, slot.feature_shapes[name]):
                    raise TensorRTError(f"{graph}: profile rejects {name} {slot.feature_shapes[name]}")
        for j, r in enumerate(rois):
            slot.upload(graph, f"rois_{j}", np.ascontiguousarray(r), plan.dtypes[f"rois_{j}"])
        if class_ids is not None:
            slot.upload(graph, "class_ids", np.ascontiguousarray(class_ids), plan.dtypes["class_ids"])
        slot.execute(graph)
        views = [slot.download(graph, n, plan.dtypes[n]) for n in plan.outputs]
        slot.stream.synchronize()
        # copies out of the pinned buffers, which the next pass or request reuses
        return {n: np.array(v, np.float32) for n, v in zip(plan.outputs, views)}

    def run_box_head(self, features, rois: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """rois: per pooled level (Rj, 4) float32 -> class_probs (R, C), box_deltas (R, 4C)."""

        def run(chunk, _):
            out = self._run_head(features, "box_head", chunk, None)
            return out["class_probs"], out["box_deltas"]

        return run_in_chunks(rois, self.row_limits["box_head"], run)

    def run_mask_head(self, features, rois: list[np.ndarray], class_ids: np.ndarray) -> np.ndarray:
        """rois per level + class_ids (R,) int64 in level order -> mask_probs (R, M, M)."""

        def run(chunk, ids):
            return (self._run_head(features, "mask_head", chunk, ids)["mask_probs"],)

        (probs,) = run_in_chunks(rois, self.row_limits["mask_head"], run, class_ids.astype(np.int64))
        return probs

    def close(self) -> None:
        """Free every slot's CUDA memory (the backend is unusable afterwards)."""
        for slot in self._slots:
            slot.close()
        self._slots.clear()

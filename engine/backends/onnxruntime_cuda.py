"""ONNX Runtime's CUDAExecutionProvider on the model directory's ONNX graphs (onnxruntime-gpu).

The fallback GPU path when no TensorRT plan was built for this GPU. IOBinding keeps the
feature maps on the device: the dense graph's feature outputs are bound to CUDA memory
(OrtValues that ONNX Runtime allocates and frees), and the head graphs take those same
OrtValues as inputs. Only the image and the RoIs go up, and only the RPN outputs and the
heads' outputs come down (bound to CPU memory, so ONNX Runtime copies them after the run).

Each request has its own IOBindings and its own feature OrtValues, and ONNX Runtime
sessions may run concurrently, so concurrent requests share nothing mutable.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import ModelDirError
from .base import GRAPHS, Backend, DenseOutputs, default_threads, rpn_output_names
from .onnxruntime_common import dense_outputs

log = logging.getLogger(__name__)


class OnnxRuntimeCudaBackend(Backend):
    name = "onnxruntime-cuda"
    # Where the feature OrtValues live, and the provider that must run the graphs. The CPU
    # tests subclass with ("cpu", "CPUExecutionProvider") to exercise the IOBinding flow.
    device_type = "cuda"
    provider = "CUDAExecutionProvider"

    def __init__(self, model_dir, threads: int | None = None, device_id: int = 0, tf32: bool = False):
        import onnxruntime as ort

        self._ort = ort
        self.device_id = device_id
        self.threads = threads or default_threads()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads  # only for nodes that fall back to the CPU
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.precision = "tf32" if tf32 else "fp32"
        providers = self._providers(device_id, tf32)
        self.sessions = {}
        for key in GRAPHS:
            path = model_dir.graph_path(key)
            try:
                self.sessions[key] = ort.InferenceSession(str(path), options, providers=providers)
            except Exception as exc:
                raise ModelDirError(f"{path} cannot be loaded by ONNX Runtime (CUDA): {exc}") from None
            if self.provider not in self.sessions[key].get_providers():
                # ORT falls back to the CPU silently when the CUDA libraries do not load
                raise ModelDirError(f"ONNX Runtime could not start the CUDA provider for {path.name} (see its log)")
        self.feature_names = list(model_dir.config.features)
        self._rpn_logits, self._rpn_deltas = rpn_output_names(o.name for o in self.sessions["dense"].get_outputs())
        self._head_inputs = {k: {i.name for i in self.sessions[k].get_inputs()} for k in ("box_head", "mask_head")}
        log.info("onnxruntime %s with CUDA on device %d", ort.__version__, device_id)

    def _providers(self, device_id: int, tf32: bool) -> list:
        cuda_options = {
            "device_id": device_id,
            # Photos come in many sizes: an exhaustive cuDNN search would run again for every
            # new input shape (seconds each); the heuristic choice is immediate.
            "cudnn_conv_algo_search": "HEURISTIC",
            # FP32 means FP32: TF32 convolutions (Ampere and later) would move boxes past the
            # parity tests' tolerances. tf32=True (serve: MASKRCNN_CUDA_TF32=1) trades that for speed.
            "use_tf32": 1 if tf32 else 0,
        }
        return [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"]

    def run_dense(self, images: np.ndarray) -> DenseOutputs:
        """images (1, 3, H, W) float32 -> feature OrtValues on the GPU, RPN outputs as numpy."""
        binding = self.sessions["dense"].io_binding()
        binding.bind_cpu_input("images", np.ascontiguousarray(images, np.float32))
        for name in self.feature_names:
            binding.bind_output(name, self.device_type, self.device_id)
        for name in self._rpn_logits + self._rpn_deltas:
            binding.bind_output(name, "cpu")
        self.sessions["dense"].run_with_iobinding(binding)
        binding.synchronize_outputs()
        return dense_outputs(binding.get_outputs(), len(self.feature_names), len(self._rpn_logits))

    def release(self, dense: DenseOutputs) -> None:
        """Nothing to hand back: ONNX Runtime frees the feature OrtValues with the DenseOutputs."""

    def _run_head(self, key: str, features, rois, extra: dict, outputs: list[str]) -> list[np.ndarray]:
        binding = self.sessions[key].io_binding()
        wanted = self._head_inputs[key]
        for name, value in zip(self.feature_names, features):
            if name in wanted:
                binding.bind_ortvalue_input(name, value)  # already on the GPU
        for j, r in enumerate(rois):
            binding.bind_cpu_input(f"rois_{j}", np.ascontiguousarray(r, np.float32))
        for name, value in extra.items():
            binding.bind_cpu_input(name, value)
        for name in outputs:
            binding.bind_output(name, "cpu")
        self.sessions[key].run_with_iobinding(binding)
        return [v.numpy() for v in binding.get_outputs()]

    def run_box_head(self, features, rois: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """rois: per pooled level (Rj, 4) float32 -> class_probs (R, C), box_deltas (R, 4C)."""
        probs, deltas = self._run_head("box_head", features, rois, {}, ["class_probs", "box_deltas"])
        return probs, deltas

    def run_mask_head(self, features, rois: list[np.ndarray], class_ids: np.ndarray) -> np.ndarray:
        """rois per level + class_ids (R,) int64 in level order -> mask_probs (R, M, M)."""
        extra = {"class_ids": np.ascontiguousarray(class_ids, np.int64)}
        (probs,) = self._run_head("mask_head", features, rois, extra, ["mask_probs"])
        return probs

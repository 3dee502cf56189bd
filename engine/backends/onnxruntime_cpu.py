"""ONNX Runtime on the CPU.

Feature maps stay in ONNX Runtime's memory as OrtValues between the dense graph and the
head graphs, so they are never converted or copied through numpy; only the RPN outputs and
the heads' small outputs come back as arrays.
"""

from __future__ import annotations

import logging

import numpy as np

from .. import int8_arithmetic
from .base import GRAPHS, Backend, DenseOutputs, default_threads, rpn_output_names
from .chunking import run_in_row_passes
from .onnxruntime_common import CPU_MASK_HEAD_ROWS_PER_RUN, cpu_session, dense_outputs

log = logging.getLogger(__name__)


class OnnxRuntimeCpuBackend(Backend):
    name = "onnxruntime-cpu"
    MASK_HEAD_ROWS_PER_RUN = CPU_MASK_HEAD_ROWS_PER_RUN  # why: onnxruntime_common

    def __init__(self, model_dir, threads: int | None = None):
        import onnxruntime as ort

        self._ort = ort
        self.threads = threads or default_threads()
        self.sessions = {key: cpu_session(model_dir.graph_path(key), self.threads) for key in GRAPHS}
        self.precision = "fp32+int8" if model_dir.config.quantization is not None else "fp32"
        self.feature_names = list(model_dir.config.features)
        self._rpn_logits, self._rpn_deltas = rpn_output_names(o.name for o in self.sessions["dense"].get_outputs())
        self._dense_outputs = self.feature_names + self._rpn_logits + self._rpn_deltas
        log.info("onnxruntime %s on the CPU with %d threads", ort.__version__, self.threads)
        if int8_arithmetic.eight_bit_wrong_here(model_dir.config.quantization, "onnxruntime"):
            # ONNX Runtime cannot have its weights rewritten without the onnx package (the
            # openvino backend requantizes them at load): say so rather than serve wrong numbers quietly
            log.warning("INT8 products saturate on this CPU (no VNNI) and %s has 8-bit weights: ONNX Runtime's "
                        "results are not the model's here; use --backend openvino, or rebuild with "
                        "build_engine.py --int8 (7-bit weights)", model_dir.path)

    def _value(self, array: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))

    def run_dense(self, images: np.ndarray) -> DenseOutputs:
        outputs = self.sessions["dense"].run_with_ort_values(self._dense_outputs, {"images": self._value(images)})
        return dense_outputs(outputs, len(self.feature_names), len(self._rpn_logits))

    def release(self, dense: DenseOutputs) -> None:
        """Nothing to hand back: the OrtValues are freed with the DenseOutputs."""

    def _head_feed(self, features, rois) -> dict:
        feed = dict(zip(self.feature_names, features))
        feed.update({f"rois_{j}": self._value(r) for j, r in enumerate(rois)})
        return feed

    def run_box_head(self, features, rois: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """rois: per pooled level (Rj, 4) float32 -> class_probs (R, C), box_deltas (R, 4C)."""
        probs, deltas = self.sessions["box_head"].run_with_ort_values(
            ["class_probs", "box_deltas"], self._head_feed(features, rois)
        )
        return probs.numpy(), deltas.numpy()

    def run_mask_head(self, features, rois: list[np.ndarray], class_ids: np.ndarray) -> np.ndarray:
        """rois per level + class_ids (R,) int64 in level order -> mask_probs (R, M, M)."""
        def run(chunk, ids):
            feed = self._head_feed(features, chunk)
            feed["class_ids"] = self._value(ids)
            (probs,) = self.sessions["mask_head"].run_with_ort_values(["mask_probs"], feed)
            return (probs.numpy(),)

        (probs,) = run_in_row_passes(rois, self.MASK_HEAD_ROWS_PER_RUN, run, class_ids.astype(np.int64))
        return probs

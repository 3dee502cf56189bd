"""What the backends that run graphs on ONNX Runtime share: the CPU session set-up (for
onnxruntime-cpu, and openvino's heads under pooling="graph"), the dense graph's outputs as a
DenseOutputs (onnxruntime-cpu, onnxruntime-cuda), and the bound on a CPU mask-head run.
"""

from __future__ import annotations

from ..errors import ModelDirError
from .base import DenseOutputs

# The mask head runs on at most this many detections at a time on the CPU backends. ONNX
# Runtime's arena keeps the largest activations it has ever needed, megabytes per RoI for
# R50, so max_detections=1000 in one run grew the process by gigabytes for good; in passes the
# arena is bounded by this many rows, reached at warm-up (engine.engine.WARMUP_DETECTIONS).
# Not fewer: smaller passes were slower on R50 (the convolutions are faster on larger
# batches). OpenVINO's memory is bounded the same way.
CPU_MASK_HEAD_ROWS_PER_RUN = 100


def dense_outputs(values: list, num_features: int, num_levels: int) -> DenseOutputs:
    """ONNX Runtime's dense outputs in the order features, rpn_logits, rpn_deltas: the
    feature OrtValues stay where they are, the RPN outputs become numpy arrays."""
    n, r = num_features, num_levels
    return DenseOutputs(
        features=values[:n],
        rpn_logits=[v.numpy() for v in values[n : n + r]],
        rpn_deltas=[v.numpy() for v in values[n + r :]],
    )


def cpu_session(path, threads: int):
    """An ONNX Runtime CPU session for one graph, set up for serving (ModelDirError if the
    file cannot be loaded)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle ORT threads would otherwise spin on the cores after each graph, slowing the
    # numpy stages between graphs and the rendering after predict (both faster without it;
    # benchmarks/results/FIGURES.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ONNX Runtime's memory pattern plans one block per input shape from the second run
    # on, allocated beside the arena chunks the first run left: R50's steady RSS grew
    # markedly with it, at the same speed, so it is off (the arena still reuses buffers).
    options.enable_mem_pattern = False
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise ModelDirError(f"{path} cannot be loaded by ONNX Runtime: {exc}") from None

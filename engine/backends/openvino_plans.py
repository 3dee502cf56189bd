"""The openvino backend's plans: which runtime runs each graph, at what precision.

A plan is {graph: (runtime, precision)} over GRAPHS, runtime one of RUNTIMES, precision one of
engine.backends.PRECISIONS (ONNX Runtime runs FP32 only). `plan_for` picks the table for a
model directory and pooling; `check_plan` says what is wrong with a plan given by hand (for
measuring other configurations: benchmarks/graph_runtimes.py, benchmarks/backend_accuracy.py).
"""

from __future__ import annotations

from . import PRECISIONS
from .base import GRAPHS

RUNTIMES = ("openvino", "onnxruntime")  # what each graph may run on (ONNX Runtime: FP32 only)
POOLINGS = ("native", "graph")  # engine.roi_align, or the head graphs' own RoiAlign

# Which runtime runs each graph, and at what precision, for each precision asked for: the
# fastest that meets the BF16 accuracy criteria (benchmarks/backend_accuracy.py), by
# measurement (benchmarks/graph_runtimes.py and benchmarks/backend_accuracy.py; the figures
# behind each choice below are in benchmarks/results/FIGURES.md).
#
# With the native RoIAlign (pooling="native", wherever the package was built with a C
# compiler) every graph runs on OpenVINO, the heads cut after their RoiAlign (ONNX Runtime
# cannot run a cut graph without the onnx package at serving time): the box head ran faster
# there than ONNX Runtime's whole box head, both heads faster in BF16 than in FP32, the
# native pooling a small part of each. Under bf16 every graph runs BF16: with the pooling
# in FP32 the demo model (held-out scenes, against ONNX Runtime FP32) stays within the
# accuracy criteria. (With the graphs' own RoiAlign, OpenVINO ran it in BF16 too, RoI
# coordinates included, and mask AP fell past them: GRAPH_POOLING_PLANS keeps the heads
# FP32.)
PLANS = {precision: {graph: ("openvino", precision) for graph in GRAPHS} for precision in PRECISIONS}
# INT8 model directories: every graph on OpenVINO, FP32 between the INT8 layers by default
# (engine.backends.default_precision); the box head's fc6 in INT8 is most of its time.
QUANTIZED_PLANS = PLANS

# Without the native RoIAlign (pooling="graph"), as measured on a Xeon with AMX:
# - fp32: the dense graph is faster on OpenVINO, the box head on ONNX Runtime (its RoiAlign
#   is the faster one for the RPN's proposals), the mask head the same within noise on both.
# - bf16: only the dense graph runs BF16 (far faster than at FP32 for R50, within the
#   accuracy criteria). The heads' RoiAlign in BF16 cost mask AP past them and the box
#   head ran slower on OpenVINO, so they stay FP32 on ONNX Runtime.
GRAPH_POOLING_PLANS = {
    "fp32": {"dense": ("openvino", "fp32"), "box_head": ("onnxruntime", "fp32"), "mask_head": ("onnxruntime", "fp32")},
    "bf16": {"dense": ("openvino", "bf16"), "box_head": ("onnxruntime", "fp32"), "mask_head": ("onnxruntime", "fp32")},
}
# INT8 directories, same Xeon: OpenVINO runs the quantized dense graph and the mask head
# faster than ONNX Runtime; the box head is RoiAlign-bound (float in both) and stays on ONNX
# Runtime.
GRAPH_POOLING_QUANTIZED_PLANS = {
    precision: {"dense": ("openvino", precision), "box_head": ("onnxruntime", "fp32"), "mask_head": ("openvino", precision)}
    for precision in PRECISIONS
}


def plan_for(precision: str, quantized: bool, pooling: str) -> dict[str, tuple[str, str]]:
    """The plan for `precision` ("fp32" or "bf16") on an INT8 (`quantized`) or float model
    directory, with the heads pooled natively (`pooling` "native") or by their graphs ("graph")."""
    if pooling == "native":
        return dict((QUANTIZED_PLANS if quantized else PLANS)[precision])
    return dict((GRAPH_POOLING_QUANTIZED_PLANS if quantized else GRAPH_POOLING_PLANS)[precision])


def check_plan(plan: dict[str, tuple[str, str]], pooling: str) -> None:
    """ValueError naming what is wrong with `plan` under `pooling`: an unknown graph, runtime
    or precision; ONNX Runtime at another precision than FP32; the dense graph elsewhere than
    OpenVINO; or, under native pooling, a head on ONNX Runtime (ONNX Runtime cannot run a head
    cut at its pooled input without the onnx package at serving time)."""
    for graph, (runtime, graph_precision) in plan.items():
        if graph not in GRAPHS or runtime not in RUNTIMES or graph_precision not in PRECISIONS or (
                runtime == "onnxruntime" and graph_precision != "fp32"):
            raise ValueError(f"plan: {graph}=({runtime!r}, {graph_precision!r}); graphs are {', '.join(GRAPHS)}, "
                             f"runtimes {', '.join(RUNTIMES)} and precisions {', '.join(PRECISIONS)} "
                             "(onnxruntime: fp32)")
    if plan["dense"][0] != "openvino":
        raise ValueError("plan: the dense graph runs on openvino here (backend onnxruntime-cpu runs it on ONNX Runtime)")
    if pooling == "native" and any(runtime != "openvino" for runtime, _ in plan.values()):
        raise ValueError("plan: under pooling native every graph runs on openvino (the heads are cut at their "
                         "pooled input; ONNX Runtime runs the uncut graphs: pooling graph)")

"""Inference backends: each runs the three graphs of a model directory.

A backend has `name`, `run_dense(images) -> DenseOutputs`,
`run_box_head(features, rois) -> (class_probs, box_deltas)` and
`run_mask_head(features, rois, class_ids) -> mask_probs`; see `onnxruntime_cpu`.
"""

from __future__ import annotations

from ..errors import BackendUnavailableError

BACKENDS = ("onnxruntime-cpu",)


def available_backends() -> dict[str, str | None]:
    """Each backend name -> None if it can run here, else the reason it cannot."""
    status: dict[str, str | None] = {}
    try:
        import onnxruntime  # noqa: F401

        status["onnxruntime-cpu"] = None
    except ImportError as exc:
        status["onnxruntime-cpu"] = f"onnxruntime is not installed ({exc})"
    return status


def create_backend(name: str, model_dir, threads: int | None = None):
    """The backend `name` ("auto" picks the best available) for a checked ModelDir."""
    status = available_backends()
    if name == "auto":
        name = next((b for b in BACKENDS if status.get(b) is None), None)
        if name is None:
            raise BackendUnavailableError("no inference backend can run here: " + "; ".join(f"{k}: {v}" for k, v in status.items()))
    if name not in status:
        raise BackendUnavailableError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
    if status[name] is not None:
        raise BackendUnavailableError(f"backend {name} is unavailable: {status[name]}")
    from .onnxruntime_cpu import OnnxRuntimeCpuBackend

    return OnnxRuntimeCpuBackend(model_dir, threads=threads)

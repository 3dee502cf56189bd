"""Offline export of torchvision Mask R-CNN models to engine model directories (needs torch).

`exporter.tensorrt_build` (TensorRT plans from an existing model directory) needs only
tensorrt and numpy, so this package also imports where torch is absent (the GPU image):
then `export` is simply missing.
"""

from engine.model_directory.config import MODEL_FORMAT
from engine.model_directory.directory import sha256_of

try:
    from .export import FORBIDDEN_OPS, export
except ModuleNotFoundError as exc:  # only a missing export toolchain is tolerated
    if exc.name not in ("torch", "torchvision", "onnx"):
        raise

__all__ = ["export", "sha256_of", "FORBIDDEN_OPS", "MODEL_FORMAT"]

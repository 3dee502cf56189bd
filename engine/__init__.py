"""Mask R-CNN inference without torch: ONNX graphs for the network, numpy/OpenCV for the rest."""

from .detections import Detections
from .engine import Engine
from .errors import BackendUnavailableError, EngineError, ImageDecodeError, ModelDirError

try:  # image_io arrives with the server work; keep the core importable without it
    from .image_io import ImageInfo, decode_image, probe_image
except ImportError:  # pragma: no cover
    pass

__all__ = [
    "Engine",
    "Detections",
    "decode_image",
    "probe_image",
    "ImageInfo",
    "EngineError",
    "ImageDecodeError",
    "ModelDirError",
    "BackendUnavailableError",
]

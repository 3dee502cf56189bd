"""Mask R-CNN inference without torch: ONNX graphs for the network, numpy/OpenCV for the rest."""

from .backends.base import default_threads
from .detections import Detections
from .engine import Engine
from .errors import BackendUnavailableError, EngineError, ImageDecodeError, ModelDirError
from .image_io import ImageInfo, decode_image, probe_image
from .model_directory.config import ModelConfig

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
    "ModelConfig",
    "default_threads",
]

"""Offline export of torchvision Mask R-CNN models to engine model directories (needs torch)."""

from engine.model_dir import MODEL_FORMAT, sha256_of

from .export import FORBIDDEN_OPS, export

__all__ = ["export", "sha256_of", "FORBIDDEN_OPS", "MODEL_FORMAT"]

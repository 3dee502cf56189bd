"""Offline export of torchvision Mask R-CNN models to engine model directories (needs torch)."""

from .export import FORBIDDEN_OPS, MODEL_FORMAT, export, sha256_of

__all__ = ["export", "sha256_of", "FORBIDDEN_OPS", "MODEL_FORMAT"]

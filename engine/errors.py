"""Errors the engine raises on purpose, each naming what was wrong."""


class EngineError(Exception):
    """Base class of the engine's own errors."""


class ImageDecodeError(EngineError, ValueError):
    """The bytes are not a decodable JPEG or PNG image."""


class ModelDirError(EngineError):
    """The model directory is missing, incomplete or corrupt; the message names the file."""


class BackendUnavailableError(EngineError):
    """The requested inference backend cannot run on this machine; the message says why."""

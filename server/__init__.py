"""The HTTP face of the engine: the Amazon SageMaker hosting contract on Falcon + waitress."""

from .app import EngineSlot, create_app
from .config import ServerConfig

__all__ = ["EngineSlot", "ServerConfig", "create_app"]

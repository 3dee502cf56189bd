"""The HTTP face of the engine: the Amazon SageMaker hosting contract on Falcon + waitress."""

from .app import create_app
from .models import EngineSlot, ModelRegistry
from .config import ServerConfig

__all__ = ["EngineSlot", "ModelRegistry", "ServerConfig", "create_app"]

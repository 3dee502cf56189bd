"""Reading and checking a model directory written by build_engine.py.

A model directory holds model.json (parsed and checked by engine.model_directory.config) and
the files it names: three ONNX graphs, and TensorRT plans once `build_engine.py --tensorrt` has
run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelDirError
from .config import MODEL_FORMAT, GraphFile, ModelConfig, TensorRTConfig
from .defaults import model_dir_not_found

__all__ = ["ModelDir", "sha256_of"]


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelDir:
    """A checked model directory: model.json parsed into a ModelConfig, every file it names present and intact."""

    path: Path
    config: ModelConfig

    @property
    def name(self) -> str:
        return self.config.name or self.path.name

    @property
    def class_names(self) -> list[str]:
        return list(self.config.class_names)

    @property
    def untrained(self) -> bool:
        return not self.config.trained

    def graph_path(self, key: str) -> Path:
        return self.path / self.config.graphs[key].file

    @property
    def tensorrt(self) -> TensorRTConfig | None:
        """model.json's "tensorrt" section (see engine.model_directory.tensorrt_plans), or None without plans."""
        return self.config.tensorrt

    def plan_path(self, key: str) -> Path:
        return self.path / self.config.tensorrt.plans[key].file

    @classmethod
    def open(cls, path, verify_checksums: bool = True) -> ModelDir:
        """Parse and check `path`/model.json, and check the files it lists (sha256 too, unless
        verify_checksums is False). Raises ModelDirError naming the file and, for model.json, the key."""
        path = Path(path)
        if not path.is_dir():
            raise ModelDirError(model_dir_not_found(path))
        meta = path / "model.json"
        try:
            data = json.loads(meta.read_text())
        except FileNotFoundError:
            raise ModelDirError(f"{meta} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelDirError(f"{meta} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
            raise ModelDirError(f"{meta} is not a {MODEL_FORMAT} model description")
        config = ModelConfig.from_json(data, meta)
        for _, entry in config.graphs.items():
            _check_file(path, entry, verify_checksums, "")
        if config.tensorrt is not None:  # plans built by `build_engine.py --tensorrt` on a GPU
            for _, entry in config.tensorrt.plans.items():
                _check_file(path, entry, verify_checksums, " (model.json lists it under tensorrt.plans)")
        return cls(path=path, config=config)


def _check_file(directory: Path, entry: GraphFile, verify_checksums: bool, listed: str) -> None:
    file = directory / entry.file
    if not file.is_file():
        raise ModelDirError(f"{file} is missing{listed}")
    if verify_checksums and entry.sha256 and sha256_of(file) != entry.sha256:
        raise ModelDirError(f"{file} is corrupt (sha256 differs from model.json)")

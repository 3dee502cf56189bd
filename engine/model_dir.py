"""Reading and checking a model directory written by build_engine.py."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelDirError
from .masks import PASTE_MODES
from .model_defaults import model_dir_not_found
from .tensorrt_plans import validate_section

MODEL_FORMAT = "maskrcnn-serve/1"
GRAPHS = ("dense", "box_head", "mask_head")
_REQUIRED = {
    "class_names": list,
    "transform": dict,
    "rpn": dict,
    "box_head": dict,
    "mask_head": dict,
    "features": list,
    "graphs": dict,
}


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelDir:
    """A checked model directory: model.json parsed, every graph present and intact."""

    path: Path
    config: dict

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.name)

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def untrained(self) -> bool:
        return not self.config.get("weights", {}).get("trained", True)

    def graph_path(self, key: str) -> Path:
        return self.path / self.config["graphs"][key]["file"]

    @property
    def tensorrt(self) -> dict | None:
        """model.json's "tensorrt" section (see engine.tensorrt_plans), or None without plans."""
        return self.config.get("tensorrt")

    def plan_path(self, key: str) -> Path:
        return self.path / self.config["tensorrt"]["plans"][key]["file"]

    @classmethod
    def open(cls, path, verify_checksums: bool = True) -> "ModelDir":
        path = Path(path)
        if not path.is_dir():
            raise ModelDirError(model_dir_not_found(path))
        meta = path / "model.json"
        try:
            config = json.loads(meta.read_text())
        except FileNotFoundError:
            raise ModelDirError(f"{meta} is missing") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelDirError(f"{meta} is not valid JSON: {exc}") from None
        if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
            raise ModelDirError(f"{meta} is not a {MODEL_FORMAT} model description")
        for key, kind in _REQUIRED.items():
            if not isinstance(config.get(key), kind):
                raise ModelDirError(f"{meta}: missing or malformed {key!r}")
        paste = config["mask_head"].get("paste", PASTE_MODES[0])
        if paste not in PASTE_MODES:
            raise ModelDirError(f"{meta}: mask_head.paste must be one of {PASTE_MODES}, not {paste!r}")
        for key in GRAPHS:
            entry = config["graphs"].get(key)
            if not isinstance(entry, dict) or "file" not in entry:
                raise ModelDirError(f"{meta}: no entry for the {key} graph")
            graph = path / entry["file"]
            if not graph.is_file():
                raise ModelDirError(f"{graph} is missing")
            if verify_checksums and entry.get("sha256") and sha256_of(graph) != entry["sha256"]:
                raise ModelDirError(f"{graph} is corrupt (sha256 differs from model.json)")
        if "tensorrt" in config:  # plans built by `build_engine.py --tensorrt` on a GPU
            validate_section(config["tensorrt"], meta)
            for entry in config["tensorrt"]["plans"].values():
                plan = path / entry["file"]
                if not plan.is_file():
                    raise ModelDirError(f"{plan} is missing (model.json lists it under tensorrt.plans)")
                if verify_checksums and entry.get("sha256") and sha256_of(plan) != entry["sha256"]:
                    raise ModelDirError(f"{plan} is corrupt (sha256 differs from model.json)")
        return cls(path=path, config=config)

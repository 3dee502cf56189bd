"""Checkpoint files as users save them -> a torchvision Mask R-CNN state_dict (or, only when
trusted, a whole pickled model).

    read_checkpoint(path, weights_key=None, trust_pickle=False) -> Checkpoint

Layouts: a plain state_dict; a training checkpoint that nests it under "model",
"state_dict" or "model_state_dict" (torchvision's references/detection/train.py saves
{"model", "optimizer", "lr_scheduler", "args": argparse.Namespace, "epoch"}; Lightning
{"state_dict": {"model.…": …}, …}), or under any key `weights_key` names ("model_ema");
keys behind a wrapper's prefix ("module." from DataParallel/DDP, "_orig_mod." from
torch.compile, Lightning's "model.", or several); `.safetensors` files.

Loading is safe by default: torch.load(weights_only=True), where the harmless types that
training checkpoints carry (argparse.Namespace, paths, numpy scalars) are allowed and any
other pickled class is replaced by an inert placeholder, never constructed. A whole pickled
model (`torch.save(model)`) is therefore recognised without running it; it loads only with
trust_pickle, which runs whatever code the file names.
"""

from __future__ import annotations

import argparse
import pathlib
from dataclasses import dataclass
from pathlib import Path

import torch

# The state_dict keys every torchvision MaskRCNN has: where they sit tells the wrapper prefix.
MARKER_KEY = "rpn.head.cls_logits.weight"
NESTED_KEYS = ("model", "state_dict", "model_state_dict")  # tried in this order

# Pickled globals that hold data only, as training checkpoints carry them beside the weights.
HARMLESS_TYPES = {
    "argparse.Namespace": argparse.Namespace,
    "pathlib.Path": pathlib.Path,
    "pathlib.PosixPath": pathlib.PosixPath,
    "pathlib.PurePosixPath": pathlib.PurePosixPath,
    "pathlib.WindowsPath": pathlib.PureWindowsPath,  # loads as a pure path on any OS
    "pathlib.PureWindowsPath": pathlib.PureWindowsPath,
}


class CheckpointError(ValueError):
    """The file cannot give a state_dict; the message says what it holds and what to do."""


class Unloaded:
    """Stands in for a pickled object of a class the safe loader does not construct; keeps
    what the pickle gave it (`args`, `state`) as inert data. `pickled_class` names the class."""

    pickled_class = "?"

    def __new__(cls, *args, **kwargs):
        instance = object.__new__(cls)
        instance.args = args
        return instance

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __call__(self, *args, **kwargs):  # a pickled function or factory: its result is inert too
        return self


@dataclass
class Checkpoint:
    """What a checkpoint file gave: `state_dict` (name -> tensor, wrapper prefixes removed) or,
    with trust_pickle only, `model` (the unpickled torch.nn.Module). `layout` says in words
    how the weights were found, for the export log and model.json."""

    state_dict: dict | None
    model: torch.nn.Module | None
    layout: str


def _placeholder(name: str) -> type:
    module, _, qualname = name.rpartition(".")
    return type(qualname or name, (Unloaded,), {"pickled_class": name, "__module__": module or "unloaded"})


def _safe_load(path: Path):
    """torch.load(weights_only=True) with HARMLESS_TYPES allowed and placeholders for the
    rest (zip-format checkpoints list their globals; older ones load as they are)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not the zip format (torch < 1.6 files): the plain safe load says why
        names = []
    allowed = [(HARMLESS_TYPES[name], name) if name in HARMLESS_TYPES else (_placeholder(name), name)
               for name in names]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _describe(value) -> str:
    if isinstance(value, Unloaded):
        return value.pickled_class
    if isinstance(value, dict):
        return f"dict with keys {', '.join(map(str, list(value)[:8]))}{', ...' if len(value) > 8 else ''}"
    return type(value).__name__


def _whole_model_error(path: Path, value) -> CheckpointError:
    return CheckpointError(
        f"{path} holds a whole pickled model ({_describe(value)}, saved with torch.save(model)); loading it "
        f"runs code named in the file. If you trust the file, pass --trust-pickle; or save model.state_dict() "
        f"and pass that file instead")


def _strip_prefix(state: dict, path: Path, weights_key: str | None, marker: str = MARKER_KEY) -> tuple[dict, str]:
    """Keys behind a wrapper prefix ("module.", "_orig_mod.", "model.", or several), found
    where the model's own `marker` key sits; other keys (a Lightning module's losses) are
    dropped with the prefix. Several models in one dict (an EMA copy): `weights_key` picks."""
    prefixes = sorted({k[: -len(marker)] for k in state if k.endswith(marker)})
    if weights_key is not None:
        wanted = weights_key if weights_key.endswith(".") else weights_key + "."
        prefixes = [p for p in prefixes if p == wanted] or [p for p in prefixes if p.endswith(wanted)]
        if not prefixes:
            raise CheckpointError(f"{path}: no weights under the key or prefix {weights_key!r}")
    if len(prefixes) != 1:
        if "" in prefixes:
            prefixes = [""]
        elif prefixes:
            raise CheckpointError(f"{path} holds {len(prefixes)} models (key prefixes {', '.join(map(repr, prefixes))}); "
                                  f"pick one with --weights-key PREFIX")
        else:
            return state, ""  # no MaskRCNN key at all: the fit check lists what is missing
    (prefix,) = prefixes
    if not prefix:
        return state, ""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, f"prefix {prefix!r} removed"


def read_checkpoint(path, weights_key: str | None = None, trust_pickle: bool = False,
                    marker: str = MARKER_KEY) -> Checkpoint:
    """The weights in `path` (see the module docstring). Raises CheckpointError (a
    ValueError) saying what the file holds when no state_dict can be found in it. `marker`:
    a key every state_dict of the expected model has (a torchvision MaskRCNN's by default)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded, layout = load_file(str(path), device="cpu"), "safetensors"
        elif trust_pickle:
            loaded, layout = torch.load(path, map_location="cpu", weights_only=False), "pickle (trusted)"
        else:
            loaded, layout = _safe_load(path), "state_dict"
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read weights file {path}: {first_line}") from None

    value, where = loaded, []
    if weights_key is not None and isinstance(value, dict) and weights_key in value:
        value, where = value[weights_key], [weights_key]
    elif not _is_state_dict(value) and isinstance(value, dict):
        for key in NESTED_KEYS:
            if key in value and (_is_state_dict(value[key]) or isinstance(value[key], (torch.nn.Module, Unloaded))):
                value, where = value[key], [key]
                break
    if isinstance(value, Unloaded):
        raise _whole_model_error(path, value)
    if isinstance(value, torch.nn.Module):
        return Checkpoint(state_dict=None, model=value, layout=f"{layout}, a whole {type(value).__name__}")
    if not _is_state_dict(value):
        hint = f"no key {weights_key!r}; " if weights_key is not None and not where else ""
        raise CheckpointError(f"{path} holds no state_dict ({hint}it holds a {_describe(value)}); name the key "
                              f"that holds the weights with --weights-key KEY")
    state, stripped = _strip_prefix(value, path, weights_key if not where else None, marker)
    layout += "".join(f", key {k!r}" for k in where) + (f", {stripped}" if stripped else "")
    return Checkpoint(state_dict=state, model=None, layout=layout)

"""A model directory as the model.tar.gz that SageMaker unpacks into /opt/ml/model.

The archive holds what `tar czf model.tar.gz -C DIR .` would, made reproducible: members
at the archive root (model.json, dense.onnx, ...; no leading directory), sorted by name,
regular files and directories only, a fixed mtime, owner 0:0, modes 0644 and 0755, and a
gzip header with no file name or time, so the same directory always gives the same bytes.
It is written to a temporary file beside the output and renamed into place: an interrupted
run never leaves a truncated model.tar.gz behind.
"""

from __future__ import annotations

import gzip
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from engine.model_directory.directory import ModelDir

FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z; GNU tar calls mtime 0 "implausibly old"
SKIPPED_DIRS = frozenset({"__pycache__"})
GZIP_LEVEL = 6  # ONNX weights barely compress; level 9 only costs time


@dataclass(frozen=True)
class Member:
    """One archive member: `name` is its '/'-separated path inside the archive."""

    name: str
    size: int  # bytes; 0 for a directory
    is_dir: bool
    source: Path  # what is read for it (a link inside the directory is read through)


@dataclass(frozen=True)
class Package:
    """A written model.tar.gz: its path, size in bytes, members, and what was left out."""

    path: Path
    size: int
    members: tuple[Member, ...]
    skipped: tuple[str, ...]  # "name (why)": links to outside the directory, special files


def check_model_dir(model_dir) -> ModelDir:
    """The engine's own check (model.json, every graph present, sha256s), or InputError."""
    # engine's package imports numpy and OpenCV; only `package` and `deploy --model-dir` pay that
    from engine.errors import ModelDirError
    from engine.model_directory.directory import ModelDir

    try:
        return ModelDir.open(model_dir, verify_checksums=True)
    except ModelDirError as exc:
        raise InputError(f"not a usable model directory: {exc}") from None


def package_model_dir(model_dir, output) -> Package:
    """Check `model_dir` and write it to `output` as a gzipped tarball (see the module)."""
    model = check_model_dir(model_dir)
    root = model.path.resolve()
    output = Path(output).absolute()
    members, skipped = _collect(root, exclude=output.resolve())
    missing = _required_names(model) - {m.name for m in members}
    if missing:
        raise InputError(f"{root}: {', '.join(sorted(missing))} would be left out of the archive "
                         "(a symbolic link to outside the directory is not followed): copy the file in")
    try:
        _write_atomically(output, members)
        size = output.stat().st_size
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc.strerror or exc}") from None
    return Package(output, size, tuple(members), tuple(skipped))


def _required_names(model: ModelDir) -> set[str]:
    """Archive names of the files the server will open: model.json, graphs, TensorRT plans."""
    files = [entry.file for _, entry in model.config.graphs.items()]
    files += [entry.file for _, entry in model.tensorrt.plans.items()] if model.tensorrt else []
    return {"model.json"} | {PurePosixPath(f).as_posix() for f in files}


def _collect(root: Path, exclude: Path) -> tuple[list[Member], list[str]]:
    members: list[Member] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into linked dirs
        here = Path(dirpath)
        for name in list(dirnames):
            if name in SKIPPED_DIRS or (here / name).is_symlink():
                dirnames.remove(name)
                if name not in SKIPPED_DIRS:
                    skipped.append(f"{_archive_name(root, here / name)} (link to a directory)")
            else:
                members.append(Member(_archive_name(root, here / name), 0, True, here / name))
        for name in filenames:
            path = here / name
            source = path.resolve()
            if source == exclude:
                continue
            arcname = _archive_name(root, path)
            if not source.is_relative_to(root):
                skipped.append(f"{arcname} (link to outside the directory)")
            elif not source.is_file():  # a FIFO, a socket, a broken link
                skipped.append(f"{arcname} (not a regular file)")
            else:
                members.append(Member(arcname, source.stat().st_size, False, source))
    members.sort(key=lambda m: m.name)
    return members, sorted(skipped)


def _archive_name(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _tar_info(member: Member) -> tarfile.TarInfo:
    info = tarfile.TarInfo(member.name)
    info.type = tarfile.DIRTYPE if member.is_dir else tarfile.REGTYPE
    info.mode = 0o755 if member.is_dir else 0o644
    info.size = member.size
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_atomically(output: Path, members: list[Member]) -> None:
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL) as gz, \
                    tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for member in members:
                    if member.is_dir:
                        tar.addfile(_tar_info(member))
                    else:
                        with open(member.source, "rb") as f:
                            tar.addfile(_tar_info(member), f)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

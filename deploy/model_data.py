"""A model directory as model data in S3: packaged here and uploaded with its sha256, or
found already there.

With model names used as given, `deploy --model-dir` under the name of an existing Model
computes the same key (`<prefix>/model.tar.gz`) that Model's data is at. Uploading first
would change the data under a Model that endpoints may be running, so the package is
compared with what the key holds (by the sha256 this tool stores on each upload) and is
uploaded only when the Model is to be created.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import DeployError
from .models import conflict_message
from .packaging import Package, package_model_dir
from .s3 import file_sha256, stored_sha256, upload


def print_package(package: Package, title: str, echo: Callable[[str], None]) -> None:
    files = [m for m in package.members if not m.is_dir]
    echo(f"{title}: {package.size / 1e6:.1f} MB, {len(files)} files")
    for member in files:
        echo(f"  {member.size:>13,}  {member.name}")
    for skipped in package.skipped:
        echo(f"  skipped {skipped}")


def package_and_upload(s3, model_dir: Path, bucket: str, key: str, echo: Callable[[str], None]) -> str:
    """Package `model_dir` and upload it to s3://bucket/key with its sha256; the URI."""
    with tempfile.TemporaryDirectory(prefix="maskrcnn-sagemaker-") as tmp:
        package = package_model_dir(model_dir, Path(tmp) / "model.tar.gz")
        print_package(package, f"packaged {model_dir}", echo)
        uri = upload(s3, package.path, bucket, key, sha256=file_sha256(package.path))
    echo(f"uploaded {uri}")
    return uri


def from_model_dir(s3, model_dir: Path, bucket: str, key: str, echo: Callable[[str], None],
                   model_name: str, existing: dict | None) -> str:
    """The model data URI for `model_dir` at s3://bucket/key. Packaged and uploaded when
    there is no Model `model_name` yet (`existing` is its description, or None); otherwise
    nothing is uploaded, and if that Model's data is at this key but another package,
    DeployError (exit status 1)."""
    if existing is None:
        return package_and_upload(s3, model_dir, bucket, key, echo)
    uri = f"s3://{bucket}/{key}"
    if (existing.get("PrimaryContainer") or {}).get("ModelDataUrl") != uri:
        return uri  # a Model with other data: models.ensure says so
    with tempfile.TemporaryDirectory(prefix="maskrcnn-sagemaker-") as tmp:
        package = package_model_dir(model_dir, Path(tmp) / "model.tar.gz")
        print_package(package, f"packaged {model_dir}", echo)
        digest = file_sha256(package.path)
    if stored_sha256(s3, uri) != digest:
        raise DeployError(conflict_message(model_name, [f"package (another package is at {uri})"]))
    echo(f"{uri} already holds this package")
    return uri

"""s3:// URIs, uploading a model.tar.gz, and counting what a transform job wrote."""

from __future__ import annotations

from pathlib import Path


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key/...` -> (bucket, key); the key may be empty. ValueError otherwise."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def upload(s3, path: Path, bucket: str, key: str) -> str:
    """Upload a file (multipart when large, retried) and return its s3:// URI."""
    s3.upload_file(str(path), bucket, key)
    return f"s3://{bucket}/{key}"


def count_objects(s3, uri: str, suffix: str) -> int:
    """How many objects under the prefix `uri` have keys ending in `suffix`."""
    bucket, prefix = parse_s3_uri(uri)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(obj["Key"].endswith(suffix) for page in pages for obj in page.get("Contents", ()))

"""s3:// URIs, uploading a model.tar.gz or a photo, reading an object back, and counting
what a transform job wrote."""

from __future__ import annotations

from pathlib import Path

from engine.model_directory.directory import sha256_of

# User metadata on every package the tool uploads: the tarball's sha256, so that a later
# deployment can tell whether an object already holds the same package without
# downloading it (an S3 ETag is an MD5 only for single-part uploads).
SHA256_METADATA = "sha256"
_MISSING = ("404", "NoSuchKey", "NotFound")  # head_object says 404; get_object NoSuchKey


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key/...` -> (bucket, key); the key may be empty. ValueError otherwise."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


file_sha256 = sha256_of  # what model.json's checksums use too


def upload(s3, path: Path, bucket: str, key: str, sha256: str | None = None,
           content_type: str | None = None) -> str:
    """Upload a file (multipart when large, retried) and return its s3:// URI. `sha256` is
    stored as the object's metadata (see SHA256_METADATA)."""
    extra = {}
    if sha256:
        extra["Metadata"] = {SHA256_METADATA: sha256}
    if content_type:
        extra["ContentType"] = content_type
    s3.upload_file(str(path), bucket, key, ExtraArgs=extra or None)
    return f"s3://{bucket}/{key}"


def stored_sha256(s3, uri: str) -> str | None:
    """The sha256 metadata of the object at `uri`; None if there is no such object or it
    was not uploaded by this tool."""
    bucket, key = parse_s3_uri(uri)
    head = _none_if_missing(s3, lambda: s3.head_object(Bucket=bucket, Key=key))
    return None if head is None else head.get("Metadata", {}).get(SHA256_METADATA)


def get_if_present(s3, uri: str) -> tuple[bytes, str | None] | None:
    """The object's bytes and content type, or None while there is no such object. Any
    other refusal (AccessDenied, no such bucket) is raised: waiting would not cure it."""
    bucket, key = parse_s3_uri(uri)
    answer = _none_if_missing(s3, lambda: s3.get_object(Bucket=bucket, Key=key))
    return None if answer is None else (answer["Body"].read(), answer.get("ContentType"))


def _none_if_missing(s3, call):
    """call()'s answer, or None where S3 says there is no such object."""
    try:
        return call()
    except s3.exceptions.ClientError as exc:
        if _is_missing(exc):
            return None
        raise


def _is_missing(exc) -> bool:
    return exc.response.get("Error", {}).get("Code") in _MISSING


def count_objects(s3, uri: str, suffix: str) -> int:
    """How many objects under the prefix `uri` have keys ending in `suffix`."""
    bucket, prefix = parse_s3_uri(uri)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(obj["Key"].endswith(suffix) for page in pages for obj in page.get("Contents", ()))

"""Where data lives: a local path or an s3:// prefix (read through boto3)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key.strip("/")


def s3_client():
    """A boto3 S3 client from the standard AWS chain; AWS_ENDPOINT_URL selects any S3-compatible store."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))


def cache_dir() -> Path:
    return Path(os.environ.get("GENRAY_CACHE", Path.home() / ".cache" / "genray"))


def fetch_to_local(source: str, stems: list[str]) -> Path:
    """Return a local folder holding the files of `source`.

    A local path is returned as it is. For s3:// every object whose name starts with one of
    `stems` (so both raw and .gz files) is downloaded once into a cache folder keyed by the URI.
    """
    if not is_s3(source):
        return Path(source).expanduser()
    bucket, prefix = split_s3(source)
    local = cache_dir() / "s3" / hashlib.sha256(source.encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    client = s3_client()
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""):
        for obj in page.get("Contents", []):
            name = obj["Key"].rsplit("/", 1)[-1]
            if any(name.startswith(stem) for stem in stems):
                target = local / name
                if not target.exists() or target.stat().st_size != obj["Size"]:
                    tmp = target.with_suffix(target.suffix + ".part")
                    client.download_file(bucket, obj["Key"], str(tmp))
                    os.replace(tmp, target)  # a half-downloaded file never looks complete
    return local

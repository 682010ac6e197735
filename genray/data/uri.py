"""Where data, runs and models live: a local path or an s3:// URI on any S3-compatible store.

Endpoint and credentials come from the standard AWS chain (environment, ~/.aws, instance
role); AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL points at MinIO, Ceph, moto or any other
S3-compatible endpoint. Two clients read the same settings: boto3 for genray's own reads and
writes (model store, run metadata, datasets) and a pyarrow S3FileSystem for Ray Train's run
storage. Both retry network errors, throttling and 5xx answers with exponential backoff;
a missing object is an ObjectNotFound that names the URI.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Attempts per request (the first one included); AWS_MAX_ATTEMPTS overrides, as in every AWS SDK.
DEFAULT_MAX_ATTEMPTS = 8


class ObjectNotFound(FileNotFoundError):
    """An s3:// object (or local file) that should be there is not."""


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key.strip("/")


def join(base: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a folder or an s3:// prefix."""
    if is_s3(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def max_attempts() -> int:
    return int(os.environ.get("AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))


def s3_client():
    """A boto3 S3 client from the standard AWS chain, with the endpoint override and retries."""
    import boto3
    from botocore.config import Config

    # "standard" retries: exponential backoff with jitter on connection errors, timeouts,
    # throttling and 5xx; a 404 is not retried.
    config = Config(retries={"mode": "standard", "total_max_attempts": max_attempts()}, connect_timeout=10, read_timeout=60)
    return boto3.client("s3", endpoint_url=s3_endpoint(), config=config)


# How boto3 found static keys; those are safe to hand to other processes (see s3_filesystem).
STATIC_CREDENTIALS = {"explicit", "env", "shared-credentials-file", "config-file"}


def s3_filesystem():
    """A pyarrow S3FileSystem with the same endpoint, region and retries as s3_client(), for
    RunConfig(storage_filesystem=...).

    Ray pickles it to the Train controller and workers, which may run in other processes or on
    other nodes without this process's environment; static keys (environment, ~/.aws) travel
    with it. Temporary credentials (instance roles, SSO) do not: they would expire in a long run,
    so every node resolves its own from its AWS chain.
    """
    from urllib.parse import urlparse

    import boto3
    from pyarrow.fs import AwsStandardS3RetryStrategy, S3FileSystem

    session = boto3.Session()
    options = {"retry_strategy": AwsStandardS3RetryStrategy(max_attempts=max_attempts()),
               "connect_timeout": 10, "request_timeout": 60}
    if session.region_name:
        options["region"] = session.region_name
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options.update(endpoint_override=parsed.netloc, scheme=parsed.scheme)
    credentials = session.get_credentials()
    if credentials is not None and credentials.method in STATIC_CREDENTIALS:
        frozen = credentials.get_frozen_credentials()
        options.update(access_key=frozen.access_key, secret_key=frozen.secret_key,
                       session_token=frozen.token)
    return S3FileSystem(**options)


def _missing(err) -> bool:
    code = str(err.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


# --- reading and writing objects or files by URI (boto3 for s3://) ---------------------------

def read_bytes(uri: str | os.PathLike) -> bytes:
    if not is_s3(uri):
        path = Path(uri)
        if not path.is_file():
            raise ObjectNotFound(f"{path} does not exist")
        return path.read_bytes()
    from botocore.exceptions import ClientError

    bucket, key = split_s3(str(uri))
    try:
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if _missing(err):
            raise ObjectNotFound(f"{uri} does not exist ({err.response['Error'].get('Code')})") from None
        raise


def read_text(uri: str | os.PathLike) -> str:
    return read_bytes(uri).decode()


def write_text(uri: str | os.PathLike, text: str) -> None:
    """Write a whole file or object; a local file is replaced atomically."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        s3_client().put_object(Bucket=bucket, Key=key, Body=text.encode())
        return
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def exists(uri: str | os.PathLike) -> bool:
    """Whether a file or object exists (for s3://, the exact key)."""
    if not is_s3(uri):
        return Path(uri).exists()
    from botocore.exceptions import ClientError

    bucket, key = split_s3(str(uri))
    try:
        s3_client().head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if _missing(err):
            return False
        raise


def list_keys(uri: str) -> list[str]:
    """Every key under an s3:// prefix, relative to it, sorted."""
    bucket, prefix = split_s3(uri)
    prefix = f"{prefix}/" if prefix else ""
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    keys = (obj["Key"][len(prefix):] for page in pages for obj in page.get("Contents", []))
    return sorted(k for k in keys if k and not k.endswith("/"))  # not the empty "folder" markers


def download_folder(uri: str, local: str | Path) -> Path:
    """Copy every object under an s3:// prefix into a local folder; an empty prefix is an error."""
    local = Path(local)
    bucket, prefix = split_s3(uri)
    names = list_keys(uri)
    if not names:
        raise ObjectNotFound(f"{uri} does not exist (no objects under it)")
    client = s3_client()
    for name in names:
        target = local / name
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, f"{prefix}/{name}" if prefix else name, str(target))
    return local


def upload_folder(local: str | Path, uri: str, last: tuple[str, ...] = ()) -> None:
    """Copy a local folder's files under an s3:// prefix; the files named in `last` go last
    (a reader that waits for a manifest never sees it before the files it lists)."""
    local = Path(local)
    bucket, prefix = split_s3(uri)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(local).as_posix() in last)
    client = s3_client()
    for path in files:
        name = path.relative_to(local).as_posix()
        client.upload_file(str(path), bucket, f"{prefix}/{name}" if prefix else name)


def copy_folder(src: str, dst: str) -> None:
    """Server-side copy of every object under one s3:// prefix to another."""
    bucket, prefix = split_s3(src)
    dst_bucket, dst_prefix = split_s3(dst)
    client = s3_client()
    for name in list_keys(src):
        client.copy({"Bucket": bucket, "Key": f"{prefix}/{name}"}, dst_bucket, f"{dst_prefix}/{name}")


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

"""Where data, runs and models live: a `Location`, a local path or an s3:// URI on any
S3-compatible store. This is the one module that knows the difference.

Endpoint and credentials come from the standard AWS chain (environment, ~/.aws, instance
role); AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL points at MinIO, Ceph, moto or any other
S3-compatible endpoint. Two clients read the same settings: boto3 for genray's own reads and
writes (model store, run metadata, datasets) and a pyarrow S3FileSystem for Ray Train's and
Ray Tune's storage. Both retry network errors, throttling and 5xx answers with exponential
backoff; a missing object is an ObjectNotFound that names the URI.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

S3_SCHEME = "s3://"
# Attempts per request (the first one included); AWS_MAX_ATTEMPTS overrides, as in every AWS SDK.
DEFAULT_MAX_ATTEMPTS = 8


class ObjectNotFound(FileNotFoundError):
    """An s3:// object (or local file) that should be there is not."""


class Location:
    """A local path or an s3://bucket/key URI, for a file or a folder (an S3 "folder" is a key
    prefix). Built from either spelling, a Path or another Location; str() gives it back
    (an S3 URI without a trailing slash). A value: equal locations compare and hash equal, and
    it pickles, so it travels to Ray workers."""

    __slots__ = ("bucket", "key", "_path")

    def __init__(self, where: str | os.PathLike | Location):
        if isinstance(where, Location):
            self.bucket, self.key, self._path = where.bucket, where.key, where._path
            return
        text = os.fspath(where)
        if text.startswith(S3_SCHEME):
            bucket, _, key = text[len(S3_SCHEME):].partition("/")
            if not bucket:
                raise ValueError(f"s3 URI has no bucket: {text!r}; expected s3://bucket/prefix")
            self.bucket, self.key, self._path = bucket, key.strip("/"), None
        else:
            self.bucket, self.key, self._path = None, None, Path(text)

    # --- naming ------------------------------------------------------------------------------

    @property
    def on_s3(self) -> bool:
        return self.bucket is not None

    @property
    def path(self) -> Path:
        """The local path; an S3 location has none."""
        if self._path is None:
            raise ValueError(f"{self} is on S3, not a local path; read it through Location's methods")
        return self._path

    def __str__(self) -> str:
        if self.on_s3:
            return f"{S3_SCHEME}{self.bucket}/{self.key}" if self.key else f"{S3_SCHEME}{self.bucket}"
        return str(self._path)

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.bucket, self.key, self._path) == (other.bucket, other.key, other._path)

    def __hash__(self) -> int:
        return hash((self.bucket, self.key, self._path))

    def __getstate__(self):
        return self.bucket, self.key, self._path

    def __setstate__(self, state) -> None:
        self.bucket, self.key, self._path = state

    def native(self) -> Path | str:
        """What code outside genray takes: the local Path, or the s3:// URI as a str."""
        return str(self) if self.on_s3 else self._path

    def join(self, *parts: str) -> Location:
        """A file or folder under this one: `parts` are relative names ("a", "b/c")."""
        if self.on_s3:
            return Location("/".join([str(self), *(p.strip("/") for p in parts)]))
        return Location(Path(self._path, *parts))

    def __truediv__(self, part: str) -> Location:
        return self.join(part)

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1] if self.on_s3 else self._path.name

    @property
    def parent(self) -> Location:
        if self.on_s3:
            return Location(f"{S3_SCHEME}{self.bucket}/{self.key.rpartition('/')[0]}")
        return Location(self._path.parent)

    def resolved(self) -> Location:
        """The same place, a local path made absolute (~ expanded): what other processes need."""
        return self if self.on_s3 else Location(self._path.expanduser().resolve())

    # --- files and objects -------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the file or folder exists; on S3, whether the exact key does (a prefix is
        checked with is_folder)."""
        if not self.on_s3:
            return self._path.exists()
        from botocore.exceptions import ClientError

        try:
            s3_client().head_object(Bucket=self.bucket, Key=self.key)
            return True
        except ClientError as err:
            if _missing(err):
                return False
            raise

    def is_folder(self) -> bool:
        """A local folder; on S3, a prefix with at least one object under it."""
        return bool(self.list()) if self.on_s3 else self._path.is_dir()

    def read_bytes(self) -> bytes:
        if not self.on_s3:
            if not self._path.is_file():
                raise ObjectNotFound(f"{self._path} does not exist")
            return self._path.read_bytes()
        from botocore.exceptions import ClientError

        try:
            return s3_client().get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except ClientError as err:
            if _missing(err):
                raise ObjectNotFound(f"{self} does not exist ({err.response['Error'].get('Code')})") from None
            raise

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Write a whole file or object, replacing it atomically: a local file is staged and
        renamed into place, an object is one put; a reader sees the old content or the new."""
        if self.on_s3:
            s3_client().put_object(Bucket=self.bucket, Key=self.key, Body=data)
            return
        os.replace(self._staged(data), self._path)

    def create(self, data: bytes) -> bool:
        """Write a whole file or object only where there is none: True when this call wrote it,
        False when one was there already. Of writers racing for one name exactly one wins, and
        a reader sees all of `data` or nothing: locally the file is staged and hard-linked into
        place (link(2) fails on an existing name); on S3 a conditional put (If-None-Match: *),
        which the store decides atomically. A store that ignores the condition (some older
        S3-compatible servers) lets every writer win."""
        if not self.on_s3:
            staged = self._staged(data)
            try:
                os.link(staged, self._path)
                return True
            except FileExistsError:
                return False
            finally:
                staged.unlink()
        from botocore.exceptions import ClientError

        for _ in range(max_attempts()):
            try:
                s3_client().put_object(Bucket=self.bucket, Key=self.key, Body=data, IfNoneMatch="*")
                return True
            except ClientError as err:
                code = str(err.response.get("Error", {}).get("Code", ""))
                if code in {"PreconditionFailed", "412"}:
                    return False
                # 409 ConditionalRequestConflict: another conditional write of the key was in
                # flight, and S3 asks to try again; its outcome decides the next answer.
                if code not in {"ConditionalRequestConflict", "409"}:
                    raise
        raise OSError(f"{self}: conditional write kept conflicting after {max_attempts()} attempts")

    def _staged(self, data: bytes) -> Path:
        """`data` in a new temporary file beside this local path (a name of its own, so that
        writers of the same file never write into each other's), to be renamed or linked."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_name(f".{self._path.name}.{uuid.uuid4().hex[:12]}.tmp")
        # os.open, not mkstemp: the file gets the umask's mode (mkstemp's is 0600), as a plain write's would.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def remove(self) -> None:
        """Delete one file or object; one that is not there is no error."""
        if self.on_s3:
            s3_client().delete_object(Bucket=self.bucket, Key=self.key)
        else:
            self._path.unlink(missing_ok=True)

    def remove_tree(self) -> None:
        """Delete this folder (S3 prefix) and everything under it; one that is not there is no error."""
        if not self.on_s3:
            if self._path.exists():
                shutil.rmtree(self._path)
            return
        client = s3_client()
        keys = [{"Key": self.join(name).key} for name in self.list()]
        for start in range(0, len(keys), 1000):  # delete_objects takes at most 1000 keys
            client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[start:start + 1000], "Quiet": True})

    def list(self) -> list[str]:
        """Every file (object) under this folder (prefix), relative to it, sorted; [] when
        there is none."""
        if not self.on_s3:
            if not self._path.is_dir():
                return []
            return sorted(p.relative_to(self._path).as_posix() for p in self._path.rglob("*") if p.is_file())
        prefix = f"{self.key}/" if self.key else ""
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        keys = (obj["Key"][len(prefix):] for page in pages for obj in page.get("Contents", []))
        return sorted(k for k in keys if k and not k.endswith("/"))  # not the empty "folder" markers

    def glob(self, pattern: str) -> list[Location]:
        """Files and folders under this folder whose relative names match `pattern` (as
        Path.glob: one pattern part per level, "*/checkpoint_*"), sorted by name."""
        if not self.on_s3:
            return [Location(p) for p in sorted(self._path.glob(pattern))]
        depth = pattern.count("/") + 1
        names = {"/".join(key.split("/")[:depth]) for key in self.list() if key.count("/") + 1 >= depth}
        return [self.join(n) for n in sorted(names) if fnmatch.fnmatchcase(n, pattern)]

    # --- whole folders ------------------------------------------------------------------------

    @contextmanager
    def as_local_folder(self) -> Iterator[Path]:
        """This folder on the local disk: itself, or for S3 a temporary download of every
        object under the prefix (gone when the block ends); an empty prefix is an error."""
        if not self.on_s3:
            yield self._path
            return
        with tempfile.TemporaryDirectory(prefix="genray-s3-") as tmp:
            yield self._download(Path(tmp))

    def _download(self, local: Path) -> Path:
        names = self.list()
        if not names:
            raise ObjectNotFound(f"{self} does not exist (no objects under it)")
        client = s3_client()
        for name in names:
            target = local / name
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(self.bucket, self.join(name).key, str(target))
        return local

    def download_to(self, local: str | Path) -> Path:
        """Copy this folder's files into a local folder (kept files are overwritten)."""
        local = Path(local)
        if not self.on_s3:
            shutil.copytree(self._path, local, dirs_exist_ok=True)
            return local
        return self._download(local)

    def upload_from(self, local: str | Path, last: tuple[str, ...] = ()) -> None:
        """Copy a local folder's files under this S3 prefix; the files named in `last` go last
        (a reader that waits for a manifest never sees it before the files it lists)."""
        if not self.on_s3:
            raise ValueError(f"upload_from copies to an s3:// prefix, not to the local folder {self}")
        local = Path(local)
        files = sorted(p for p in local.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.relative_to(local).as_posix() in last)
        client = s3_client()
        for path in files:
            client.upload_file(str(path), self.bucket, self.join(path.relative_to(local).as_posix()).key)

    def copy_to(self, dest: Location) -> None:
        """Copy every object under this S3 prefix to another one, server-side."""
        if not (self.on_s3 and dest.on_s3):
            raise ValueError(f"copy_to copies between s3:// prefixes, got {self} -> {dest}")
        client = s3_client()
        for name in self.list():
            client.copy({"Bucket": self.bucket, "Key": self.join(name).key}, dest.bucket, dest.join(name).key)

    # --- local copies ---------------------------------------------------------------------------

    def mirror(self, area: str) -> Path:
        """A local folder for this location's files: the folder itself, or for S3 a folder in
        the cache (<cache>/<area>/<bucket>/<key>) that callers keep in step with the bucket."""
        if not self.on_s3:
            return self.resolved().path
        return cache_dir() / area / self.bucket / self.key

    def fetch(self, stems: list[str]) -> Path:
        """A local folder holding this folder's files whose names start with one of `stems`
        (so both raw and .gz files): the folder itself, or for S3 a cache folder keyed by the
        URI that each object is downloaded into once."""
        if not self.on_s3:
            return self._path.expanduser()
        local = cache_dir() / "s3" / hashlib.sha256(str(self).encode()).hexdigest()[:16]
        local.mkdir(parents=True, exist_ok=True)
        client = s3_client()
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.key}/" if self.key else "")
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"].rsplit("/", 1)[-1]
                if any(name.startswith(stem) for stem in stems):
                    target = local / name
                    if not target.exists() or target.stat().st_size != obj["Size"]:
                        tmp = target.with_suffix(target.suffix + ".part")
                        client.download_file(self.bucket, obj["Key"], str(tmp))
                        os.replace(tmp, target)  # a half-downloaded file never looks complete
        return local

    # --- Ray's view --------------------------------------------------------------------------

    @property
    def pyarrow_path(self) -> str:
        """The path in this location's pyarrow filesystem: bucket/key on S3, the absolute
        local path otherwise."""
        return f"{self.bucket}/{self.key}".rstrip("/") if self.on_s3 else str(self.resolved())

    def ray_storage(self, filesystem: Any = None) -> tuple[str, Any]:
        """(storage_path, storage_filesystem) for Ray Train's and Ray Tune's RunConfig: on S3
        the bucket path with a filesystem that knows the endpoint (made here from the AWS
        settings unless given); a local folder as its absolute path and None."""
        if self.on_s3:
            return self.pyarrow_path, filesystem or s3_filesystem()
        return self.pyarrow_path, None

    def from_ray(self, path: str) -> Location:
        """A path that Ray reported in this location's filesystem (a checkpoint's), as a Location."""
        return Location(f"{S3_SCHEME}{path}") if self.on_s3 else Location(path)


def cache_dir() -> Path:
    return Path(os.environ.get("GENRAY_CACHE", Path.home() / ".cache" / "genray"))


# --- the two S3 clients -------------------------------------------------------------------------

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

"""Object stores: a directory (``file:///path``) or an S3 bucket (``s3://bucket/prefix``).

Owns ``ObjectStore`` — put, get, list and delete whole objects by name under the URL's prefix —
its two implementations, and ``Archive``: the sealing (``envelope``) of every object put and
the verification of every object got. A put is atomic (a file is written aside, synced and
renamed; an S3 PUT is all or nothing), so a process killed mid-upload leaves the old object or
none. Every call blocks: callers on the event loop run it in a thread. It must never log or
show a credential, and errors are ``BackupError`` naming the URL and the object.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from hacluster.backup import BackupError
from hacluster.backup.envelope import Codec, open_sealed, seal
from hacluster.config.model import BackupConfig

log = logging.getLogger(__name__)

S3_TIMEOUT_S = 10
S3_RETRIES = 2


class ObjectStore(Protocol):
    url: str

    def put(self, name: str, data: bytes) -> None: ...

    def get(self, name: str) -> bytes: ...

    def listing(self, prefix: str) -> list[tuple[str, int]]:
        """(name, size) of every object whose name starts with ``prefix``, sorted."""

    def delete(self, names: list[str]) -> None: ...


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    def _path(self, name: str) -> Path:
        if name.startswith("/") or ".." in name.split("/"):
            raise BackupError(f"{self.url}: bad object name {name!r}")
        return self.root / name

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise BackupError(f"{self.url}: cannot write {name}: {exc.strerror or exc}") \
                from None

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise BackupError(f"{self.url}: object {name} is missing") from None
        except OSError as exc:
            raise BackupError(f"{self.url}: cannot read {name}: {exc.strerror or exc}") \
                from None

    def listing(self, prefix: str) -> list[tuple[str, int]]:
        out = []
        base = self.root
        try:
            for dirpath, _dirs, files in os.walk(base):
                for fname in files:
                    if fname.startswith("."):
                        continue          # a put in flight (or an editor's file)
                    full = Path(dirpath) / fname
                    name = full.relative_to(base).as_posix()
                    if name.startswith(prefix):
                        out.append((name, full.stat().st_size))
        except OSError as exc:
            raise BackupError(f"{self.url}: cannot list: {exc.strerror or exc}") from None
        if not base.is_dir():
            raise BackupError(f"{self.url}: no such directory")
        return sorted(out)

    def delete(self, names: list[str]) -> None:
        for name in names:
            try:
                self._path(name).unlink(missing_ok=True)
            except OSError as exc:
                raise BackupError(f"{self.url}: cannot delete {name}: "
                                  f"{exc.strerror or exc}") from None


class S3Store:
    def __init__(self, cfg: BackupConfig, bucket: str, prefix: str) -> None:
        import boto3
        from botocore.config import Config

        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        kw: dict[str, Any] = {}
        if cfg.access_key_id and cfg.secret_access_key:
            kw.update(aws_access_key_id=cfg.access_key_id,
                      aws_secret_access_key=cfg.secret_access_key)
        session = boto3.session.Session(region_name=cfg.region, **kw)
        # Short timeouts and few retries: a store that does not answer makes the archive lag
        # (and says why), it must not hold an upload thread for minutes.
        self.client = session.client(
            "s3", endpoint_url=cfg.endpoint_url,
            config=Config(connect_timeout=S3_TIMEOUT_S, read_timeout=S3_TIMEOUT_S * 3,
                          retries={"max_attempts": S3_RETRIES, "mode": "standard"}))
        self.extra: dict[str, str] = {}
        if cfg.encryption == "sse-s3":
            self.extra = {"ServerSideEncryption": "AES256"}
        elif cfg.encryption == "sse-kms" and cfg.kms_key_id:
            self.extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": cfg.kms_key_id}

    def _fail(self, what: str, name: str, exc: Exception) -> BackupError:
        return BackupError(f"{self.url}: cannot {what} {name}: {type(exc).__name__}: {exc}")

    def put(self, name: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data,
                                   **self.extra)
        except Exception as exc:      # botocore's errors share no base with OSError
            raise self._fail("write", name, exc) from None

    def get(self, name: str) -> bytes:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + name)
            return bytes(answer["Body"].read())
        except Exception as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                raise BackupError(f"{self.url}: object {name} is missing") from None
            raise self._fail("read", name, exc) from None

    def listing(self, prefix: str) -> list[tuple[str, int]]:
        out = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    out.append((item["Key"][len(self.prefix):], int(item["Size"])))
        except Exception as exc:
            raise self._fail("list", prefix or "the bucket", exc) from None
        return sorted(out)

    def delete(self, names: list[str]) -> None:
        for i in range(0, len(names), 1000):
            chunk = [{"Key": self.prefix + n} for n in names[i:i + 1000]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk})
            except Exception as exc:
                raise self._fail("delete", f"{len(chunk)} objects", exc) from None


def open_store(cfg: BackupConfig) -> ObjectStore:
    if cfg.url is None:
        raise BackupError("no backup.url configured")
    parts = urlsplit(cfg.url)
    if parts.scheme == "file":
        return FileStore(Path(parts.path))
    return S3Store(cfg, parts.netloc, parts.path.lstrip("/"))


class Archive:
    """An object store with every object sealed on put and verified on get."""

    def __init__(self, store: ObjectStore, codec: Codec) -> None:
        self.store = store
        self.codec = codec

    @classmethod
    def from_config(cls, cfg: BackupConfig) -> Archive:
        return cls(open_store(cfg), Codec(cfg.compression, cfg.encryption_key))

    @property
    def url(self) -> str:
        return self.store.url

    def put(self, name: str, data: bytes) -> int:
        """Store ``data`` sealed; return the stored size."""
        blob = seal(data, self.codec)
        self.store.put(name, blob)
        return len(blob)

    def get(self, name: str) -> bytes:
        return open_sealed(self.store.get(name), self.codec, f"{self.url}/{name}")

    def listing(self, prefix: str) -> list[tuple[str, int]]:
        return self.store.listing(prefix)

    def delete(self, names: list[str]) -> None:
        if names:
            self.store.delete(names)

    def walk(self, prefix: str) -> Iterator[str]:
        for name, _size in self.listing(prefix):
            yield name

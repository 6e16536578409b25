"""Sealing one archive object: checksum, compression and client-side encryption.

Owns the byte format every archived object has: ``MAGIC``, a 4-byte header length, a JSON
header (format version, SHA-256 and size of the plain data, compression, encryption, the
encryption key's id and nonce) and the body (the data compressed, then encrypted with
AES-256-GCM whose associated data is the header). ``open_sealed`` checks everything and fails
with a ``BackupError`` naming the object: a wrong key, a corrupted or truncated object, a
checksum mismatch. It must never return data whose SHA-256 was not verified, and never put a
key in a header or a message (only its id: the first bytes of its own SHA-256).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
from dataclasses import dataclass

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hacluster.backup import BackupError

MAGIC = b"HACB1\n"
VERSION = 1
_LEN = struct.Struct(">I")
MAX_HEADER = 1 << 16
ZSTD_LEVEL = 3


@dataclass(frozen=True, slots=True)
class Codec:
    """How objects are written (compression, client-side key) and read (the key)."""

    compression: str = "zstd"          # zstd | gzip | none
    key: bytes | None = None           # AES-256 key: client-side encryption when set

    @property
    def key_id(self) -> str | None:
        return None if self.key is None else hashlib.sha256(self.key).hexdigest()[:16]


def _compress(data: bytes, how: str) -> bytes:
    if how == "zstd":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    if how == "gzip":
        return gzip.compress(data, compresslevel=5, mtime=0)
    return data


def _decompress(data: bytes, how: str, name: str) -> bytes:
    try:
        if how == "zstd":
            return zstandard.ZstdDecompressor().decompress(data)
        if how == "gzip":
            return gzip.decompress(data)
    except (zstandard.ZstdError, OSError, EOFError) as exc:
        raise BackupError(f"{name}: corrupted: its {how} data does not decompress ({exc})") \
            from None
    if how == "none":
        return data
    raise BackupError(f"{name}: unknown compression {how!r} (written by a newer hacluster?)")


def seal(data: bytes, codec: Codec) -> bytes:
    """``data`` as an archive object."""
    header: dict[str, object] = {"v": VERSION, "sha256": hashlib.sha256(data).hexdigest(),
                                 "size": len(data), "compression": codec.compression,
                                 "encryption": "none"}
    body = _compress(data, codec.compression)
    if codec.key is not None:
        nonce = os.urandom(12)
        header.update(encryption="aes-256-gcm", key_id=codec.key_id, nonce=nonce.hex())
        raw = json.dumps(header, sort_keys=True).encode()
        body = AESGCM(codec.key).encrypt(nonce, body, raw)
    else:
        raw = json.dumps(header, sort_keys=True).encode()
    return MAGIC + _LEN.pack(len(raw)) + raw + body


def read_header(blob: bytes, name: str) -> tuple[dict[str, object], bytes, bytes]:
    """(header, its raw bytes, body) of a sealed object; BackupError if it is not one."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _LEN.size:
        raise BackupError(f"{name}: not a hacluster archive object (bad magic; "
                          f"{len(blob)} bytes): corrupted or written by something else")
    (n,) = _LEN.unpack_from(blob, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    if n > MAX_HEADER or start + n > len(blob):
        raise BackupError(f"{name}: corrupted: header length {n} does not fit in "
                          f"{len(blob)} bytes (truncated?)")
    raw = blob[start:start + n]
    try:
        header = json.loads(raw)
    except ValueError:
        raise BackupError(f"{name}: corrupted: its header is not JSON") from None
    if not isinstance(header, dict):
        raise BackupError(f"{name}: corrupted: its header is not a JSON object")
    return header, raw, blob[start + n:]


def open_sealed(blob: bytes, codec: Codec, name: str) -> bytes:
    """The verified plain data of the sealed object ``blob`` called ``name``."""
    header, raw, body = read_header(blob, name)
    if header.get("v") != VERSION:
        raise BackupError(f"{name}: format version {header.get('v')!r}, this hacluster reads "
                          f"{VERSION}")
    encryption = header.get("encryption")
    if encryption == "aes-256-gcm":
        if codec.key is None:
            raise BackupError(f"{name}: encrypted client-side (key id {header.get('key_id')}) "
                              "but no backup.encryption_key is configured")
        if header.get("key_id") != codec.key_id:
            raise BackupError(f"{name}: encrypted with another key (key id "
                              f"{header.get('key_id')}; the configured "
                              f"backup.encryption_key has id {codec.key_id}): wrong key")
        try:
            body = AESGCM(codec.key).decrypt(bytes.fromhex(str(header["nonce"])), body, raw)
        except (InvalidTag, KeyError, ValueError):
            raise BackupError(f"{name}: corrupted: it does not decrypt with its key (the "
                              "object was altered or truncated)") from None
    elif encryption != "none":
        raise BackupError(f"{name}: unknown encryption {encryption!r}")
    data = _decompress(body, str(header.get("compression")), name)
    digest = hashlib.sha256(data).hexdigest()
    if digest != header.get("sha256") or len(data) != header.get("size"):
        raise BackupError(f"{name}: checksum mismatch: SHA-256 {digest[:16]}… of "
                          f"{len(data)} bytes, the header says {str(header.get('sha256'))[:16]}"
                          f"… of {header.get('size')} bytes: corrupted")
    return data

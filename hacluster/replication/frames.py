"""Wire format of the replication stream: length-delimited CBOR frames.

Owns encoding and decoding of every frame kind and the checksum that covers a batch. Pure: no
sockets, no database. It must never hand back a batch whose checksum did not verify, and never
accept a frame larger than the configured limit (a corrupt length must not make us allocate
gigabytes or wait forever).

A frame on the wire is a 4-byte big-endian body length followed by a CBOR map. Kinds (key "t"):

- ``hello``  first frame of a stream: epoch, primary name, primary seq, column-family names in id
  order (ops refer to column families by id).
- ``batch``  epoch, first seq, count, ops (a nested CBOR byte string holding a list of
  ``[kind, cf_id, key, value]``) and a CRC32C over epoch, seq, count and the ops bytes.
- ``hb``     heartbeat when idle: epoch and the primary's latest seq.
- ``error``  the primary cannot go on (e.g. a corrupt WAL record); reason text, then it closes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
import crc32c

from hacluster.wal.batch import Op

LENGTH = struct.Struct(">I")
_CRC_HEADER = struct.Struct(">QQI")

HELLO, BATCH, HEARTBEAT, ERROR = "hello", "batch", "hb", "error"


class FrameError(Exception):
    """A frame is malformed, corrupt or too large; ``where`` says which frame."""


@dataclass(frozen=True, slots=True)
class Hello:
    epoch: int
    primary: str
    primary_seq: int
    column_families: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BatchFrame:
    epoch: int
    seq: int
    count: int
    ops: list[Op]

    @property
    def last_seq(self) -> int:
        return self.seq + self.count - 1


@dataclass(frozen=True, slots=True)
class Heartbeat:
    epoch: int
    primary_seq: int


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    reason: str


Frame = Hello | BatchFrame | Heartbeat | ErrorFrame


def batch_checksum(epoch: int, seq: int, count: int, ops_bytes: bytes) -> int:
    return int(crc32c.crc32c(ops_bytes, crc32c.crc32c(_CRC_HEADER.pack(epoch, seq, count))))


def _frame(body: dict[str, Any]) -> bytes:
    data = cbor2.dumps(body)
    return LENGTH.pack(len(data)) + data


def encode_hello(hello: Hello) -> bytes:
    return _frame({"t": HELLO, "epoch": hello.epoch, "primary": hello.primary,
                   "seq": hello.primary_seq, "cfs": list(hello.column_families)})


def encode_batch(epoch: int, seq: int, count: int, ops: Sequence[Op]) -> bytes:
    ops_bytes = cbor2.dumps(ops)
    return _frame({"t": BATCH, "epoch": epoch, "seq": seq, "count": count, "ops": ops_bytes,
                   "crc": batch_checksum(epoch, seq, count, ops_bytes)})


def encode_heartbeat(epoch: int, primary_seq: int) -> bytes:
    return _frame({"t": HEARTBEAT, "epoch": epoch, "seq": primary_seq})


def encode_error(reason: str) -> bytes:
    return _frame({"t": ERROR, "reason": reason})


def _field(body: dict[Any, Any], name: str, kind: type, where: str) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise FrameError(f"{where}: field {name!r} missing or not {kind.__name__}")
    return value


def decode_body(data: bytes, where: str = "frame") -> Frame:
    """Decode one frame body (without its length prefix) and verify it."""
    try:
        body = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types for garbage; all mean the same here
        raise FrameError(f"{where}: not valid CBOR ({exc})") from None
    if not isinstance(body, dict):
        raise FrameError(f"{where}: expected a CBOR map, got {type(body).__name__}")
    kind = body.get("t")
    if kind == BATCH:
        return _decode_batch(body, where)
    if kind == HEARTBEAT:
        return Heartbeat(_field(body, "epoch", int, where), _field(body, "seq", int, where))
    if kind == HELLO:
        cfs = _field(body, "cfs", list, where)
        if not all(isinstance(c, str) for c in cfs):
            raise FrameError(f"{where}: hello column families must be strings")
        return Hello(_field(body, "epoch", int, where), _field(body, "primary", str, where),
                     _field(body, "seq", int, where), tuple(cfs))
    if kind == ERROR:
        return ErrorFrame(_field(body, "reason", str, where))
    raise FrameError(f"{where}: unknown frame kind {kind!r}")


def _decode_batch(body: dict[Any, Any], where: str) -> BatchFrame:
    epoch = _field(body, "epoch", int, where)
    seq = _field(body, "seq", int, where)
    count = _field(body, "count", int, where)
    ops_bytes = _field(body, "ops", bytes, where)
    crc = _field(body, "crc", int, where)
    if seq < 1 or count < 1 or epoch < 0:
        raise FrameError(f"{where}: bad batch header epoch={epoch} seq={seq} count={count}")
    if batch_checksum(epoch, seq, count, ops_bytes) != crc:
        raise FrameError(f"{where}: checksum mismatch in batch at seq {seq} (epoch {epoch})")
    try:
        ops = cbor2.loads(ops_bytes)
    except Exception as exc:
        raise FrameError(f"{where}: batch at seq {seq}: ops not valid CBOR ({exc})") from None
    if not isinstance(ops, list) or len(ops) != count:
        raise FrameError(f"{where}: batch at seq {seq} says {count} ops, carries "
                         f"{len(ops) if isinstance(ops, list) else 'no list of'} ops")
    return BatchFrame(epoch, seq, count, ops)


class FrameDecoder:
    """Splits a byte stream into frames; keeps a partial trailing frame for the next feed."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self.frames_seen = 0
        self.bytes_seen = 0

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self._buf)
            self.check_length(length)
            end = LENGTH.size + length
            if len(self._buf) < end:
                break
            body = bytes(self._buf[LENGTH.size:end])
            frames.append(decode_body(body, self.where()))
            del self._buf[:end]
            self.frames_seen += 1
            self.bytes_seen += end
        return frames

    def check_length(self, length: int) -> None:
        if length == 0 or length > self.max_frame_bytes:
            raise FrameError(
                f"{self.where()}: frame length {length} outside 1..{self.max_frame_bytes}"
            )

    def where(self) -> str:
        return f"frame #{self.frames_seen + 1} at stream offset {self.bytes_seen}"

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered (non-zero at EOF means truncation)."""
        return len(self._buf)

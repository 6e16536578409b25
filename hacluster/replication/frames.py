"""Wire format of the replication stream: length-delimited CBOR frames.

Owns encoding and decoding of every frame kind and the checksum that covers a batch. Pure: no
sockets, no database. It must never hand back a batch whose checksum did not verify, and never
accept a frame larger than the configured limit (a corrupt length must not make us allocate
gigabytes or wait forever).

A frame on the wire is a 4-byte big-endian body length followed by a CBOR map. Kinds (key "t"):

- ``hello``  first frame of a stream: epoch, primary name, primary seq, column-family names in id
  order (ops refer to column families by id).
- ``batch``  epoch, first seq, count, ``wb`` (the serialized RocksDB WriteBatch exactly as
  it is in the primary's WAL; entries refer to column families by id) and a CRC32C over
  epoch, seq, count and ``wb``. Shipping the WAL's own bytes means the primary encodes
  nothing per op; the replica decodes them with the same decoder the WAL reader uses.
- ``hb``     heartbeat when idle: epoch and the primary's latest seq.
- ``error``  the primary cannot go on (e.g. a corrupt WAL record); reason text, then it closes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cbor2
import crc32c

LENGTH = struct.Struct(">I")
_CRC_HEADER = struct.Struct(">QQI")
_WB_HEADER = struct.Struct("<QI")

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
    wb: bytes   # serialized WriteBatch; its header matches seq and count (checked)

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


def batch_checksum(epoch: int, seq: int, count: int, wb: bytes) -> int:
    return int(crc32c.crc32c(wb, crc32c.crc32c(_CRC_HEADER.pack(epoch, seq, count))))


def _frame(body: dict[str, Any]) -> bytes:
    data = cbor2.dumps(body)
    return LENGTH.pack(len(data)) + data


def encode_hello(hello: Hello) -> bytes:
    return _frame({"t": HELLO, "epoch": hello.epoch, "primary": hello.primary,
                   "seq": hello.primary_seq, "cfs": list(hello.column_families)})


def encode_batch(epoch: int, seq: int, count: int, wb: bytes) -> bytes:
    """A batch frame around ``wb``, a serialized WriteBatch covering [seq, seq+count-1]."""
    return _frame({"t": BATCH, "epoch": epoch, "seq": seq, "count": count, "wb": wb,
                   "crc": batch_checksum(epoch, seq, count, wb)})


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
    wb = _field(body, "wb", bytes, where)
    crc = _field(body, "crc", int, where)
    if seq < 1 or count < 1 or epoch < 0:
        raise FrameError(f"{where}: bad batch header epoch={epoch} seq={seq} count={count}")
    if batch_checksum(epoch, seq, count, wb) != crc:
        raise FrameError(f"{where}: checksum mismatch in batch at seq {seq} (epoch {epoch})")
    if len(wb) < _WB_HEADER.size or _WB_HEADER.unpack_from(wb) != (seq, count):
        raise FrameError(f"{where}: frame says batch [{seq}, {seq + count - 1}] but its "
                         "WriteBatch header disagrees")
    # The entries themselves are decoded (and checked) as they are applied.
    return BatchFrame(epoch, seq, count, wb)


class FrameDecoder:
    """Splits a byte stream into frames; keeps a partial trailing frame for the next feed."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self.frames_seen = 0
        self.bytes_seen = 0

    def feed(self, data: bytes) -> list[Frame]:
        buf = bytes(self._buf) + data if self._buf else data
        frames: list[Frame] = []
        pos, size = 0, len(buf)
        # Walk an offset through the chunk and keep only the tail: deleting each frame from the
        # front of a buffer would move the rest of a 1 MB chunk once per frame.
        while size - pos >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buf, pos)
            self.check_length(length)
            end = pos + LENGTH.size + length
            if size < end:
                break
            frames.append(decode_body(buf[pos + LENGTH.size:end], self.where()))
            self.frames_seen += 1
            self.bytes_seen += end - pos
            pos = end
        self._buf = bytearray(buf[pos:])
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

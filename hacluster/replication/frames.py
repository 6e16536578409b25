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
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1

HELLO, BATCH, HEARTBEAT, ERROR = "hello", "batch", "hb", "error"


def _refuse_tag(value: Any, immutable: bool) -> Any:
    raise cbor2.CBORDecodeError("regular expressions (tag 35) and MIME messages (tag 36) are "
                                "not accepted")


# cbor2 would compile or parse these from untrusted bytes as it decodes them.
_REFUSED_TAGS = {35: _refuse_tag, 36: _refuse_tag}


class FrameError(Exception):
    """A frame is malformed, corrupt or too large; ``where`` says which frame.

    Raised by ``FrameDecoder.feed`` with ``good``: the verified frames that came before it in
    the same chunk, which the caller may still apply.
    """

    good: list[Frame]

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.good = []


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


def _u64(body: dict[Any, Any], name: str, where: str) -> int:
    """An unsigned 64-bit field (epochs and sequence numbers are uint64 everywhere else)."""
    value: int = _field(body, name, int, where)
    if not 0 <= value <= _U64:
        raise FrameError(f"{where}: field {name!r} is {_num(value)}, outside 0..2**64-1")
    return value


def _num(value: int) -> str:
    """An integer for a message: in full unless it is too long to print (or to convert)."""
    return str(value) if value.bit_length() <= 64 else f"a {value.bit_length()}-bit integer"


def decode_body(data: bytes, where: str = "frame") -> Frame:
    """Decode one frame body (without its length prefix) and verify it."""
    try:
        # Only text and byte strings as map keys: integer keys with colliding hashes would
        # make building the map quadratic (seconds per 100 KB of frame). No regular
        # expressions or MIME messages: compiling a large pattern is superlinear.
        body = cbor2.loads(data, strict_hashable_types=True, semantic_decoders=_REFUSED_TAGS)
    except Exception as exc:  # cbor2 raises several types for garbage; all mean the same here
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise FrameError(f"{where}: not valid CBOR ({exc}{cause})") from None
    if not isinstance(body, dict):
        raise FrameError(f"{where}: expected a CBOR map, got {type(body).__name__}")
    kind = body.get("t")
    if kind == BATCH:
        return _decode_batch(body, where)
    if kind == HEARTBEAT:
        return Heartbeat(_u64(body, "epoch", where), _u64(body, "seq", where))
    if kind == HELLO:
        cfs = _field(body, "cfs", list, where)
        if not all(isinstance(c, str) for c in cfs):
            raise FrameError(f"{where}: hello column families must be strings")
        return Hello(_u64(body, "epoch", where), _field(body, "primary", str, where),
                     _u64(body, "seq", where), tuple(cfs))
    if kind == ERROR:
        return ErrorFrame(_field(body, "reason", str, where))
    # Only a short string is shown: any other value could be huge, or an integer too long
    # for str() to convert.
    shown = repr(kind) if isinstance(kind, str) and len(kind) <= 40 else (
        "None" if kind is None else f"of type {type(kind).__name__}")
    raise FrameError(f"{where}: unknown frame kind {shown}")


def _decode_batch(body: dict[Any, Any], where: str) -> BatchFrame:
    epoch = _field(body, "epoch", int, where)
    seq = _field(body, "seq", int, where)
    count = _field(body, "count", int, where)
    wb = _field(body, "wb", bytes, where)
    crc = _field(body, "crc", int, where)
    # The checksum packs epoch and seq as uint64 and count as uint32, like the WAL does.
    if not (1 <= seq <= _U64 and 1 <= count <= _U32 and 0 <= epoch <= _U64):
        raise FrameError(f"{where}: bad batch header epoch={_num(epoch)} seq={_num(seq)} "
                         f"count={_num(count)}")
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
        # How many bytes _buf must hold before the next frame (or length prefix) is complete.
        self._need = LENGTH.size
        self.frames_seen = 0
        self.bytes_seen = 0

    def feed(self, data: bytes) -> list[Frame]:
        if self._buf:
            # Inside a frame, chunks are only appended: copying the buffer on every chunk
            # would make a large frame arriving in small chunks quadratic (minutes for 80 MB).
            self._buf += data
            if len(self._buf) < self._need:
                return []
            buf = bytes(self._buf)
        else:
            buf = data
        frames: list[Frame] = []
        pos, size = 0, len(buf)
        need = LENGTH.size
        # Walk an offset through the chunk and keep only the tail: deleting each frame from the
        # front of a buffer would move the rest of a 1 MB chunk once per frame.
        while size - pos >= LENGTH.size:
            try:
                (length,) = LENGTH.unpack_from(buf, pos)
                self.check_length(length)
                end = pos + LENGTH.size + length
                if size < end:
                    need = end - pos
                    break
                frames.append(decode_body(buf[pos + LENGTH.size:end], self.where()))
            except FrameError as exc:
                exc.good = frames          # the verified frames before it are not lost
                raise
            self.frames_seen += 1
            self.bytes_seen += end - pos
            pos = end
        self._buf = bytearray(buf[pos:])
        self._need = need
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

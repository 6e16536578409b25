"""WriteBatch payload decoding (and encoding, for tests).

Owns: turning the payload of one logical WAL record (a serialized RocksDB
WriteBatch) into a ``WalBatch`` of plain op tuples (``decode_batch``), into
WriteBatch calls on a replica (``replay_batch``), or only checking it
(``check_batch``); and the inverse for tests. One Python parser (``_scan``) serves
all three; the optional C module ``_replay`` accelerates the last two.
Must never: do I/O, skip an entry it does not understand (anything other than
put / delete / single delete / range delete / LogData raises ``WalUnsupported``),
or let a malformed payload escape as anything but a ``WalError`` subclass.

Layout (RocksDB db/write_batch.cc): fixed64 sequence, fixed32 count, then entries,
each a tag byte (db/dbformat.h ``ValueType``) followed by an optional varint32
column family id and varint32-length-prefixed slices.

A range deletion whose end key sorts (bytewise, the only comparator a Store uses) before
its start key is refused as corruption: RocksDB would log it and then fail the write half
applied.

"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hacluster.wal.errors import WalCorruption, WalUnsupported

try:
    from hacluster.wal import _replay as _c_replay  # type: ignore[attr-defined]
except ImportError:  # not compiled (no C compiler at install time): pure Python it is
    _c_replay = None

C_ACCELERATED = _c_replay is not None

__all__ = [
    "DELETE",
    "DELETE_RANGE",
    "PUT",
    "SINGLE_DELETE",
    "Op",
    "WalBatch",
    "cut_batch",
    "decode_batch",
    "encode_batch",
    "tag_name",
]

PUT = 1
DELETE = 2
SINGLE_DELETE = 3
DELETE_RANGE = 4

Op = tuple[int, int, bytes, bytes]
"""``(kind, cf_id, key, value)``; ``value`` is the range end for DELETE_RANGE, else b""."""

HEADER_SIZE = 12

_HEADER = struct.Struct("<QI")

# ValueType tags from RocksDB db/dbformat.h.
TAG_DELETION = 0x0
TAG_VALUE = 0x1
TAG_MERGE = 0x2
TAG_LOG_DATA = 0x3
TAG_CF_DELETION = 0x4
TAG_CF_VALUE = 0x5
TAG_CF_MERGE = 0x6
TAG_SINGLE_DELETION = 0x7
TAG_CF_SINGLE_DELETION = 0x8
TAG_CF_RANGE_DELETION = 0xE
TAG_RANGE_DELETION = 0xF

_TAG_NAMES: dict[int, str] = {
    0x0: "deletion",
    0x1: "value",
    0x2: "merge",
    0x3: "log data",
    0x4: "column family deletion",
    0x5: "column family value",
    0x6: "column family merge",
    0x7: "single deletion",
    0x8: "column family single deletion",
    0x9: "begin prepare xid",
    0xA: "end prepare xid",
    0xB: "commit xid",
    0xC: "rollback xid",
    0xD: "noop",
    0xE: "column family range deletion",
    0xF: "range deletion",
    0x10: "column family blob index",
    0x11: "blob index",
    0x12: "begin persisted prepare xid",
    0x13: "begin unprepare xid",
    0x14: "deletion with timestamp",
    0x15: "commit xid and timestamp",
    0x16: "wide column entity",
    0x17: "column family wide column entity",
    0x18: "value preferred seqno",
    0x19: "column family value preferred seqno",
}

_KIND_NAMES = {PUT: "put", DELETE: "delete", SINGLE_DELETE: "single delete",
               DELETE_RANGE: "delete range"}  # fmt: skip


def tag_name(tag: int) -> str:
    """Human-readable name of a WriteBatch tag byte (``"unknown"`` if not a known tag)."""
    return _TAG_NAMES.get(tag, "unknown")


@dataclass(frozen=True, slots=True)
class WalBatch:
    """One decoded WriteBatch: ``count`` sequence numbers starting at ``seq``."""

    seq: int
    count: int
    ops: list[Op]
    log_number: int
    offset: int
    payload: bytes = field(default=b"", compare=False, repr=False)
    """The serialized WriteBatch itself: what the stream ships, so nothing is re-encoded."""

    @property
    def last_seq(self) -> int:
        """Last sequence number the batch consumes (``seq - 1`` when ``count == 0``)."""
        return self.seq + self.count - 1


# The frozen-dataclass __init__ costs ~0.8 us (five object.__setattr__ calls by
# name); setting the slots through their descriptors halves that, which matters
# for the common single-put batch. The result is an ordinary WalBatch.
_new_object = object.__new__
_set_seq = WalBatch.__dict__["seq"].__set__
_set_count = WalBatch.__dict__["count"].__set__
_set_ops = WalBatch.__dict__["ops"].__set__
_set_log_number = WalBatch.__dict__["log_number"].__set__
_set_offset = WalBatch.__dict__["offset"].__set__
_set_payload = WalBatch.__dict__["payload"].__set__


_CF_TAGS = frozenset({0x4, 0x5, 0x8, 0xE})           # carry a varint32 column-family id
_PLAIN_TAGS = frozenset({0x0, 0x1, 0x3, 0x7, 0xF})    # column family 0 (or LogData)
_TWO_SLICE_TAGS = frozenset({0x1, 0x5, 0xE, 0xF})     # key and value, or range start and end


class _TooLong(Exception):
    """A varint32 ran past 5 bytes; only raised inside this module."""


def _varint32(p: bytes, i: int) -> tuple[int, int]:
    """Decode the varint32 at ``p[i]``; return ``(value, next_index)``.

    Only the multi-byte path of the inline decoding ends up here. Truncation
    raises ``IndexError`` like the inline path does.
    """
    result = 0
    shift = 0
    while shift <= 28:
        b = p[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result > 0xFFFFFFFF:
                raise _TooLong
            return result, i
        shift += 7
    raise _TooLong


def decode_batch(
    payload: bytes, *, path: str = "?", offset: int = 0, log_number: int = 0
) -> WalBatch:
    """Decode a serialized WriteBatch into op tuples.

    ``path``/``offset``/``log_number`` only label the result and any error: the
    offset is that of the log record carrying the payload.

    Raises ``WalCorruption`` for truncated or inconsistent payloads and
    ``WalUnsupported`` for entry types other than put/delete/single
    delete/range delete (LogData entries are skipped: they carry no sequence number).
    """
    p = payload if type(payload) is bytes else bytes(payload)
    ops: list[Op] = []
    append = ops.append
    seq, count = _scan(
        p,
        lambda key, value, cf: append((PUT, cf, key, value)),
        lambda key, cf: append((DELETE, cf, key, b"")),
        lambda key, cf: append((SINGLE_DELETE, cf, key, b"")),
        lambda begin, end, cf: append((DELETE_RANGE, cf, begin, end)),
        _IDENTITY,
        path,
        offset,
    )
    batch: WalBatch = _new_object(WalBatch)
    _set_seq(batch, seq)
    _set_count(batch, count)
    _set_ops(batch, ops)
    _set_log_number(batch, log_number)
    _set_offset(batch, offset)
    _set_payload(batch, p)
    return batch


def replay_batch(
    payload: bytes,
    put: Callable[[bytes, bytes, Any], object],
    delete: Callable[[bytes, Any], object],
    delete_range: Callable[[bytes, bytes, Any], object],
    handles: Mapping[int, Any],
    *,
    where: str = "?",
) -> tuple[int, int]:
    """Decode a serialized WriteBatch straight into ``put``/``delete``/``delete_range`` calls.

    The replica's apply path: ``put(key, value, handles[cf_id])`` and friends, in entry order,
    with no intermediate op tuples. Accepts and rejects exactly what ``decode_batch`` does
    (property tests hold both implementations to that); single deletes are replayed as
    deletes. Returns ``(seq, count)``. On an error some calls may already have been made:
    callers pass the methods of a WriteBatch they only commit after this returns.

    Uses the C accelerator when it was built; on malformed input it re-decodes in Python
    (with no-op sinks) only to raise the precise error.
    """
    if _c_replay is not None:
        result: tuple[int, int] | None = _c_replay.replay(payload, put, delete, delete_range,
                                                          handles)
        if result is not None:
            return result
        _replay_batch_py(payload, _ignore, _ignore, _ignore, _IDENTITY, where=where)
        raise WalCorruption(where, 0, "WriteBatch rejected by the C decoder but not by the "
                            "Python one; refusing it")  # a decoder bug; never apply
    return _replay_batch_py(payload, put, delete, delete_range, handles, where=where)


def check_batch(
    payload: bytes, *, path: str = "?", offset: int = 0, log_number: int = 0
) -> WalBatch:
    """Validate a serialized WriteBatch as ``decode_batch`` does, without decoding its ops.

    For readers that only forward the bytes (the primary's stream): read ``payload``, not
    ``ops`` (empty when the C accelerator did the check). Raises what ``decode_batch`` raises.
    """
    if _c_replay is not None:
        header: tuple[int, int] | None = _c_replay.validate(payload)
        if header is not None:
            batch: WalBatch = _new_object(WalBatch)
            _set_seq(batch, header[0])
            _set_count(batch, header[1])
            _set_ops(batch, [])
            _set_log_number(batch, log_number)
            _set_offset(batch, offset)
            _set_payload(batch, payload if type(payload) is bytes else bytes(payload))
            return batch
        # A bad batch: the Python decoder names the error.
        decode_batch(payload, path=path, offset=offset, log_number=log_number)
        raise WalCorruption(path, offset, "WriteBatch rejected by the C decoder but not by the "
                            "Python one; refusing it")  # a decoder bug; never forward
    return decode_batch(payload, path=path, offset=offset, log_number=log_number)


def cut_batch(batch: WalBatch, from_seq: int) -> WalBatch:
    """The part of ``batch`` from ``from_seq`` on: its entries from the one that takes
    ``from_seq`` (LogData before it dropped), under a header that starts there.

    For a record that holds several writes — a replica applies a run of the primary's batches
    as one — and a reader that must start after the first of them. Whether ``from_seq`` is
    where one of those writes starts is the caller's to know: cut elsewhere, the part would
    be half a write. ``batch`` was validated when it was read; ``ops``, if decoded, are cut
    alike.
    """
    skip = from_seq - batch.seq
    if not 0 < skip < batch.count:
        raise ValueError(f"seq {from_seq} is not inside batch [{batch.seq}, {batch.last_seq}] "
                         "past its first seq")
    p = batch.payload
    at = HEADER_SIZE
    counted = 0
    try:
        while True:
            tag = p[at]
            if counted == skip and tag != TAG_LOG_DATA:
                break
            at += 1
            if tag in _CF_TAGS:
                _, at = _varint32(p, at)
            size, at = _varint32(p, at)
            at += size
            if tag in _TWO_SLICE_TAGS:
                size, at = _varint32(p, at)
                at += size
            if tag != TAG_LOG_DATA:
                counted += 1
    except (IndexError, _TooLong):
        raise WalCorruption("?", batch.offset, f"WriteBatch at seq {batch.seq} ends before "
                            f"its entry for seq {from_seq}") from None
    cut: WalBatch = _new_object(WalBatch)
    _set_seq(cut, from_seq)
    _set_count(cut, batch.count - skip)
    _set_ops(cut, batch.ops[skip:] if batch.ops else [])
    _set_log_number(cut, batch.log_number)
    _set_offset(cut, batch.offset)
    _set_payload(cut, _HEADER.pack(from_seq, batch.count - skip) + p[at:])
    return cut


def _ignore(*args: object) -> None:
    return None


def _replay_batch_py(
    payload: bytes,
    put: Callable[[bytes, bytes, Any], object],
    delete: Callable[[bytes, Any], object],
    delete_range: Callable[[bytes, bytes, Any], object],
    handles: Mapping[int, Any] | _Identity,
    *,
    where: str = "?",
) -> tuple[int, int]:
    """The pure-Python replay: the reference the C accelerator is tested against."""
    return _scan(payload, put, delete, delete, delete_range, handles, where, 0)


class _Identity:
    """Maps every column-family id to itself: decode_batch wants ids, and re-decoding to
    name an error needs any handle at all."""

    def __getitem__(self, cf: int) -> int:
        return cf


_IDENTITY = _Identity()


def _scan(
    payload: bytes,
    put: Callable[[bytes, bytes, Any], object],
    delete: Callable[[bytes, Any], object],
    single_delete: Callable[[bytes, Any], object],
    delete_range: Callable[[bytes, bytes, Any], object],
    handles: Mapping[int, Any] | _Identity,
    path: str,
    offset: int,
) -> tuple[int, int]:
    """The one Python WriteBatch parser: calls a sink per entry, returns (seq, count).

    Written for CPython speed: one ``bytes`` object sliced directly, varints decoded inline
    with a single-byte fast path, and truncation detected by letting an out-of-range index
    raise ``IndexError`` (free inside ``try`` on 3.11+) instead of checking each read.
    """
    p = payload if type(payload) is bytes else bytes(payload)
    n = len(p)
    if n < HEADER_SIZE:
        raise WalCorruption(
            path, offset, f"WriteBatch of {n} bytes is shorter than its {HEADER_SIZE}-byte header"
        )
    seq, count = _HEADER.unpack_from(p, 0)
    done = 0
    i = HEADER_SIZE
    start = i
    try:
        while i < n:
            start = i
            tag = p[i]
            i += 1
            if tag in _CF_TAGS:
                cf = p[i]
                i += 1
                if cf >= 0x80:
                    cf, i = _varint32(p, i - 1)
            elif tag in _PLAIN_TAGS:
                cf = 0
            else:
                raise WalUnsupported(path, offset, f"tag {tag:#x} ({tag_name(tag)})", tag)
            # Every supported entry starts with one length-prefixed slice (a key, a range
            # start, or LogData's blob); puts and range deletes carry a second one.
            klen = p[i]
            i += 1
            if klen >= 0x80:
                klen, i = _varint32(p, i - 1)
            j = i + klen
            if j > n:
                raise IndexError
            first = p[i:j]
            i = j
            if tag == 0x3:
                continue  # LogData: no sequence number, nothing to apply
            if tag in _TWO_SLICE_TAGS:
                vlen = p[i]
                i += 1
                if vlen >= 0x80:
                    vlen, i = _varint32(p, i - 1)
                j = i + vlen
                if j > n:
                    raise IndexError
                second = p[i:j]
                i = j
                if tag == 0x1 or tag == 0x5:
                    put(first, second, handles[cf])
                else:
                    if first > second:
                        # RocksDB writes such a batch to its WAL and only then fails the
                        # memtable insert, leaving the batch half-applied and the DB stopped.
                        raise WalCorruption(
                            path, offset,
                            f"WriteBatch entry at payload byte {start} is a range deletion "
                            "whose end key sorts before its start key",
                        )
                    delete_range(first, second, handles[cf])
            elif tag == 0x0 or tag == 0x4:
                delete(first, handles[cf])
            else:
                single_delete(first, handles[cf])
            done += 1
    except IndexError:
        raise WalCorruption(
            path, offset,
            f"WriteBatch entry at payload byte {start} (tag {p[start]:#x}) is truncated",
        ) from None
    except _TooLong:
        raise WalCorruption(
            path, offset, f"WriteBatch entry at payload byte {start} has an invalid varint32"
        ) from None
    if done != count:
        raise WalCorruption(
            path, offset, f"WriteBatch count mismatch: header says {count}, decoded {done} entries"
        )
    return seq, count


def _put_varint32(out: bytearray, v: int) -> None:
    if not 0 <= v <= 0xFFFFFFFF:
        raise ValueError(f"varint32 out of range: {v}")
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _put_slice(out: bytearray, s: bytes) -> None:
    _put_varint32(out, len(s))
    out += s


def encode_batch(seq: int, ops: Sequence[Op]) -> bytes:
    """Serialize ops the way RocksDB would (plain tags for CF 0, CF tags otherwise).

    The inverse of ``decode_batch``; meant for tests and fuzzing.
    """
    out = bytearray(_HEADER.pack(seq, len(ops)))
    for kind, cf, key, value in ops:
        if kind == PUT:
            tags = (TAG_VALUE, TAG_CF_VALUE)
        elif kind == DELETE:
            tags = (TAG_DELETION, TAG_CF_DELETION)
        elif kind == SINGLE_DELETE:
            tags = (TAG_SINGLE_DELETION, TAG_CF_SINGLE_DELETION)
        elif kind == DELETE_RANGE:
            tags = (TAG_RANGE_DELETION, TAG_CF_RANGE_DELETION)
        else:
            raise ValueError(f"unknown op kind {kind}")
        if cf == 0:
            out.append(tags[0])
        else:
            out.append(tags[1])
            _put_varint32(out, cf)
        _put_slice(out, key)
        if kind in (PUT, DELETE_RANGE):
            _put_slice(out, value)
        elif value:
            raise ValueError(f"{_KIND_NAMES[kind]} op must have an empty value")
    return bytes(out)

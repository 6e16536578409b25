"""RocksDB log-file record format: reading logical records from one WAL file.

Owns: the physical layout of a RocksDB log file (db/log_format.h) — 32 KiB
blocks, 7-byte record headers, masked CRC32C, FULL/FIRST/MIDDLE/LAST
fragmentation, block-trailer padding — and incremental reading of a file that
may still be growing. Also a writer of valid log files, for tests.
Must never: interpret payloads (that is ``batch.py``), decide which file to read
next (that is ``reader.py``), silently skip a record type it does not know, or
treat an incomplete trailing record as an error (a live log is simply not
finished yet).

Header layout: masked crc32c (fixed32, over type byte + payload), length
(fixed16), type (1 byte).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
from collections.abc import Iterable

import crc32c

from hacluster.wal.errors import WalCorruption, WalUnsupported

__all__ = [
    "BLOCK_SIZE",
    "HEADER_SIZE",
    "LogRecordReader",
    "mask_crc",
    "unmask_crc",
    "unsupported_record_type",
    "write_log_file",
]

log = logging.getLogger(__name__)

BLOCK_SIZE = 32768
HEADER_SIZE = 7

ZERO_TYPE = 0
FULL_TYPE = 1
FIRST_TYPE = 2
MIDDLE_TYPE = 3
LAST_TYPE = 4

_RECORD_TYPE_NAMES: dict[int, str] = {
    5: "recyclable full",
    6: "recyclable first",
    7: "recyclable middle",
    8: "recyclable last",
    9: "set compression type",
    10: "user-defined timestamp size",
    11: "recyclable user-defined timestamp size",
    130: "predecessor WAL info",
    131: "recyclable predecessor WAL info",
}

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF

_HEADER = struct.Struct("<IHB")

# CRC of the type byte alone, so the payload's CRC can be chained onto it without
# first copying type byte + payload into one buffer.
_TYPE_CRC = tuple(crc32c.crc32c(bytes([t])) for t in range(LAST_TYPE + 1))

# Reading whole blocks keeps reads aligned; 1 MiB amortises the syscall and the
# Python-level loop setup without holding much memory.
_CHUNK = 32 * BLOCK_SIZE

# Outcomes of parsing one buffer.
_NEED_MORE = 0  # buffer ended inside a header or record
_ZERO = 1  # hit a zero header: nothing more written yet (or preallocated space)
_LIMIT = 2  # caller's max_bytes / max_records reached


def mask_crc(crc: int) -> int:
    """Mask a CRC the way RocksDB stores it (crc of data containing crcs is weak)."""
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def unmask_crc(masked: int) -> int:
    """Inverse of ``mask_crc``."""
    rot = (masked - _MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


def unsupported_record_type(path: str, offset: int, rtype: int) -> WalUnsupported:
    """The error for a log record type this reader refuses to interpret."""
    name = _RECORD_TYPE_NAMES.get(rtype, "unknown")
    return WalUnsupported(path, offset, f"record type {rtype} ({name})", rtype, "WAL record type")


class LogRecordReader:
    """Reads complete logical records from one log file, incrementally.

    The file descriptor stays open for the reader's lifetime, so a log that
    RocksDB moves to ``archive/`` (a rename) keeps being readable.
    """

    def __init__(self, path: str | os.PathLike[str], *, log_number: int = 0) -> None:
        self.path = os.fspath(path)
        self.log_number = log_number
        self._fd: int | None = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._offset = 0

    @property
    def offset(self) -> int:
        """File offset of the next unread logical record (its first fragment)."""
        return self._offset

    @property
    def closed(self) -> bool:
        return self._fd is None

    def size(self) -> int:
        """Current size of the file (it may still be growing)."""
        if self._fd is None:
            raise ValueError(f"log reader for {self.path} is closed")
        return os.fstat(self._fd).st_size

    def unread_bytes(self) -> bytes:
        """Bytes between ``offset`` and the current end of file (diagnostics)."""
        if self._fd is None:
            raise ValueError(f"log reader for {self.path} is closed")
        return os.pread(self._fd, max(0, self.size() - self._offset), self._offset)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LogRecordReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort only; owners are expected to call close().
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def read_records(
        self, max_bytes: int | None = None, *, max_records: int | None = None
    ) -> list[tuple[int, bytes]]:
        """Return ``(offset_of_first_fragment, payload)`` for each complete logical
        record available now.

        Stops early once ``max_bytes`` of payload or ``max_records`` records have
        been returned (at least one record is returned if one is available). A
        partial trailing record is not an error: it is returned by a later call,
        once the writer has finished it. If a bad record follows good ones, the
        good ones are returned and the next call raises.
        """
        if self._fd is None:
            raise ValueError(f"log reader for {self.path} is closed")
        out: list[tuple[int, bytes]] = []
        limit_bytes = max_bytes if max_bytes is not None else sys.maxsize
        limit_records = max_records if max_records is not None else sys.maxsize
        chunk = _CHUNK
        returned = 0
        while True:
            start = self._offset
            # Reads end on a block boundary, which keeps them aligned with the
            # writer's blocks and makes the trailer arithmetic below position-only.
            want = chunk - start % BLOCK_SIZE
            data = os.pread(self._fd, want, start)
            try:
                status, returned = self._parse(
                    data, start, out, returned, limit_bytes, limit_records
                )
            except (WalCorruption, WalUnsupported):
                # Hand out the good records before the bad one; the next call
                # starts at the bad record again and raises.
                if out:
                    return out
                raise
            if status != _NEED_MORE or len(data) < want:
                return out
            if self._offset == start:
                # One logical record is larger than the buffer: grow until it fits.
                chunk *= 2
            else:
                chunk = _CHUNK

    def _parse(
        self,
        data: bytes,
        base: int,
        out: list[tuple[int, bytes]],
        returned: int,
        limit_bytes: int,
        limit_records: int,
    ) -> tuple[int, int]:
        """Parse physical records in ``data`` (file bytes starting at ``base``),
        appending complete logical records to ``out`` and advancing ``_offset``
        past each. Returns why it stopped and the payload bytes returned so far."""
        path = self.path
        n = len(data)
        pos = 0
        # End of the last complete logical record in ``data``; _offset follows it
        # however we leave (return or raise), so a retry resumes right there.
        committed = 0
        block_start = base % BLOCK_SIZE
        unpack = _HEADER.unpack_from
        crc_fn = crc32c.crc32c
        type_crc = _TYPE_CRC
        append = out.append
        nout = len(out)
        # State of the logical record being assembled from fragments.
        rec_start = -1
        frags: list[bytes] = []
        try:
            while True:
                block_left = BLOCK_SIZE - (block_start + pos) % BLOCK_SIZE
                if block_left < HEADER_SIZE:
                    # Too small for a header: the writer zero-filled it and moved on.
                    if pos + block_left > n:
                        return _NEED_MORE, returned
                    pos += block_left
                    if rec_start < 0:
                        committed = pos
                    continue
                if pos + HEADER_SIZE > n:
                    return _NEED_MORE, returned
                masked, length, rtype = unpack(data, pos)
                if rtype > LAST_TYPE:
                    raise unsupported_record_type(path, base + pos, rtype)
                if rtype == ZERO_TYPE:
                    if length == 0 and masked == 0:
                        return _ZERO, returned
                    raise WalCorruption(
                        path,
                        base + pos,
                        f"zero-type record with length {length} and non-zero header",
                    )
                if HEADER_SIZE + length > block_left:
                    raise WalCorruption(
                        path,
                        base + pos,
                        f"record length {length} overruns its block ({block_left} bytes left)",
                    )
                end = pos + HEADER_SIZE + length
                if end > n:
                    return _NEED_MORE, returned
                payload = data[pos + HEADER_SIZE : end]
                crc = crc_fn(payload, type_crc[rtype])
                # mask_crc inlined: this runs once per record.
                if ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32 != masked:
                    raise WalCorruption(path, base + pos, "checksum mismatch")
                if rtype == FULL_TYPE:
                    if rec_start >= 0:
                        raise WalCorruption(
                            path, base + pos, "FULL record inside a fragmented record"
                        )
                    append((base + pos, payload))
                    pos = committed = end
                    nout += 1
                    returned += length
                    if nout >= limit_records or returned >= limit_bytes:
                        return _LIMIT, returned
                elif rtype == FIRST_TYPE:
                    if rec_start >= 0:
                        raise WalCorruption(
                            path, base + pos, "FIRST record inside a fragmented record"
                        )
                    rec_start = base + pos
                    frags = [payload]
                    pos = end
                elif rec_start < 0:
                    kind = "MIDDLE" if rtype == MIDDLE_TYPE else "LAST"
                    raise WalCorruption(
                        path, base + pos, f"{kind} record without a preceding FIRST record"
                    )
                elif rtype == MIDDLE_TYPE:
                    frags.append(payload)
                    pos = end
                else:
                    frags.append(payload)
                    whole = b"".join(frags)
                    append((rec_start, whole))
                    rec_start = -1
                    frags = []
                    pos = committed = end
                    nout += 1
                    returned += len(whole)
                    if nout >= limit_records or returned >= limit_bytes:
                        return _LIMIT, returned
        finally:
            self._offset = base + committed


def _fragments(payload: bytes, block_offset: int) -> Iterable[tuple[int, bytes, int]]:
    """Yield ``(type, fragment, padding_before)`` the way RocksDB's log writer splits
    a record starting at ``block_offset`` within the current block."""
    pos = 0
    first = True
    while True:
        left = BLOCK_SIZE - block_offset
        pad = 0
        if left < HEADER_SIZE:
            pad = left
            block_offset = 0
            left = BLOCK_SIZE
        avail = left - HEADER_SIZE
        frag = payload[pos : pos + avail]
        pos += len(frag)
        last = pos >= len(payload)
        if first and last:
            rtype = FULL_TYPE
        elif first:
            rtype = FIRST_TYPE
        elif last:
            rtype = LAST_TYPE
        else:
            rtype = MIDDLE_TYPE
        yield rtype, frag, pad
        block_offset += HEADER_SIZE + len(frag)
        first = False
        if last:
            return


def encode_records(payloads: Iterable[bytes], start_offset: int = 0) -> bytes:
    """Encode payloads as log records, as if appended at file offset ``start_offset``."""
    out = bytearray()
    for payload in payloads:
        block_offset = (start_offset + len(out)) % BLOCK_SIZE
        for rtype, frag, pad in _fragments(bytes(payload), block_offset):
            out += b"\x00" * pad
            crc = mask_crc(crc32c.crc32c(frag, _TYPE_CRC[rtype]))
            out += _HEADER.pack(crc, len(frag), rtype)
            out += frag
    return bytes(out)


def write_log_file(path: str | os.PathLike[str], payloads: Iterable[bytes]) -> None:
    """Write a valid log file holding ``payloads`` (for tests and fuzzing),
    fragmenting across 32 KiB blocks and padding block trailers like RocksDB."""
    with open(path, "wb") as f:
        f.write(encode_records(payloads))

"""Following a RocksDB database's WAL by sequence number.

Owns: finding WAL files (``NNNNNN.log`` in the DB directory and in
``archive/``, where RocksDB moves obsolete logs when WAL retention is on),
choosing the log that holds a wanted sequence number, tailing the live log,
moving on to the next log at rollover, and checking that sequence numbers are
contiguous across batches and logs.
Must never: write to, rename or delete anything in the DB directory; open the
database through RocksDB; block or sleep waiting for data (``read`` returns
what is there now); or hand out a batch that does not start exactly at
``next_seq``.

Why re-reading a log after a newer one appears is enough: RocksDB switches logs
inside its write thread, after the previous write to the old log has been
handed to the OS, so once a higher-numbered log is visible nothing more will be
appended to the old one.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from pathlib import Path

import crc32c

from hacluster.wal.batch import HEADER_SIZE as BATCH_HEADER_SIZE
from hacluster.wal.batch import WalBatch, check_batch, cut_batch, decode_batch
from hacluster.wal.errors import (
    WalCorruption,
    WalError,
    WalGone,
    WalNotAtBoundary,
)
from hacluster.wal.records import (
    BLOCK_SIZE,
    FIRST_TYPE,
    FULL_TYPE,
    LAST_TYPE,
    ZERO_TYPE,
    LogRecordReader,
    mask_crc,
    unsupported_record_type,
)
from hacluster.wal.records import HEADER_SIZE as RECORD_HEADER_SIZE

__all__ = ["WalGone", "WalNotAtBoundary", "WalReader", "list_logs", "log_file_name"]

log = logging.getLogger(__name__)

_LOG_NAME = re.compile(r"(\d{6,})\.log")
_RECORD_HEADER = struct.Struct("<IHB")
_BATCH_HEADER = struct.Struct("<QI")

ARCHIVE_DIR = "archive"


def log_file_name(log_number: int) -> str:
    """RocksDB's file name for WAL number ``log_number``."""
    return f"{log_number:06d}.log"


def list_logs(db_dir: str | os.PathLike[str]) -> dict[int, Path]:
    """Map log number -> path for every WAL in ``db_dir`` and ``db_dir/archive``.

    A log present in both places (mid-move) maps to the live directory's copy.
    """
    root = Path(db_dir)
    found: dict[int, Path] = {}
    # The live directory is listed before the archive: RocksDB only ever moves
    # logs live -> archive, so a log renamed between the two listings still
    # shows up in one of them.
    for directory in (root, root / ARCHIVE_DIR):
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            # A DB directory is mostly .sst files; skip them before the regex.
            if not entry.name.endswith(".log"):
                continue
            m = _LOG_NAME.fullmatch(entry.name)
            if m is None:
                continue
            number = int(m.group(1))
            if number not in found:
                found[number] = Path(entry.path)
    return found


class WalReader:
    """Yields WalBatches whose sequence numbers cover start_seq onward, following a live DB.

    Not thread-safe. After a ``WalError`` or ``WalGone`` the reader is stuck on
    that error (every later ``read`` raises it again): open a new one.
    """

    def __init__(self, db_dir: str | os.PathLike[str], start_seq: int, *,
                 decode_ops: bool = True, cut_at_start: bool = False) -> None:
        """``decode_ops=False``: batches are validated but only their ``payload`` is kept (a
        stream forwards the bytes; decoding every op on the primary would be wasted work).

        ``start_seq`` inside a record: ``WalNotAtBoundary``, or with ``cut_at_start`` the
        record's part from ``start_seq`` on (``cut_batch``) — for a caller that knows
        ``start_seq`` begins a write of that record (a run a replica applied as one)."""
        if start_seq < 1:
            raise ValueError(
                f"start_seq must be >= 1 (RocksDB numbers writes from 1), got {start_seq}"
            )
        self._dir = Path(db_dir)
        self._decode = decode_batch if decode_ops else check_batch
        self._cut_at_start = cut_at_start
        self._start_seq = start_seq
        self._next_seq = start_seq
        self._rr: LogRecordReader | None = None
        self._log_number = 0
        # True once a newer log has been seen while the current one had nothing new.
        self._sealed = False
        # True once a batch at start_seq has been found; before that, earlier
        # batches are skipped rather than treated as out of order.
        self._found_start = False
        self._last_batch_log = 0
        # Logs that disappeared before we could open them (normally empty logs
        # that RocksDB deleted); a sequence gap after one means data is gone.
        self._lost_logs: list[int] = []
        self._first_seq_cache: dict[int, int] = {}
        self._error: BaseException | None = None
        self._error_position: tuple[int, int] | None = None
        self._closed = False

    @property
    def next_seq(self) -> int:
        """The sequence number expected next."""
        return self._next_seq

    @property
    def position(self) -> tuple[int, int]:
        """``(log_number, offset)`` of the next unread record; ``(0, 0)`` before the
        first ``read`` has found a log to start from."""
        if self._error_position is not None:
            return self._error_position
        if self._rr is None:
            return (0, 0)
        return (self._log_number, self._rr.offset)

    def close(self) -> None:
        self._closed = True
        if self._rr is not None:
            self._rr.close()
            self._rr = None

    def __enter__(self) -> WalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- locating files -------------------------------------------------------

    def _paths(self, number: int) -> tuple[Path, Path]:
        name = log_file_name(number)
        return self._dir / name, self._dir / ARCHIVE_DIR / name

    def _open_log(self, number: int) -> LogRecordReader | None:
        """Open log ``number`` wherever it is now; None if it no longer exists."""
        for path in self._paths(number):
            try:
                return LogRecordReader(path, log_number=number)
            except FileNotFoundError:
                continue
        return None

    def _first_seq(self, number: int) -> int | None:
        """Sequence number of the first batch in log ``number``, or None if the log
        has no complete first record yet (or no longer exists).

        Reads only the first physical record (at most one block), and checks its checksum:
        a damaged sequence number must not send the reader to the wrong log, or make it
        report data as gone that is merely corrupt.
        """
        cached = self._first_seq_cache.get(number)
        if cached is not None:
            return cached
        want = RECORD_HEADER_SIZE + BATCH_HEADER_SIZE
        head = b""
        path = ""
        for candidate in self._paths(number):
            try:
                with open(candidate, "rb") as f:
                    head = f.read(BLOCK_SIZE)
            except FileNotFoundError:
                continue
            path = str(candidate)
            break
        if len(head) < want:
            return None
        masked, length, rtype = _RECORD_HEADER.unpack_from(head, 0)
        if rtype == ZERO_TYPE and length == 0 and masked == 0:
            return None
        if rtype > LAST_TYPE:
            raise unsupported_record_type(path, 0, rtype)
        if rtype not in (FULL_TYPE, FIRST_TYPE) or length < BATCH_HEADER_SIZE:
            raise WalCorruption(
                path, 0, f"log does not start with a WriteBatch (type {rtype}, length {length})"
            )
        end = RECORD_HEADER_SIZE + length
        if end > BLOCK_SIZE:
            raise WalCorruption(
                path, 0, f"record length {length} overruns its block ({BLOCK_SIZE} bytes left)"
            )
        if len(head) < end:
            return None  # the first record is still being written
        # The checksum covers the type byte and the payload.
        if mask_crc(crc32c.crc32c(head[RECORD_HEADER_SIZE - 1 : end])) != masked:
            raise WalCorruption(path, 0, "checksum mismatch")
        seq = int(_BATCH_HEADER.unpack_from(head, RECORD_HEADER_SIZE)[0])
        self._first_seq_cache[number] = seq
        return seq

    def _position(self) -> bool:
        """Open the log holding ``start_seq``; False if no log has data yet."""
        while True:
            logs = list_logs(self._dir)
            oldest: tuple[int, int] | None = None
            # The error of the lowest-numbered log so far, if its start cannot be read.
            unreadable: WalError | None = None
            # Newest first: a caller is usually near the head, so this normally
            # probes one or two files.
            for number in sorted(logs, reverse=True):
                try:
                    first = self._first_seq(number)
                except WalError as exc:
                    # Where this log starts is unknown. An older log that starts at or before
                    # start_seq still leads to it in order: its good batches come first, and
                    # reading raises this error when it gets there.
                    unreadable = exc
                    continue
                if first is None:
                    continue
                if first > self._start_seq:
                    oldest = (number, first)
                    unreadable = None
                    continue
                rr = self._open_log(number)
                if rr is None:
                    break  # expired between listing and opening: look again
                self._rr = rr
                self._log_number = number
                log.info(
                    "WAL reader for %s: seq %d starts in log %d (first seq %d)",
                    self._dir, self._start_seq, number, first,
                )  # fmt: skip
                return True
            else:
                if unreadable is not None:
                    raise unreadable  # start_seq may be in that log: say why it cannot be read
                if oldest is None:
                    return False
                raise WalGone(
                    f"sequence {self._start_seq} is older than the oldest retained WAL data "
                    f"in {self._dir} (log {oldest[0]} starts at sequence {oldest[1]})",
                    oldest[1],
                )

    def _switch_log(self) -> bool:
        """Move from the exhausted current log to the next higher one that can be
        opened. Returns False if none can be opened right now."""
        assert self._rr is not None
        logs = list_logs(self._dir)
        for number in sorted(n for n in logs if n > self._log_number):
            rr = self._open_log(number)
            if rr is None:
                if number not in self._lost_logs:
                    self._lost_logs.append(number)
                    log.warning("WAL %d in %s vanished before it could be read", number, self._dir)
                continue
            old = self._rr
            self._report_leftover(old)
            old.close()
            log.debug("WAL reader for %s: log %d -> %d", self._dir, self._log_number, number)
            self._rr = rr
            self._log_number = number
            self._sealed = False
            # Logs that vanished below the one now open can be forgotten once
            # continuity across them has been checked; keep them until then.
            return True
        return False

    def _report_leftover(self, rr: LogRecordReader) -> None:
        """A sealed log should end exactly at its last record; anything else is a
        torn tail (crash) or preallocated zeros. Neither loses data by itself: the
        sequence check on the next log catches any real loss."""
        try:
            rest = rr.unread_bytes()
        except OSError:
            return
        if rest.strip(b"\x00"):
            log.warning(
                "WAL %s ends with %d bytes of incomplete record at offset %d",
                rr.path, len(rest), rr.offset,
            )  # fmt: skip

    # -- reading ----------------------------------------------------------------

    def read(self, max_batches: int = 1000, max_bytes: int = 8 << 20) -> list[WalBatch]:
        """Return the complete batches available now, starting at ``next_seq``
        (possibly none). Never blocks.

        Stops after ``max_batches`` batches or once ``max_bytes`` of payload has
        been returned. If an error is found after some batches were collected,
        those are returned and the error is raised by the next call.
        """
        if self._closed:
            raise ValueError("WalReader is closed")
        if self._error is not None:
            raise self._error
        out: list[WalBatch] = []
        try:
            self._read_into(out, max(1, max_batches), max(1, max_bytes))
        except (WalError, WalGone) as exc:
            self._error = exc
            if self._error_position is None and self._rr is not None:
                # Record-level errors leave the record reader on the bad record.
                self._error_position = (self._log_number, self._rr.offset)
            if out:
                return out
            raise
        return out

    def _read_into(self, out: list[WalBatch], max_batches: int, max_bytes: int) -> None:
        if self._rr is None and not self._position():
            return
        nbytes = 0
        unpack_header = _BATCH_HEADER.unpack_from
        while len(out) < max_batches and nbytes < max_bytes:
            rr = self._rr
            assert rr is not None
            records = rr.read_records(max_bytes - nbytes, max_records=max_batches - len(out))
            if not records:
                if self._sealed:
                    if not self._switch_log():
                        return
                    continue
                if out:
                    # Data came from this log during this call: look for a newer log on the
                    # next call, so live tailing does not list two directories per write.
                    return
                if any(n > self._log_number for n in list_logs(self._dir)):
                    self._sealed = True
                    continue
                return
            number = self._log_number
            path = rr.path
            for offset, payload in records:
                if len(payload) >= BATCH_HEADER_SIZE:
                    # Cheap header peek: skipped batches need no full decode.
                    seq, count = unpack_header(payload, 0)
                    if count == 0:
                        continue
                    if not self._found_start and seq + count - 1 < self._next_seq:
                        continue
                try:
                    batch = self._decode(payload, path=path, offset=offset, log_number=number)
                    if batch.seq != self._next_seq:
                        if (self._cut_at_start and not self._found_start
                                and batch.seq < self._next_seq <= batch.last_seq):
                            batch = cut_batch(batch, self._next_seq)
                        else:
                            self._sequence_error(batch, path)
                except (WalError, WalGone):
                    # The reader has already moved past this record; position
                    # must still name it.
                    self._error_position = (number, offset)
                    raise
                self._found_start = True
                self._lost_logs.clear()
                self._last_batch_log = number
                self._next_seq = batch.seq + batch.count
                out.append(batch)
                nbytes += len(payload)

    def _sequence_error(self, batch: WalBatch, path: str) -> None:
        expected = self._next_seq
        if not self._found_start and batch.seq < expected <= batch.last_seq:
            raise WalNotAtBoundary(
                f"sequence {expected} is inside batch [{batch.seq}, {batch.last_seq}] "
                f"(log {batch.log_number} offset {batch.offset}); a replica can only "
                f"resume at a batch boundary",
                None,
                batch.seq,
                batch.last_seq,
            )
        if batch.seq > expected and self._lost_logs:
            raise WalGone(
                f"sequences {expected}..{batch.seq - 1} are gone: WAL(s) "
                f"{', '.join(map(str, self._lost_logs))} in {self._dir} were deleted "
                f"before they could be read",
                None,
            )
        if self._found_start:
            where = f"after log {self._last_batch_log}, in log {batch.log_number}"
        else:
            where = f"in log {batch.log_number} while seeking sequence {expected}"
        raise WalCorruption(
            path,
            batch.offset,
            f"sequence gap: expected {expected}, found batch [{batch.seq}, {batch.last_seq}] "
            f"{where}",
        )

"""pysyncobj's journal file as hacluster reads it: records, loading, per-journal bookkeeping.

Owns pysyncobj's record layout (size, index, term, command, size), loading a journal file at
start (every complete record, in order; a torn final record cut back, counted and logged; damage
anywhere else refused with ``JournalCorruptError``, naming the file and the offset), and
``JournalSync``, the durability bookkeeping kept on each journal (``journal_sync_state``). It
must never sync or patch anything (``raft_journal`` does), and never cut at load anything but a
torn final record.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


class JournalCorruptError(RuntimeError):
    """A Raft file is damaged in a way a torn final write cannot explain: the node must not
    start on it (it could have forgotten entries or a vote it acknowledged)."""


@dataclass
class JournalSync:
    """Durability bookkeeping of one FileJournal (kept on the journal, not the SyncObj: any
    attribute on the SyncObj after its __init__ would be pickled into the dump)."""

    path: str
    dirty: bool = False
    synced_size: int = -1              # the file size at the last fsync
    failed: OSError | None = None      # sticky: a failed msync/fsync is never retried
    appends: int = 0
    resent_kept: int = 0               # entries a resend carried that the log had already
    syncs: int = 0
    sync_seconds: float = 0.0
    torn_records_truncated: int = 0
    # When each entry now in the log was appended here (log index -> monotonic time), for the
    # entries appended since start (not those loaded at start). An index re-appended after a
    # conflict gets the later time: always the time of the entry the log holds at that index.
    received: dict[int, float] = field(default_factory=dict)
    received_prune_at: int = 1024        # prune applied indexes when it grows past this


def _record(command: Any, idx: int, term: int, to_bytes: Callable[[Any], bytes]) -> bytes:
    """pysyncobj's record layout: size, (idx, term, command), size."""
    data = struct.pack("<QQ", idx, term) + to_bytes(command)
    size = struct.pack("<I", len(data))
    return size + data + size


def journal_sync_state(journal: Any) -> JournalSync | None:
    """The durability bookkeeping of a pysyncobj journal (None for an in-memory one)."""
    state = getattr(journal, "_hacluster_sync", None)
    return state if isinstance(state, JournalSync) else None


def _load(self: Any, journal: Any, path: str, state: JournalSync) -> tuple[list[Any], int]:
    """Read the records; cut a torn final record; refuse damage anywhere else."""
    first = int(journal.FIRST_RECORD_OFFSET)
    last_offset_at = int(journal.LAST_RECORD_OFFSET_OFFSET)
    name_size, version_size = int(journal.NAME_SIZE), int(journal.VERSION_SIZE)
    rf = self._FileJournal__journalFile
    mm = rf._ResizableFile__mm
    size = len(mm)
    header = bytes(mm[:first])
    if header == b"\0" * first and bytes(mm[first:first + 4]) == b"\0" * 4:
        # Created, then lost before its first sync (the file is new): an empty journal.
        rf.write(0, self._FileJournal__getDefaultHeader())
        return [], first
    name = header[:name_size].rstrip(b"\0")
    (fmt,) = struct.unpack_from("<I", header, name_size + version_size)
    (end,) = struct.unpack_from("<I", header, last_offset_at)
    if name != journal.APP_NAME or fmt != journal.JOURNAL_FORMAT_VERSION or end < first:
        raise JournalCorruptError(
            f"{path}: not a pysyncobj journal this version reads (header name {name!r}, "
            f"format {fmt}, log end {end}); refusing to start on it")

    entries: list[Any] = []
    offset = first
    reason = ""
    while offset < end:
        rec, reason = _read_record(mm, offset, end, size)
        if rec is None:
            break
        idx, term, command, nxt = rec
        if entries and (idx != entries[-1][1] + 1 or term < entries[-1][2]):
            reason = (f"entry {idx} (term {term}) does not follow entry {entries[-1][1]} "
                      f"(term {entries[-1][2]})")
            break
        entries.append((command, idx, term))
        offset = nxt
    if offset == end:
        return entries, end

    prev = (entries[-1][1], entries[-1][2]) if entries else None
    if _complete_record_ends_at(mm, offset, end, size, prev):
        raise JournalCorruptError(
            f"{path}: damaged record at offset {offset} ({reason}) with complete records "
            f"after it up to offset {end}: not a torn final write. Refusing to start: entries "
            f"this node acknowledged may be lost. Restore the file, or remove this node's Raft "
            f"files and add it back as a new member")
    dropped = end - offset
    log.warning("Raft journal %s: torn final record at offset %d (%s): dropped %d bytes "
                "(file %d bytes); %d entries kept", path, offset, reason, dropped, size,
                len(entries))
    self._FileJournal__setLastRecordOffset(offset)
    zero_to = min(end, size)
    if zero_to > offset:
        rf.write(offset, b"\0" * (zero_to - offset))   # no stale bytes for a later torn write
    state.torn_records_truncated += 1
    return entries, offset


def _read_record(mm: Any, offset: int, end: int, size: int) \
        -> tuple[tuple[int, int, bytes, int] | None, str]:
    if offset + 4 > min(end, size):
        return None, f"size field cut at {min(end, size)}"
    (n,) = struct.unpack("<I", mm[offset:offset + 4])
    nxt = offset + n + 8
    if n < 16:
        return None, f"record size {n} is below the 16 bytes of index and term"
    if nxt > end:
        return None, f"record of {n} bytes runs past the log end {end}"
    if nxt > size:
        return None, f"record of {n} bytes runs past the file end {size}"
    (trailer,) = struct.unpack("<I", mm[nxt - 4:nxt])
    if trailer != n:
        return None, f"size fields differ ({n} and {trailer})"
    idx, term = struct.unpack("<QQ", mm[offset + 4:offset + 20])
    return (idx, term, bytes(mm[offset + 20:nxt - 4]), nxt), ""


def _complete_record_ends_at(mm: Any, damaged_at: int, end: int, size: int,
                             prev: tuple[int, int] | None) -> bool:
    """Does a whole record that follows the damaged one (and continues the log) end the log?

    A power loss tears only what was written after the last sync, at the end; a damaged
    record followed by a complete last record is damage in the middle.
    """
    if end > size or end - 4 < damaged_at:
        return False
    (n,) = struct.unpack("<I", mm[end - 4:end])
    start = end - 8 - n
    if n < 16 or start <= damaged_at:
        return False
    (lead,) = struct.unpack("<I", mm[start:start + 4])
    if lead != n:
        return False
    idx, term = struct.unpack("<QQ", mm[start + 4:start + 20])
    return prev is None or (idx > prev[0] and term >= prev[1])


def applying_index(node: Any) -> int:
    """The log index of the entry pysyncobj is applying (called from within an apply)."""
    return int(node._SyncObj__raftLastApplied) + 1


def received_at(node: Any, idx: int) -> float | None:
    """When this node appended the entry its log holds at ``idx`` (monotonic), if it did so
    since it started; forgets every earlier index (they are applied: never asked again)."""
    state = journal_sync_state(getattr(node, "_SyncObj__raftLog", None))
    if state is None:
        return None
    at = state.received.pop(idx, None)
    if len(state.received) > state.received_prune_at:
        # Entries no command is applied for (pysyncobj's own no-ops and membership changes)
        # are never asked about: drop what is applied, now and then (amortized: the bound
        # grows with what stays, entries received but not yet applied).
        for old in [i for i in state.received if i < idx]:
            del state.received[old]
        state.received_prune_at = max(1024, 2 * len(state.received))
    return at


def journal_stats(node: Any) -> dict[str, Any]:
    """Durability figures of a SyncObj's journal (for raft_status, the bench and tests)."""
    state = journal_sync_state(getattr(node, "_SyncObj__raftLog", None))
    if state is None:
        return {"torn_records_truncated": 0, "appends": 0, "resent_kept": 0, "syncs": 0,
                "sync_seconds": 0.0}
    return {"torn_records_truncated": state.torn_records_truncated, "appends": state.appends,
            "resent_kept": state.resent_kept, "syncs": state.syncs,
            "sync_seconds": state.sync_seconds}

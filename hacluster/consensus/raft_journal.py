"""Durable Raft storage: every patch hacluster applies to pysyncobj's internals, in one place.

pysyncobj keeps Raft's persistent state in three files under the node's data dir and, as
shipped, syncs none of them: the journal (``raft.journal``) is written through an mmap that is
never msynced, the term and vote (``raft.journal.meta``) and the full dump (``raft.dump``) are
written to a tmp file and renamed without fsync. After a power loss a node could forget its
vote (two leaders in one term), lose entries it had acknowledged (a committed entry lost), or
fail to start on a torn final record. This module owns making those files durable:

* journal appends, truncations and compaction are synced (fdatasync of the mapped file, an
  fsync when the file size changed) before any message leaves the node and before the leader
  counts its own entries toward a commit; appends are batched: marked dirty, synced once per round;
* an append-entries that resends entries the follower has is trimmed to what is new, so
  pysyncobj cuts the log only at a real conflict (it cut and rewrote acknowledged entries);
  compaction writes a new journal file and renames it over the old one;
* the term and vote are fsynced (tmp file, rename, directory) before the node acts on them;
* the dump is fsynced before its rename, the directory after;
* a journal whose final record was torn by a power loss is cut back to its last complete
  record (counted, logged); damage anywhere else stops the node with an error naming the file
  and offset;
* a failed journal sync is not retried (the kernel may have dropped the dirty pages: a retry
  could report success for data that never reached the disk).

Two more patches change no storage: each journal notes when it appended each entry (others'
leases are timed from when a renewal arrived: ``raft_journal_format.received_at``), and the
hooks of ``raft_prevote`` run in the tick and the message handling (a node asks for pre-votes
before it starts an election, so a node that was cut off deposes no leader when it is back).

``install_patches()`` is the one entry point (``raft.py`` calls it at import). Each patch
checks first that the private attributes it relies on exist and raises ``RuntimeError``
naming the pysyncobj version and the attribute if not. It must never warn and continue on an
unknown pysyncobj, never let a message leave before the journal is synced, never cut at load
anything but a torn final record, and never add attributes to the SyncObj after its __init__
(pysyncobj pickles those into the dump). ``HACLUSTER_RAFT_NOSYNC=1`` turns every sync off;
it exists for ``bench/raft.py`` only (and the test that proves the fault bites) and is never
a config option.

Two helpers hold no patch and never sync: ``raft_journal_format`` (the record layout, loading a
journal, ``JournalSync``) and ``raft_resend`` (trimming a resent append-entries).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from hacluster.consensus.raft_journal_format import (
    JournalCorruptError,
    JournalSync,
    _load,
    _record,
    journal_stats,
    journal_sync_state,
)
from hacluster.consensus.raft_prevote import (
    PRE_VOTE,
    PRE_VOTE_RESPONSE,
    PreVote,
    heard_from,
    pre_vote_message,
    pre_vote_tick,
)
from hacluster.consensus.raft_resend import _trim_resend
from hacluster.fsutil import fsync_parent

log = logging.getLogger(__name__)

__all__ = ["JournalCorruptError", "install_patches", "journal_stats", "sync_journal"]

NOSYNC_ENV = "HACLUSTER_RAFT_NOSYNC"
# Benchmark only (bench/raft.py measures the cost of durability with it): read once, at import.
SYNC = os.environ.get(NOSYNC_ENV) != "1"

_installed = False


def _version() -> str:
    try:
        from pysyncobj.version import VERSION
        return str(VERSION)
    except Exception:
        return "(unknown version)"


def _require(owner: Any, *names: str) -> None:
    """Fail loudly when pysyncobj is not the layout these patches were written for."""
    for name in names:
        if not hasattr(owner, name):
            what = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", None) \
                or type(owner).__qualname__
            raise RuntimeError(
                f"pysyncobj {_version()}: {what} has no attribute {name!r}; hacluster's Raft "
                f"durability patches (hacluster/consensus/raft_journal.py) rely on it. Use "
                f"pysyncobj >=0.3.14,<0.4 or update the patches.")


def _fsync_dir(path: str) -> None:
    fsync_parent(path)


def _write_durably(path: str, data: bytes, tmp: str | None = None) -> None:
    """Replace ``path`` with ``data``: tmp file, fsync, rename, fsync of the directory."""
    tmp = tmp or path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if SYNC:
                os.fsync(f.fileno())
    except OSError:
        try:
            os.unlink(tmp)        # a full disk: do not leave the half file taking space
        except OSError:
            pass
        raise
    os.replace(tmp, path)
    if SYNC:
        _fsync_dir(path)


# -- the journal sync -------------------------------------------------------------------------

def _refuse_after_failure(state: JournalSync) -> None:
    if state.failed is not None:
        raise OSError(state.failed.errno,
                      f"{state.path}: an earlier journal sync failed ({state.failed}); it is "
                      f"not retried (the written pages may be gone): restart the node")


def sync_journal(journal: Any) -> None:
    """Make every journal write so far durable, if there is any not yet synced.

    One fdatasync of the file (on Linux it writes the mapping's dirty pages, as msync does), or
    an fsync when the file size changed since the last one, so the size is on disk too. Not
    ``mmap.flush()``: CPython 3.11 holds the GIL through its msync, stalling the event loop.
    """
    state = journal_sync_state(journal)
    if state is None or not state.dirty:
        return
    _refuse_after_failure(state)
    if not SYNC:
        state.dirty = False
        return
    rf = journal._FileJournal__journalFile
    mm = rf._ResizableFile__mm
    started = time.perf_counter()
    try:
        fd = rf._ResizableFile__f.fileno()
        size = len(mm)
        if size != state.synced_size:
            os.fsync(fd)
            state.synced_size = size
        else:
            os.fdatasync(fd)
    except OSError as exc:
        state.failed = exc
        log.critical("Raft journal %s: sync failed (%s); the node stops acknowledging Raft "
                     "messages until it is restarted", state.path, exc)
        raise
    state.dirty = False
    state.syncs += 1
    state.sync_seconds += time.perf_counter() - started


# -- the patches ------------------------------------------------------------------------------

def install_patches() -> None:
    """Apply every pysyncobj patch (once); raise RuntimeError if pysyncobj is not as expected."""
    global _installed
    if _installed:
        return
    from pysyncobj import journal, serializer, syncobj

    # Check everything first, so a mismatch leaves pysyncobj unpatched rather than half.
    _require(journal, "ResizableFile", "FileJournal", "MetaStorer", "to_bytes", "loads",
             "dumps", "FIRST_RECORD_OFFSET", "LAST_RECORD_OFFSET_OFFSET", "NAME_SIZE",
             "VERSION_SIZE", "APP_NAME", "JOURNAL_FORMAT_VERSION")
    _require(journal.ResizableFile, "write", "read", "_destroy", "_ResizableFile__extand")
    _require(journal.FileJournal, "add", "clear", "deleteEntriesFrom", "deleteEntriesTo",
             "setCurrentTerm", "onOneSecondTimer", "_destroy",
             "_FileJournal__getDefaultHeader", "_FileJournal__setLastRecordOffset")
    _require(journal.MetaStorer, "storeMeta", "getMeta")
    _require(serializer, "atomicReplace")
    _require(syncobj, "SyncObj", "monotonicTime", "_RAFT_STATE")
    _require(syncobj.SyncObj, "_onTick", "_checkCommandsToApply", "_SyncObj__onBecomeLeader",
             "_SyncObj__setCurrentTerm", "_SyncObj__onMessageReceived")

    _patch_resizable_file(journal)
    _patch_file_journal(journal)
    _patch_meta_storer(journal)
    _patch_serializer(serializer)
    _patch_syncobj(syncobj)
    _installed = True
    if not SYNC:
        log.warning("%s=1: Raft storage is NOT durable (benchmark use only)", NOSYNC_ENV)


def _patch_resizable_file(journal: Any) -> None:
    cls: Any = journal.ResizableFile
    original = cls.write

    def write(self: Any, offset: int, values: bytes) -> None:
        # pysyncobj grows the file by resizing the mmap, which extends it sparsely; writing
        # into such pages on a full file system raises SIGBUS and kills the process. With the
        # blocks allocated first, a full disk is an OSError in the Raft tick instead.
        mm = self._ResizableFile__mm
        end = offset + len(values)
        if end > mm.size():
            grown = max(int(mm.size() * self._ResizableFile__resizeFactor), end)
            os.posix_fallocate(self._ResizableFile__f.fileno(), 0, grown)
            mm.resize(grown)        # the file has the size already; the mapping follows it
        original(self, offset, values)

    cls.write = write


def _patch_file_journal(journal: Any) -> None:
    fj: Any = journal.FileJournal
    to_bytes = journal.to_bytes
    first = int(journal.FIRST_RECORD_OFFSET)
    last_offset_at = int(journal.LAST_RECORD_OFFSET_OFFSET)
    original_clear = fj.clear
    original_delete_from = fj.deleteEntriesFrom
    original_timer = fj.onOneSecondTimer

    def init(self: Any, journal_file: str) -> None:
        rf = journal.ResizableFile(journal_file,
                                   defaultContent=self._FileJournal__getDefaultHeader())
        _require(rf, "_ResizableFile__mm", "_ResizableFile__f", "_ResizableFile__fileName",
                 "_ResizableFile__resizeFactor")
        self._FileJournal__journalFile = rf
        self._FileJournal__journal = []
        self._FileJournal__metaStorer = journal.MetaStorer(journal_file + ".meta")
        _require(self._FileJournal__metaStorer, "_MetaStorer__path")
        self._FileJournal__meta = self._FileJournal__metaStorer.getMeta()
        self._FileJournal__metaSaved = True
        state = JournalSync(journal_file)
        self._hacluster_sync = state
        entries, end = _load(self, journal, journal_file, state)
        self._FileJournal__journal = entries
        self._FileJournal__currentOffset = end
        # The file (and its name in the directory) may be new, or just cut: on disk before
        # any append is acknowledged.
        state.dirty = True
        sync_journal(self)
        if SYNC:
            _fsync_dir(journal_file)
        commit = self._FileJournal__meta.get("raftCommitIndex")
        if entries and isinstance(commit, int) and commit > entries[-1][1]:
            # Only a journal that lost synced entries (a torn record cut, or a file written
            # before these patches) gets here; a commit index past the log would count entries
            # appended later as committed without a majority. It is re-learnt from the leader.
            log.warning("Raft journal %s: commit index %d is past the last entry %d; lowered",
                        journal_file, commit, entries[-1][1])
            self._FileJournal__meta["raftCommitIndex"] = entries[-1][1]
            self._FileJournal__metaSaved = False

    def add(self: Any, command: Any, idx: int, term: int) -> None:
        # pysyncobj appends to its in-memory log before writing the file: a write that fails
        # (full disk) left the two apart. Write first; only a write that landed is in memory.
        record = _record(command, idx, term, to_bytes)
        self._FileJournal__journalFile.write(self._FileJournal__currentOffset, record)
        self._FileJournal__journal.append((command, idx, term))
        self._FileJournal__currentOffset += len(record)
        self._FileJournal__setLastRecordOffset(self._FileJournal__currentOffset)
        state = self._hacluster_sync
        state.dirty = True               # synced once per round, before the next send
        state.appends += 1
        state.received[idx] = time.monotonic()

    def clear(self: Any) -> None:
        # The records that follow are written over the old ones: the shorter log must be on
        # disk first, or a power loss could leave the old end in the header over new records.
        original_clear(self)
        self._hacluster_sync.dirty = True
        sync_journal(self)

    def delete_entries_from(self: Any, entry_from: int) -> None:
        # Only a real conflict gets here (see _trim_resend): same reason as clear.
        original_delete_from(self, entry_from)
        self._hacluster_sync.dirty = True
        sync_journal(self)

    def delete_entries_to(self: Any, entry_to: int) -> None:
        # pysyncobj rewrote the kept entries in place (clear, then add each): a power loss
        # half-way lost entries it had acknowledged. Write the kept log to a new file, sync it,
        # rename it over the journal: the old journal or the new one, never a mix.
        rf = self._FileJournal__journalFile
        path = rf._ResizableFile__fileName
        keep = self._FileJournal__journal[entry_to:]
        body = b"".join(_record(c, i, t, to_bytes) for c, i, t in keep)
        end = first + len(body)
        header = self._FileJournal__getDefaultHeader()
        header = header[:last_offset_at] + struct.pack("<I", end) + header[last_offset_at + 4:]
        _refuse_after_failure(self._hacluster_sync)
        _write_durably(path, header + body, tmp=path + ".compact.tmp")
        rf._destroy()
        self._FileJournal__journalFile = journal.ResizableFile(path)
        self._FileJournal__journal = keep
        self._FileJournal__currentOffset = end
        state = self._hacluster_sync
        state.synced_size = len(header) + len(body)
        state.dirty = True      # ResizableFile may have grown the new file: fsync that size

    def on_one_second_timer(self: Any) -> None:
        # The meta file stores the commit index too: never one past the journal on disk.
        if not self._FileJournal__metaSaved:
            sync_journal(self)
        original_timer(self)

    def set_current_term(self: Any, term: int, voted_for: Any) -> None:
        # Store first, then change: a store that fails (full disk) leaves the node on the term
        # and vote it has on disk, not acting on one it would forget at its next restart.
        meta = dict(self._FileJournal__meta)
        meta["currentTerm"] = term
        meta["votedForNodeId"] = voted_for
        self._FileJournal__metaStorer.storeMeta(meta)      # raises: nothing changed
        self._FileJournal__meta = meta
        self._FileJournal__metaSaved = True

    def destroy(self: Any) -> None:
        try:
            sync_journal(self)
        except OSError as exc:
            log.error("Raft journal %s closed without its last writes synced: %s",
                      self._hacluster_sync.path, exc)
        finally:
            self._FileJournal__journalFile._destroy()

    fj.__init__ = init
    fj.add = add
    fj.clear = clear
    fj.deleteEntriesFrom = delete_entries_from
    fj.deleteEntriesTo = delete_entries_to
    fj.onOneSecondTimer = on_one_second_timer
    fj.setCurrentTerm = set_current_term
    fj._destroy = destroy


def _patch_meta_storer(journal: Any) -> None:
    ms: Any = journal.MetaStorer
    dumps, loads = journal.dumps, journal.loads

    def store_meta(self: Any, meta: dict[str, Any]) -> None:
        _write_durably(self._MetaStorer__path, dumps(meta))

    def get_meta(self: Any) -> dict[str, Any]:
        # pysyncobj read an unreadable meta file as "term 0, no vote": a node that forgets
        # its vote can vote twice in a term. A missing file is a new node; anything else stops.
        path = self._MetaStorer__path
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return {}
        try:
            meta = loads(data)
        except Exception as exc:
            raise JournalCorruptError(
                f"{path}: the Raft term and vote cannot be read ({type(exc).__name__}: "
                f"{exc}); refusing to start with them forgotten") from None
        if not isinstance(meta, dict):
            raise JournalCorruptError(f"{path}: the Raft term and vote file holds a "
                                      f"{type(meta).__name__}, not a dict")
        return meta

    ms.storeMeta = store_meta
    ms.getMeta = get_meta


def _patch_serializer(serializer: Any) -> None:
    original = serializer.atomicReplace

    def durable_replace(src: str, dst: str) -> Any:
        # The full dump (written here, or received from the leader) replaces the journal's
        # prefix: it must be on disk before the journal entries it covers are dropped.
        if SYNC:
            fd = os.open(src, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        result = original(src, dst)
        if SYNC:
            _fsync_dir(dst)
        return result

    serializer.atomicReplace = durable_replace


class _DurableSender:
    """The transport's send, behind a journal sync; holds sends while a batch is appended."""

    def __init__(self, journal: Any, send: Callable[[Any, Any], Any]) -> None:
        self._journal = journal
        self._send = send
        self._holding = False
        self._held: list[tuple[Any, Any]] = []

    def send(self, node: Any, message: Any) -> bool:
        if self._holding:
            self._held.append((node, message))
            return True             # pysyncobj ignores the result where it holds
        sync_journal(self._journal)
        return bool(self._send(node, message))

    def hold(self) -> None:
        self._holding = True

    def release(self) -> None:
        self._holding = False
        held, self._held = self._held, []
        if held:
            sync_journal(self._journal)     # raises: the held answers are never sent
            for node, message in held:
                self._send(node, message)


def _patch_syncobj(syncobj: Any) -> None:
    so: Any = syncobj.SyncObj
    original_init = so.__init__
    original_tick = so._onTick
    original_check = so._checkCommandsToApply
    original_become_leader = so._SyncObj__onBecomeLeader
    original_received = so._SyncObj__onMessageReceived

    def init(self: Any, self_node: Any, other_nodes: Any, conf: Any = None,
             *args: Any, **kwargs: Any) -> None:
        if conf is None or getattr(conf, "autoTick", True):
            # pysyncobj's own tick thread would start inside __init__, before the transport
            # is wrapped: messages could leave before the journal is synced.
            raise RuntimeError("hacluster's durable Raft journal needs SyncObjConf("
                               "autoTick=False): the caller drives the ticks")
        original_init(self, self_node, other_nodes, conf, *args, **kwargs)
        _require(self, "_SyncObj__transport", "_SyncObj__raftLog", "_SyncObj__raftCurrentTerm",
                 "_SyncObj__raftLastApplied")
        transport = self._SyncObj__transport
        _require(transport, "send")
        sender = _DurableSender(self._SyncObj__raftLog, transport.send)
        # On the transport, not the SyncObj: attributes set on it now would go into the dump.
        transport.send = sender.send
        transport._hacluster_sender = sender
        _require(self, "_SyncObj__raftState", "_SyncObj__raftElectionDeadline",
                 "_SyncObj__transferInProgress", "_SyncObj__otherNodes", "_SyncObj__selfNode",
                 "_SyncObj__generateRaftTimeout", "_SyncObj__connectedToAnyone",
                 "_SyncObj__getCurrentLogIndex", "_SyncObj__getCurrentLogTerm")
        transport._hacluster_prevote = PreVote()

    def on_tick(self: Any, *args: Any, **kwargs: Any) -> Any:
        # The leader counts its own log toward the commit index early in the tick: what it
        # appended last tick must be on disk by then.
        sync_journal(self._SyncObj__raftLog)
        pre_vote_tick(self, syncobj)
        return original_tick(self, *args, **kwargs)

    def check_commands_to_apply(self: Any) -> Any:
        # Each command forwarded by a follower is answered right after its append: hold those
        # answers and sync once for the whole batch, not once per entry.
        sender = getattr(self._SyncObj__transport, "_hacluster_sender", None)
        if sender is None:
            return original_check(self)
        sender.hold()
        try:
            return original_check(self)
        finally:
            sender.release()

    def on_become_leader(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_become_leader(self, *args, **kwargs)
        # Its no-op entry counts toward the commit index in this same tick (alone in the
        # cluster, nothing is sent first).
        sync_journal(self._SyncObj__raftLog)
        return result

    def on_message_received(self: Any, node: Any, message: Any) -> Any:
        if isinstance(message, dict) and message.get("type") in (PRE_VOTE, PRE_VOTE_RESPONSE):
            pre_vote_message(self, syncobj, node, message)
            return None
        if isinstance(message, dict) and message.get("type") == "append_entries":
            heard_from(self, syncobj, node, message.get("term", -1))
            message = _trim_resend(self, message)
        return original_received(self, node, message)

    def set_current_term(self: Any, term: int, voted_for: Any) -> None:
        # pysyncobj changed the term and vote in memory before storing them; a store that
        # fails (full disk) left the node acting on a term it would forget. Store first.
        self._SyncObj__raftLog.setCurrentTerm(term, voted_for)
        self._SyncObj__raftCurrentTerm = term
        self._SyncObj__votedForNodeId = voted_for

    so.__init__ = init
    so._onTick = on_tick
    so._checkCommandsToApply = check_commands_to_apply
    so._SyncObj__onBecomeLeader = on_become_leader
    so._SyncObj__setCurrentTerm = set_current_term
    so._SyncObj__onMessageReceived = on_message_received

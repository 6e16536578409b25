"""The archiver: the primary's WAL, by sequence number, into the archive; base backups too.

Owns one primary spell's archiving. It lists the archive once at the start (where the chain
from the newest base backup on the surviving history ends: a new primary continues exactly
there, from its own WAL, which holds the same seqs), records the epoch history it sees, then
reads its WAL from that seq on, holds back what is not yet acknowledged per the replication
mode (``acknowledged_through``: in sync mode, confirmed by the synchronous set), and ships a
segment at least every ``backup.archive_interval_s`` (or when ``segment_max_mb`` is ready). Base
backups run in their own task: on the schedule (``backup.base_backup_interval_s``), on demand,
first of all when the archive has none, and after a gap (the WAL no longer held what the
archive needed). Retention follows each base backup. The schedule keys are read from
``node.cfg.backup`` at each use: the node's config may be swapped while it runs.

Every upload, listing and WAL read runs in a thread; the event loop only decides. It must
never make a write wait, never archive a seq above ``acknowledged_through``, never publish a
base backup before its seq is acknowledged, and never stop writes because the store fails:
the lag grows and ``last_error`` says why.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hacluster.aiotasks import cancel_and_wait
from hacluster.backup import BackupError, base, plan
from hacluster.backup.history import as_records, live_history, read_history, write_history
from hacluster.backup.layout import (
    BASE_PREFIX,
    WAL_PREFIX,
    BaseRef,
    Segment,
    base_id,
    encode_segment,
    parse_bases,
    parse_segments,
)
from hacluster.backup.objects import Archive
from hacluster.wal.errors import WalError, WalGone
from hacluster.wal.reader import WalReader

if TYPE_CHECKING:
    from hacluster.config.model import ClusterConfig
    from hacluster.consensus.loop import ControlLoop
    from hacluster.role import Role
    from hacluster.store import Store

log = logging.getLogger(__name__)

POLL_S = 0.1
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
ACK_WAIT_S = 60.0            # a base backup's seq must be acknowledged within this long
READ_BATCHES = 2000
READ_BYTES = 4 << 20


class ArchivedNode(Protocol):
    """What the archiver reads of the node it runs in (``hacluster.node.Node``)."""

    name: str
    cfg: ClusterConfig
    data_dir: Path
    db_dir: Path
    role: Role
    control: ControlLoop | None

    @property
    def store(self) -> Store | None: ...

    @property
    def is_primary(self) -> bool: ...

    def acknowledged_through(self) -> int: ...

    def latest_seq(self) -> int: ...


@dataclass(slots=True)
class ArchiveStatus:
    archived_seq: int | None = None      # the last seq archived (None: not listed yet)
    last_error: str | None = None
    errors_total: int = 0
    last_upload_at: float | None = None  # wall clock
    segments_uploaded: int = 0
    bytes_uploaded: int = 0
    last_base: dict[str, Any] | None = None
    base_running: bool = False
    gap_from: int | None = None          # the WAL lost seqs the archive needed, from here


@dataclass(slots=True)
class _Pending:
    batches: list[tuple[int, int, float, bytes]] = field(default_factory=list)
    size: int = 0


class Archiver:
    def __init__(self, node: ArchivedNode) -> None:
        self.node = node
        self.epoch = node.role.epoch
        self.status = ArchiveStatus()
        self.archive: Archive | None = None
        self.next_seq: int | None = None        # the first seq not read from the WAL yet
        self._reader: WalReader | None = None
        self._pending = _Pending()
        self._tasks: list[asyncio.Task[None]] = []
        self._base_wake = asyncio.Event()
        self._base_waiters: list[asyncio.Future[dict[str, Any]]] = []
        self._need_base = False
        self._last_ship = 0.0
        self._started_at = time.time()
        self._seq_at_start = node.latest_seq()
        self._caught_up_at = time.time()
        self._stopped = False
        self._last_base_created: float | None = None
        self._base_loop_running = False
        self._reading = False                   # a WAL read runs in a thread now

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._run()))

    async def stop(self) -> None:
        self._stopped = True
        await cancel_and_wait(self._tasks)
        for fut in self._base_waiters:
            if not fut.done():
                fut.set_exception(BackupError(f"{self.node.name} stopped being the primary"))
        self._base_waiters.clear()
        if self._reader is not None and not self._reading:
            self._reader.close()

    def request_base(self) -> asyncio.Future[dict[str, Any]]:
        """An operator's base backup: the future ends with its summary or its error."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        # Retrieved even when nobody waits any more (the HTTP request returned 202).
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        if not self._base_loop_running:
            fut.set_exception(BackupError(f"the archive is not ready yet: "
                                          f"{self.status.last_error or 'listing it'}"))
            return fut
        self._base_waiters.append(fut)
        self._base_wake.set()
        return fut

    def _fail(self, what: str, exc: BaseException) -> None:
        self.status.errors_total += 1
        message = f"{what}: {exc}"
        if message != self.status.last_error:
            log.warning("backup: %s", message)
        self.status.last_error = message

    # -- lag ----------------------------------------------------------------------------

    def lag(self) -> tuple[int, float]:
        """(seqs, seconds) acknowledged but not archived yet; before the archive has been
        listed, counted from when this archiver started."""
        top = self.node.acknowledged_through()
        archived = self.status.archived_seq
        seqs = max(0, top - (self._seq_at_start if archived is None else archived))
        now = time.time()
        if archived is None:
            return seqs, now - self._started_at
        if seqs == 0:
            self._caught_up_at = now
            return 0, 0.0
        pending = self._pending.batches
        since = pending[0][2] if pending and pending[0][0] == archived + 1 else \
            self._caught_up_at
        return seqs, max(0.0, now - min(since, now))

    # -- the work -------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        while self.archive is None or (self.status.archived_seq is None
                                       and not self._need_base):
            try:
                await self._prepare()
            except Exception as exc:        # any store error: retry, writes go on
                self._fail("cannot list the archive", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        self._base_loop_running = True
        self._tasks.append(asyncio.get_running_loop().create_task(self._base_loop()))
        await self._segment_loop()

    async def _prepare(self) -> None:
        cfg = self.node.cfg.backup
        if self.archive is None:
            self.archive = await asyncio.to_thread(Archive.from_config, cfg)
        archive = self.archive
        history = live_history(self.node)

        def look() -> tuple[int | None, list[plan.Epoch], BaseRef | None]:
            write_history(archive, self.epoch, self.node.name, history)
            merged = plan.merge_history(history, read_history(archive))
            bases = parse_bases(archive.listing(BASE_PREFIX))
            segments = parse_segments(archive.listing(WAL_PREFIX))
            newest = plan.newest_base(bases, merged)
            return plan.next_seq(bases, segments, merged), merged, newest

        nxt, merged, newest = await asyncio.to_thread(look)
        self.status.last_error = None
        if newest is not None:
            self._last_base_created = newest.created
            self.status.last_base = {"id": newest.id, "seq": newest.seq,
                                     "epoch": newest.epoch, "created": newest.created}
        if nxt is None:
            log.info("backup: %s holds no base backup on this history: taking one first",
                     archive.url)
            self._need_base = True
            return
        held = self.node.latest_seq()
        if nxt > held + 1:
            # Only without an epoch history (static mode) can this happen: a former primary
            # archived seqs this one does not hold. Archiving from here would splice two
            # histories; a base backup of this node starts its own range (and its first
            # segment supersedes the other's from there on).
            log.warning("backup: %s reaches seq %d but %s holds seq %d: a former primary "
                        "archived writes this one does not have; taking a base backup",
                        archive.url, nxt - 1, self.node.name, held)
            self._need_base = True
            return
        self._continue_at(nxt)
        log.info("backup: archiving to %s continues at seq %d (epoch %d, %d epochs in the "
                 "history)", archive.url, nxt, self.epoch, len(merged))

    def _continue_at(self, seq: int) -> None:
        self.next_seq = seq
        self.status.archived_seq = seq - 1
        self.status.gap_from = None
        self._pending = _Pending()
        self._drop_reader()

    def _drop_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None

    def _read(self) -> list[tuple[int, int, float, bytes]]:
        assert self.next_seq is not None
        if self._reader is None:
            # With consensus the archive's next seq follows a write of this node's history:
            # after a failover it may be inside a record that holds a run this node applied
            # as a replica, and archiving goes on from its rest. Without an epoch history
            # (static mode) such a position may be another history's: a gap, then a base.
            self._reader = WalReader(self.node.db_dir, self.next_seq, decode_ops=False,
                                     cut_at_start=self.node.cfg.uses_consensus)
        try:
            batches = self._reader.read(max_batches=READ_BATCHES, max_bytes=READ_BYTES)
        finally:
            if self._stopped:       # stopped while this read ran: nobody else closes it
                self._reader.close()
        now = time.time()
        return [(b.seq, b.count, now, b.payload) for b in batches if b.count > 0]

    async def _segment_loop(self) -> None:
        delay = RETRY_MIN_S
        while True:
            cfg = self.node.cfg.backup          # dynamic: read at each use
            if self.next_seq is None:
                await asyncio.sleep(POLL_S)
                continue
            if self._pending.size < cfg.max_pending_mb << 20:
                self._reading = True
                try:
                    got = await asyncio.to_thread(self._read)
                except WalGone as exc:
                    self._gap(exc)
                    continue
                except WalError as exc:
                    self._fail(f"cannot read the WAL at seq {self.next_seq}", exc)
                    self._drop_reader()
                    await asyncio.sleep(delay)
                    continue
                finally:
                    self._reading = False
                for b in got:
                    self._pending.batches.append(b)
                    self._pending.size += len(b[3])
                if got:
                    self.next_seq = got[-1][0] + got[-1][1]
            ready, size = self._ready(cfg.segment_max_mb << 20)
            due = ready and (time.monotonic() - self._last_ship >= cfg.archive_interval_s
                             or size >= cfg.segment_max_mb << 20)
            if not due:
                self.lag()          # keeps "caught up at" current
                await asyncio.sleep(POLL_S)
                continue
            try:
                await self._ship(ready, size)
                delay = RETRY_MIN_S
            except Exception as exc:
                self._fail(f"cannot upload seqs {ready[0][0]}..{ready[-1][0]}", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _ready(self, max_bytes: int) -> tuple[list[tuple[int, int, float, bytes]], int]:
        """The pending batches that are acknowledged, up to ``max_bytes`` (at least one)."""
        top = self.node.acknowledged_through()
        out: list[tuple[int, int, float, bytes]] = []
        size = 0
        for b in self._pending.batches:
            if b[0] + b[1] - 1 > top or (out and size + len(b[3]) > max_bytes):
                break
            out.append(b)
            size += len(b[3])
        return out, size

    async def _ship(self, batches: list[tuple[int, int, float, bytes]], size: int) -> None:
        store = self.node.store
        assert self.archive is not None and store is not None
        seg = Segment(self.epoch, store.column_families, self.node.name, list(batches))
        archive = self.archive
        stored = await asyncio.to_thread(archive.put, seg.name, encode_segment(seg))
        del self._pending.batches[:len(batches)]
        self._pending.size -= size
        self._last_ship = time.monotonic()
        st = self.status
        st.archived_seq = seg.last_seq
        st.last_upload_at = time.time()
        st.segments_uploaded += 1
        st.bytes_uploaded += stored
        st.last_error = None
        log.debug("backup: archived seqs %d..%d (%d batches, %d bytes stored)",
                  seg.first_seq, seg.last_seq, len(batches), stored)

    def _gap(self, exc: WalGone) -> None:
        self._fail(f"the WAL no longer holds seq {self.next_seq}, which the archive needs "
                   "next (the archive lagged past storage.wal_ttl_seconds / "
                   "wal_size_limit_mb): the archive has a gap from there; a new base backup "
                   "starts a new restorable range", exc)
        self.status.gap_from = self.next_seq
        self.next_seq = None
        self._drop_reader()
        self._pending = _Pending()
        self._need_base = True
        self._base_wake.set()

    # -- base backups -----------------------------------------------------------------------

    async def _base_loop(self) -> None:
        delay = RETRY_MIN_S
        while True:
            cfg = self.node.cfg.backup          # dynamic: read at each use
            interval = cfg.base_backup_interval_s
            scheduled = interval > 0 and (self._last_base_created is None
                                          or time.time() - self._last_base_created >= interval)
            if self._need_base or self._base_waiters or scheduled:
                waiters, self._base_waiters = self._base_waiters, []
                try:
                    summary = await self.base_backup()
                except Exception as exc:
                    self._fail("base backup failed", exc)
                    for fut in waiters:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, BackupError)
                                              else BackupError(str(exc)))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                delay = RETRY_MIN_S
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(summary)
                continue
            self._base_wake.clear()
            try:
                async with asyncio.timeout(1.0):
                    await self._base_wake.wait()
            except TimeoutError:
                pass

    async def base_backup(self) -> dict[str, Any]:
        """Checkpoint, upload, wait until its seq is acknowledged, publish, prune."""
        node = self.node
        store = node.store
        archive = self.archive
        if store is None or archive is None:
            raise BackupError("no database open to back up")
        staging = node.data_dir / "backup-staging"
        self.status.base_running = True
        try:
            await asyncio.to_thread(shutil.rmtree, staging, True)
            started = time.monotonic()
            created = time.time()
            # On the loop thread, as the checkpoint service does: no write lands between
            # reading the seq and linking the files.
            seq = store.checkpoint(staging / "db")
            column_families = store.column_families
            bid = base_id(seq, self.epoch, created)
            total = sum(p.stat().st_size for p in (staging / "db").iterdir() if p.is_file())
            log.info("backup: base backup %s: seq %d, %.1f MB to upload", bid, seq, total / 1e6)
            files = await asyncio.to_thread(self._upload_files, archive, bid, staging / "db",
                                            total)
            deadline = time.monotonic() + ACK_WAIT_S
            while node.acknowledged_through() < seq:
                if not node.is_primary or time.monotonic() > deadline:
                    raise BackupError(f"seq {seq} of base backup {bid} was not acknowledged "
                                      f"within {ACK_WAIT_S:g} s: not published")
                await asyncio.sleep(POLL_S)
            manifest = {"seq": seq, "epoch": self.epoch, "node": node.name,
                        "created": created, "column_families": column_families,
                        "files": files, "total_bytes": sum(f["size"] for f in files),
                        "history": as_records(live_history(node))}
            await asyncio.to_thread(base.publish, archive, bid, manifest)
            seconds = time.monotonic() - started
            summary = {"id": bid, "seq": seq, "epoch": self.epoch, "created": created,
                       "bytes": manifest["total_bytes"], "files": len(files),
                       "seconds": round(seconds, 3)}
            self.status.last_base = summary
            self.status.last_error = None
            self._last_base_created = created
            log.info("backup: base backup %s published: seq %d, %d files, %.1f MB in %.1f s",
                     bid, seq, len(files), total / 1e6, seconds)
            if self._need_base or self.next_seq is None:
                self._need_base = False
                self._continue_at(seq + 1)
                log.info("backup: archiving continues at seq %d", seq + 1)
            await self._retention()
            return summary
        finally:
            self.status.base_running = False
            await asyncio.to_thread(shutil.rmtree, staging, True)

    @staticmethod
    def _upload_files(archive: Archive, bid: str, db_dir: Path,
                      total: int) -> list[dict[str, Any]]:
        try:
            from hacluster.tools.progress import progress
        except ImportError:          # the progress helper is optional here
            return base.upload_files(archive, bid, db_dir)
        with progress(total=total, desc=f"base backup {bid} upload", unit="B") as bar:
            return base.upload_files(archive, bid, db_dir, bar.update)

    async def _retention(self) -> None:
        cfg = self.node.cfg.backup          # dynamic: read at each use
        archive = self.archive
        assert archive is not None
        history = live_history(self.node)

        def prune() -> plan.Retention:
            merged = plan.merge_history(history, read_history(archive))
            bases = parse_bases(archive.listing(BASE_PREFIX))
            segments = parse_segments(archive.listing(WAL_PREFIX))
            decision = plan.retention(bases, segments, merged, cfg.keep_last, cfg.keep_days,
                                      time.time())
            names = [n for b in decision.bases for n in b.objects]
            archive.delete(names + [s.name for s in decision.segments])
            return decision

        try:
            decision = await asyncio.to_thread(prune)
        except Exception as exc:
            self._fail("retention failed", exc)
            return
        if decision.bases or decision.segments:
            log.info("backup: retention deleted %d base backups and %d WAL segments (at or "
                     "below seq %s, keep_last %d, keep_days %g)", len(decision.bases),
                     len(decision.segments), decision.oldest_kept_seq, cfg.keep_last,
                     cfg.keep_days)

    def snapshot(self) -> dict[str, Any]:
        seqs, seconds = self.lag()
        st = self.status
        return {"url": self.archive.url if self.archive else self.node.cfg.backup.url,
                "epoch": self.epoch, "archived_seq": st.archived_seq,
                "archive_lag_seqs": seqs, "archive_lag_s": round(seconds, 3),
                "last_error": st.last_error, "errors_total": st.errors_total,
                "last_upload_at": st.last_upload_at, "segments_uploaded": st.segments_uploaded,
                "bytes_uploaded": st.bytes_uploaded, "last_base_backup": st.last_base,
                "base_backup_running": st.base_running, "gap_from": st.gap_from,
                "pending_bytes": self._pending.size}



# The node keeps its archiver as this attribute (set and cleared by ``node.archiving``).
ATTR = "archiver"


def archiver_of(node: object) -> Archiver | None:
    """The archiver running in ``node`` (the API side sees the node through a port)."""
    found = getattr(node, ATTR, None)
    return found if isinstance(found, Archiver) else None

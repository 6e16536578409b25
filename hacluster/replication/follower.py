"""The replica's side of replication: stream from the primary, apply, report the position.

Owns the follow loop: connect to the primary's stream after the local seq, verify and apply
batches strictly in order, acknowledge the applied seq, reconnect with capped exponential
backoff, and bootstrap from a checkpoint when the primary answers 410 or this node has no DB.
It must never apply a frame that failed verification or ``applier.check_frame``, never keep
applying after a divergence, never open the DB while a checkpoint is being installed, and never
install one while anything else (managed mode: a read-only service, through ``before_install``)
still holds the files it replaces.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext
from typing import TextIO

import aiohttp
import rocksdict

from hacluster.config import ReplicationConfig
from hacluster.groupsync import GroupSync
from hacluster.lineage.labels import Lineage
from hacluster.replication import frames
from hacluster.replication.acks import AckSender
from hacluster.replication.applier import Verdict, check_frame
from hacluster.replication.bootstrap import (
    BootstrapError,
    Bootstrapper,
    CheckpointUnavailable,
    install,
)
from hacluster.replication.runs import ControlFrame, split_runs
from hacluster.store import DivergenceError, Store, StoreError, StoreSlot, has_database, no_space
from hacluster.wal.errors import WalError

log = logging.getLogger(__name__)

APPLY_TRACE_ENV = "HACLUSTER_APPLY_TRACE"


class StreamError(Exception):
    """The stream ended or carried something we refuse; reconnect after a backoff."""


class StreamEnded(StreamError):
    """The primary ended the stream cleanly: it stopped, stepped down or restarts. Not an
    error of the data: reconnect (to whichever node is primary by then)."""


class NotPrimaryYet(StreamError):
    """503 from the node we were told to follow: in a failover the others learn of the new
    primary's lock as it commits, a moment before that node has opened its stream source."""


# First retry after a 503 (then doubling up to reconnect_backoff_max, as any backoff): the
# new primary is usually ready within tens of milliseconds, and in sync mode no write is
# acknowledged until a replica streams from it.
NOT_PRIMARY_YET_RETRY_S = 0.02


class Diverged(Exception):
    """This node's history is not a prefix of the primary's; applying more would be wrong."""


class NeedBootstrap(Exception):
    """The primary no longer has our position (410) or we have no DB."""


@dataclass
class FollowerStatus:
    state: str = "starting"   # connecting, streaming, bootstrapping, backoff, diverged, stopped
    error: str | None = None
    primary_seq: int | None = None
    connects: int = 0
    batches_applied: int = 0
    runs_applied: int = 0     # RocksDB writes the batches went in (several per run)
    ops_applied: int = 0
    bootstraps: int = 0
    bootstrap_bytes: int = 0
    last_frame_at: float | None = None


class Backoff:
    """Capped exponential backoff with jitter; reset after a successful stream."""

    def __init__(self, low: float, high: float, rng: random.Random | None = None) -> None:
        self.low, self.high = low, high
        self.current = low
        self.rng = rng or random.Random()

    def next(self) -> float:
        delay = self.current * (0.5 + self.rng.random() / 2)
        self.current = min(self.current * 2, self.high)
        return delay

    def reset(self) -> None:
        self.current = self.low


class LowSpace(Exception):
    """The node is low on disk space: applying waits until there is room again."""


class Follower:
    def __init__(self, *, node: str, data_dir: Path, primary_url: str, token: str | None,
                 cfg: ReplicationConfig, ssl: SSLContext | None = None,
                 open_store: Callable[[], Store], known_epoch: int,
                 lineage: Lineage | None = None,
                 space_low: Callable[[], str | None] = lambda: None,
                 durable: bool = False, slot: StoreSlot | None = None,
                 db_dir: Path | None = None,
                 before_install: Callable[[str], Awaitable[None]] | None = None,
                 after_install: Callable[[], Awaitable[None]] | None = None) -> None:
        self.node = node
        self.data_dir = data_dir
        self.db_dir = db_dir if db_dir is not None else data_dir / "db"
        self.primary_url = primary_url.rstrip("/")
        # With mutual TLS the node's certificate is its credential; otherwise its token.
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.ssl = ssl
        self.cfg = cfg
        self.open_store = open_store
        self.known_epoch = known_epoch
        self.lineage = lineage
        self.space_low = space_low      # why applying must wait for disk space, if it must
        self.status = FollowerStatus()
        # The node's slot while it follows (one handle, never a closed one in two places).
        self._slot = slot if slot is not None else StoreSlot()
        self.durable = durable      # storage.durability: fsync
        # Called with why before a checkpoint replaces the database directory, and once the
        # new database is open: whoever else reads those files lets go of them, then comes back.
        self.before_install, self.after_install = before_install, after_install
        self.wal_sync = GroupSync(lambda: self.store.latest_seq() if self.store else 0,
                                  lambda: self.store.sync_wal() if self.store else None)
        self._backoff = Backoff(cfg.reconnect_backoff_min, cfg.reconnect_backoff_max)
        self._not_yet = Backoff(min(NOT_PRIMARY_YET_RETRY_S, cfg.reconnect_backoff_min),
                                cfg.reconnect_backoff_max)
        self._acks = AckSender(self)
        self._stopping = False
        self._handles: dict[int, rocksdict.ColumnFamily] = {}
        self._trace: TextIO | None = None
        if os.environ.get(APPLY_TRACE_ENV):
            self._trace = open(os.environ[APPLY_TRACE_ENV], "a", buffering=1)  # noqa: SIM115

    def stop(self) -> None:
        self._stopping = True

    @property
    def store(self) -> Store | None:
        return self._slot.store

    @store.setter
    def store(self, store: Store | None) -> None:
        self._slot.store = store

    def detach_store(self) -> Store | None:
        """Once stopped: keep no column family handle on the store, and no hold on the node's
        slot (the store stays in it); returns the store."""
        store, self._handles, self._slot = self.store, {}, StoreSlot()
        return store

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=5,
                                        sock_read=max(2.0, 4 * self.cfg.heartbeat_interval))
        connector = aiohttp.TCPConnector(ssl=self.ssl) if self.ssl is not None else None
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            acks = asyncio.create_task(self._acks.run(session), name="acks")
            try:
                await self._loop(session)
            finally:
                acks.cancel()
                if self._trace:
                    self._trace.close()

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        need_bootstrap = not has_database(self.db_dir)
        while not self._stopping:
            not_yet = False
            try:
                low = self.space_low()
                if low:
                    raise LowSpace(low)
                if self.store is None and not need_bootstrap:
                    self.store = self.open_store()
                if need_bootstrap:
                    await self._bootstrap()
                    need_bootstrap = False
                await self._stream(session)
            except NeedBootstrap as exc:
                log.warning("%s: bootstrap needed: %s", self.node, exc)
                need_bootstrap = True
                continue
            except (DivergenceError, Diverged) as exc:
                self._fail("diverged", str(exc))
                log.error("%s: stopped applying: %s", self.node, exc)
                return
            except LowSpace as exc:
                if self.status.state != "disk_full":
                    log.error("%s: stopped applying, low on disk space: %s", self.node, exc)
                self._fail("disk_full", str(exc))
            except NotPrimaryYet as exc:
                self._fail("backoff", str(exc))
                log.info("%s: %s", self.node, exc)
                not_yet = True
            except (StreamEnded, CheckpointUnavailable) as exc:
                # Every switchover and restart of a primary ends its streams, and a node that
                # lost the role meanwhile answers 503: warnings, not errors an operator's
                # alerting would page on.
                self._fail("backoff", str(exc))
                log.warning("%s: %s; trying again", self.node, exc)
            except (StreamError, frames.FrameError, BootstrapError, StoreError) as exc:
                self._fail("backoff", str(exc))
                log.error("%s: replication stopped: %s", self.node, exc)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                self._fail("backoff", f"{type(exc).__name__}: {exc}")
                log.warning("%s: cannot stream from %s: %s", self.node, self.primary_url,
                            self.status.error)
            except Exception as exc:
                if no_space(exc):
                    # RocksDB refuses every write after a failed WAL append until it is
                    # reopened: close it now; the next round reopens it (failing the same way
                    # while the disk is still full) and resumes from what it holds.
                    self._fail("disk_full", str(exc))
                    log.error("%s: disk full, stopped applying: %s", self.node, exc)
                    self._handles = {}
                    if self.store is not None:
                        self.store.close()
                        self.store = None
                else:
                    # A local failure (an I/O error) must not kill replication for good:
                    # report it, back off, try again once the cause may be gone.
                    self._fail("backoff", f"{type(exc).__name__}: {exc}")
                    log.exception("%s: replication failed", self.node)
            if self._stopping:
                break
            delay = self._not_yet.next() if not_yet else self._backoff.next()
            log.info("%s: reconnecting in %.2f s", self.node, delay)
            await asyncio.sleep(delay)
        self.status.state = "stopped"

    def _fail(self, state: str, error: str) -> None:
        self.status.state = state
        self.status.error = error

    async def _bootstrap(self) -> None:
        self.status.state = "bootstrapping"
        self.status.bootstraps += 1
        boot = Bootstrapper(self.data_dir, self.primary_url, self.headers, self.node,
                            self.cfg.bootstrap_chunk_bytes, self.cfg.bootstrap_max_rate_mb_s,
                            ssl=self.ssl)
        try:
            manifest = await boot.fetch()
        finally:
            self.status.bootstrap_bytes += boot.bytes_downloaded
        if self.before_install is not None:
            await self.before_install(f"checkpoint {manifest['id']} is installed")
        # Install before open: the old handle goes first, so no descriptor points at old files.
        # Column family handles keep the DB (and its LOCK) alive: they go with it.
        self._handles = {}
        if self.store is not None:
            self.store.close()
            self.store = None
        seq = install(self.data_dir, self.db_dir)
        if self.lineage is not None:
            self.lineage.reset(int(manifest["epoch"]), 1)
        self.store = self.open_store()
        if self.store.latest_seq() != seq:
            raise BootstrapError(f"checkpoint {manifest['id']} opened at seq "
                                 f"{self.store.latest_seq()}, manifest says {seq}")
        log.info("%s: bootstrapped from checkpoint %s at seq %d (%.1f MB/s)", self.node,
                 manifest["id"], seq, boot.last_rate_mb_s)
        if self.after_install is not None:
            await self.after_install()

    async def _stream(self, session: aiohttp.ClientSession) -> None:
        assert self.store is not None
        since = self.store.latest_seq()
        if self.durable:
            # Opening a stream tells the primary our position: it counts as acknowledged.
            await self.wal_sync.through(since)
        params = {"node": self.node, "since": str(since)}
        if self.lineage is not None:
            # Rule 1: the primary checks that our data up to `since` is on its history.
            params["epoch"] = str(self.lineage.last_epoch(since) or 0)
        self.status.state = "connecting"
        self.status.connects += 1
        url = f"{self.primary_url}/v1/replication/stream"
        async with session.get(url, params=params, headers=self.headers) as resp:
            if resp.status == 410:
                raise NeedBootstrap((await resp.json()).get("reason", "410 Gone"))
            if resp.status == 409:
                raise Diverged((await resp.json()).get("reason", "409 Conflict"))
            if resp.status == 503:
                raise NotPrimaryYet(f"stream request failed: HTTP 503: "
                                    f"{(await resp.text())[:300]}")
            if resp.status != 200:
                raise StreamError(f"stream request failed: HTTP {resp.status}: "
                                  f"{(await resp.text())[:300]}")
            decoder = frames.FrameDecoder(self.cfg.max_frame_bytes)
            self.status.state = "streaming"
            log.info("%s: streaming from %s after seq %d", self.node, self.primary_url, since)
            async for chunk in resp.content.iter_any():
                try:
                    received = decoder.feed(chunk)
                except frames.FrameError as exc:
                    self._handle_all(exc.good)     # verified before the bad one: apply them
                    raise
                self._handle_all(received)
            if decoder.pending:
                raise frames.FrameError(f"stream ended inside a frame ({decoder.where()}, "
                                        f"{decoder.pending} bytes of it received)")
        raise StreamEnded("primary closed the stream")

    def _handle_all(self, received: list[frames.Frame]) -> None:
        """The frames of one read, in order; consecutive batches as one write (``runs``)."""
        if received:
            self.status.last_frame_at = time.monotonic()
        for item in split_runs(received, self.cfg.max_frame_bytes):
            if isinstance(item, list):
                self._apply_run(item)
            else:
                self._handle(item)

    def _apply_run(self, run: list[frames.BatchFrame]) -> None:
        """Apply the batches of ``run`` that follow this node's position as one RocksDB write;
        a frame refused by ``check_frame`` or by the decoder stops the run, and what came
        before it is written first (as if each had been written on its own)."""
        store = self.store
        assert store is not None
        low = self.space_low()
        if low:
            # The node's disk reserve is for Raft and recovery, not for more data.
            raise LowSpace(low)
        applied = store.latest_seq()
        batch = rocksdict.WriteBatch(raw_mode=True)
        taken: list[frames.BatchFrame] = []
        refused: Exception | None = None
        for frame in run:
            decision = check_frame(applied, self.known_epoch, frame)
            if decision.verdict is Verdict.SKIP:
                continue
            if decision.verdict is not Verdict.APPLY:
                refused = (Diverged(decision.reason) if decision.verdict is Verdict.OVERLAP
                           else StreamError(decision.reason))
                break
            try:
                store.prepare(frame.wb, self._handles, where=f"batch at seq {frame.seq}",
                              into=batch)
            except (WalError, KeyError) as exc:
                refused = frames.FrameError(f"batch at seq {frame.seq} cannot be applied: "
                                            f"{exc}; nothing of it applied")
                # The decoder may have added part of this frame: the batch is built again
                # from the frames before it, which decoded whole.
                batch = rocksdict.WriteBatch(raw_mode=True)
                for good in taken:
                    store.prepare(good.wb, self._handles, into=batch)
                break
            taken.append(frame)
            applied = frame.last_seq
        if taken:
            self._commit(store, batch, taken)
        if refused is not None:
            raise refused

    def _commit(self, store: Store, batch: rocksdict.WriteBatch,
                taken: list[frames.BatchFrame]) -> None:
        first, last = taken[0], taken[-1]
        if self.lineage is not None:
            # Durable before the batch: from here on the data is this epoch's (a run never
            # holds two epochs).
            self.lineage.record(first.epoch, first.seq)
        # One proof for the run: RocksDB must end exactly at the last frame's last seq.
        store.commit(batch, first.seq, last.last_seq - first.seq + 1,
                     sync=self.cfg.fsync_on_apply)
        if self.durable and not self.cfg.fsync_on_apply:
            # The ack waits for this sync anyway: it runs here, on the event loop, not handed
            # to the sync thread and back (two thread switches and a wake-up of this loop per
            # run cost more CPU than the sync). FlushWAL lets other threads (Raft) run while
            # it waits for the disk; a write with WriteOptions.sync would hold them up. What
            # the primary sends meanwhile waits in the socket and makes the next run longer.
            store.sync_wal()
        if self.durable or self.cfg.fsync_on_apply:
            self.wal_sync.covered(last.last_seq)
        if self.status.primary_seq is None or last.last_seq > self.status.primary_seq:
            self.status.primary_seq = last.last_seq
        self.status.batches_applied += len(taken)
        self.status.runs_applied += 1
        self.status.ops_applied += sum(f.count for f in taken)
        self._acks.update(last.last_seq)
        if self._trace:
            now = time.monotonic_ns()
            self._trace.write("".join(f"{f.last_seq} {now}\n" for f in taken))

    def _handle(self, frame: ControlFrame) -> None:
        """A frame that is not a batch: hello, heartbeat or error (batches go in runs)."""
        store = self.store
        assert store is not None
        if isinstance(frame, frames.Heartbeat):
            if frame.epoch < self.known_epoch:
                raise StreamError(f"heartbeat from epoch {frame.epoch}, older than epoch "
                                  f"{self.known_epoch} this node knows")
            self.status.primary_seq = frame.primary_seq
            self._acks.update(store.latest_seq())
        elif isinstance(frame, frames.Hello):
            if frame.epoch < self.known_epoch:
                raise StreamError(f"{frame.primary} streams epoch {frame.epoch}, older than "
                                  f"epoch {self.known_epoch} this node knows")
            self.known_epoch = frame.epoch
            self.status.primary_seq = frame.primary_seq
            self._handles = store.handles_for(frame.column_families)
            self._backoff.reset()
            self._not_yet.reset()
            self.status.error = None
        elif isinstance(frame, frames.ErrorFrame):
            raise StreamError(f"primary reported: {frame.reason}")

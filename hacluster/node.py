"""One hacluster node process: its store, its role, and the replication parts that role needs.

Owns the wiring: which role this node plays (an input — ``Role`` — that the consensus layer will
drive; for now it comes from the config or the command line), opening the store, starting the
WAL feed and checkpoint service as primary or the follower as replica, and the HTTP server.
It must never accept a client write unless it is the primary, and never open the DB before an
interrupted checkpoint install has been finished or discarded.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hacluster.api import build_app, probes
from hacluster.api.probes import NodeView
from hacluster.config import ClusterConfig, NodeConfig
from hacluster.consensus import settings
from hacluster.consensus.decide import Action
from hacluster.consensus.epochs import same_history
from hacluster.consensus.model import ReplicaView
from hacluster.consensus.ports import LocalState
from hacluster.consensus.state import EpochRecord
from hacluster.fencing import WriteGate
from hacluster.groupsync import GroupSync
from hacluster.hooks import Hooks
from hacluster.lineage.labels import Lineage, find_divergence
from hacluster.lineage.tails import (
    list_divergent_tails,
    prune_divergence,
    save_divergent_tail,
    set_aside,
)
from hacluster.node_errors import DiskFull, NotWritable, OutcomeUnknown
from hacluster.replication import bootstrap
from hacluster.replication.checkpoints import CheckpointService
from hacluster.replication.feed import WalFeed
from hacluster.replication.follower import Follower
from hacluster.replication.positions import ReplicaPositions
from hacluster.replication.source import ReplicationSource
from hacluster.role import VERSION, Role
from hacluster.space import SpaceGuard
from hacluster.store import AppliedRange, NamedOp, Store, has_database, no_space
from hacluster.watchdog import Watchdog, WatchdogError

if TYPE_CHECKING:
    from hacluster.consensus.loop import ControlLoop

log = logging.getLogger(__name__)


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if systemd set it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]       # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd (%s): %s", state, exc)

GC_GEN0_THRESHOLD = 20_000


class Node:
    def __init__(self, cfg: ClusterConfig, name: str, role: Role) -> None:
        self.cfg = cfg
        self.me: NodeConfig = cfg.node(name)
        self.name = name
        self.role = role
        self.data_dir = self.me.data_dir
        self.db_dir = self.data_dir / "db"
        self.store: Store | None = None
        self.feed: WalFeed | None = None
        self.source: ReplicationSource | None = None
        self.checkpoints: CheckpointService | None = None
        self.follower: Follower | None = None
        self._follower_task: asyncio.Task[None] | None = None
        self.positions = ReplicaPositions()
        self.lease_timing = settings.lease_timing(cfg) if cfg.uses_consensus else None
        self.gate = WriteGate(self.lease_timing)
        self.lineage = Lineage(self.data_dir) if self.data_dir.exists() else None
        self.control: ControlLoop | None = None
        self.hooks = Hooks(cfg.hooks, name)
        self.watchdog = Watchdog(cfg.watchdog, name)
        self._watchdog_tried = False       # armed once per writable spell (automatic mode)
        self._watchdog_usable = True
        self._tasks: list[asyncio.Task[None]] = []
        self._janitor_task: asyncio.Task[None] | None = None   # while primary only
        self._runner: web.AppRunner | None = None
        self._role_lock = asyncio.Lock()
        self.started_at = time.time()
        self.writes = 0
        self.unknown_outcomes = 0
        # The highest seq acknowledged to a client by this process (rule 2: renewals and
        # releases carry it into Raft as the floor no successor may be below).
        self.acked_seq = 0
        self.wal_sync = GroupSync(self.latest_seq, self._sync_wal)
        self.disk_full: str | None = None     # set by a RocksDB space error, until reopened
        self._stopping = False                # stop() began: no write waits for replicas
        st = cfg.storage
        self.space = SpaceGuard(self.data_dir, st.min_free_mb, st.reserve_mb, name)

    @property
    def is_primary(self) -> bool:
        return self.role.primary == self.name

    @property
    def column_families(self) -> list[str]:
        return self.store.column_families if self.store else list(self.cfg.column_families)

    def primary_url(self) -> str | None:
        if self.role.primary is None:
            return None
        return self.api_url_of(self.role.primary)

    def api_url_of(self, name: str) -> str | None:
        """A node's API URL: from the config, or for a member added since, from its report."""
        for n in self.cfg.nodes:
            if n.name == name:
                return n.api.url
        member = self.control.state().member(name) if self.control else None
        return member.api_url if member else None

    def current_store(self) -> Store | None:
        return self.follower.store if self.follower else self.store

    def latest_seq(self) -> int:
        store = self.current_store()
        return store.latest_seq() if store else 0

    def _sync_wal(self) -> None:
        store = self.current_store()
        if store is not None:
            store.sync_wal()

    @property
    def durable_acks(self) -> bool:
        return self.cfg.storage.durability == "fsync"

    def history_refusal(self, label: int, seq: int) -> str | None:
        """Why a replica whose data up to ``seq`` is labelled ``label`` cannot follow this
        primary from there (rule 1: the stream request names its epoch); None when it can."""
        if self.control is None or seq <= 0:
            return None
        history = self.control.state().history
        mine = self.lineage_label(seq)
        if same_history(label, mine, seq, history):
            return None
        return (f"the replica's seqs up to {seq} came from epoch {label}, this primary's from "
                f"epoch {mine}, and the epoch history says they differ there: the replica "
                "holds a divergent tail")

    def lineage_label(self, seq: int) -> int:
        """The epoch whose history this node's data up to ``seq`` belongs to (0: unknown)."""
        if self.lineage is None or seq <= 0:
            return 0
        return self.lineage.last_epoch(seq) or 0

    def open_store(self) -> Store:
        return Store(self.db_dir, self.cfg.column_families, self.cfg.storage,
                     sync_writes=self.cfg.storage.fsync_writes)

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.space.tend()        # the reserve, before anything else takes the space
        if self.lineage is None:
            self.lineage = Lineage(self.data_dir)
        bootstrap.recover(self.data_dir)
        st = self.cfg.storage
        prune_divergence(self.data_dir, st.divergent_keep_days, st.divergent_max_mb << 20,
                         startup=True)
        if self.cfg.uses_consensus:
            # The consensus loop decides the role; until then this node is nobody's replica.
            # A database already on disk is opened now, so the first report carries its real
            # position (an election compares positions).
            if has_database(self.db_dir):
                self.store = self.open_store()
            from hacluster.consensus.loop import ControlLoop
            self.control = ControlLoop(self, self.cfg)
            self.control.start()
        elif self.is_primary:
            self._start_primary(self.open_store())
            self.gate.open(self.role.epoch)
        else:
            self._start_replica()
        if self.control is None:
            # Without a control loop, something must still notice the disk filling (a
            # replica stops applying) and emptying again.
            self._tasks.append(asyncio.get_running_loop().create_task(self._watch_space()))
        self._runner = web.AppRunner(build_app(self), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.me.api.host, self.me.api.port, reuse_address=True)
        await site.start()
        # Objects alive after start-up live for the whole process: keep them out of the
        # cyclic collector, and collect young objects less often, so collection pauses stay
        # short and rare on the write and apply paths.
        notify_systemd("READY=1")       # Type=notify units start their dependants now
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        log.info("%s serving on %s as %s (epoch %d)", self.name, self.me.api.url,
                 "primary" if self.is_primary else
                 ("replica of " + self.role.primary) if self.role.primary else "candidate",
                 self.role.epoch)

    def _start_primary(self, store: Store) -> None:
        self.store = store
        self.feed = WalFeed(self.db_dir, store.latest_seq() + 1, lambda: self.role.epoch)
        self.feed.start()
        self.source = ReplicationSource(
            node_name=self.name, db_dir=self.db_dir, feed=self.feed, positions=self.positions,
            latest_seq=store.latest_seq, column_families=lambda: store.column_families,
            epoch=lambda: self.role.epoch,
            heartbeat_interval=self.cfg.replication.heartbeat_interval,
            is_member=self.is_member, history_refusal=self.history_refusal)
        self.checkpoints = CheckpointService(
            self.data_dir / "checkpoints", create=store.checkpoint,
            epoch=lambda: self.role.epoch, column_families=lambda: store.column_families,
            ttl_seconds=self.cfg.replication.checkpoint_ttl_seconds,
            on_bootstrap=self._bootstrap_started,
            max_checkpoints=self.cfg.replication.max_checkpoints)
        self.checkpoints.clear()
        # The janitor belongs to this spell as primary: one at a time, cancelled on demotion.
        if self._janitor_task is not None:
            self._janitor_task.cancel()
        self._janitor_task = asyncio.get_running_loop().create_task(self._janitor())
        log.info("%s is primary: epoch %d, seq %d", self.name, self.role.epoch,
                 store.latest_seq())

    def _start_replica(self) -> None:
        primary_url = self.primary_url()
        assert primary_url is not None
        self.follower = Follower(
            node=self.name, data_dir=self.data_dir, primary_url=primary_url,
            token=self.cfg.token,
            cfg=self.cfg.replication, open_store=self._replica_store,
            known_epoch=self.role.epoch, lineage=self.lineage,
            space_low=lambda: self.space.low, durable=self.durable_acks)
        # A store this node already has open (it was primary, or followed another primary)
        # is handed over, never opened twice.
        self.follower.store = self.store
        self._follower_task = asyncio.get_running_loop().create_task(self.follower.run())

    def is_member(self, name: str) -> bool:
        """A node of the config, or a member admitted to Raft since."""
        return name in {n.name for n in self.cfg.nodes} or (
            self.control is not None and self.control.state().member(name) is not None)

    def _bootstrap_started(self, name: str) -> None:
        # Only members are replicas: a backup or another tool fetching a checkpoint must not
        # show up (and alert) as a lagging replica.
        if self.is_member(name):
            self.positions.bootstrap_started(name)

    def _replica_store(self) -> Store:
        self.store = self.open_store()
        return self.store

    async def _stop_follower(self) -> None:
        if self.follower is None:
            return
        self.follower.stop()
        if self._follower_task:
            self._follower_task.cancel()
            try:
                await self._follower_task
            except (asyncio.CancelledError, Exception):
                pass
        self.store = self.follower.detach_store()
        self.follower = None
        self._follower_task = None

    async def _stop_primary_parts(self) -> None:
        if self.source:
            self.source.closing.set()
        if self.feed:
            await self.feed.stop()
        self.feed = None
        self.source = None
        self.checkpoints = None
        janitor, self._janitor_task = self._janitor_task, None
        if janitor is not None:
            janitor.cancel()
            try:
                await janitor
            except (asyncio.CancelledError, Exception):
                pass

    def _may_serve(self, epoch: int) -> str | None:
        """Rule 7: why a committed Acquire or Renew of ``epoch`` must not open the gate now.

        Checked under the role lock, when the gate is about to open: between the commit and
        now the lock may have moved on, a switchover may have shut the gate, or this process
        may have been paused (SIGSTOP) across all of it.
        """
        if self.control is None:
            return None
        lock = self.control.state().lock
        if not (lock.held and lock.holder == self.name):
            return f"the lock is no longer mine (holder {lock.holder}, epoch {lock.epoch})"
        if lock.epoch != epoch:
            return f"the lock moved on to epoch {lock.epoch}"
        if self.control.switching:
            return "a switchover holds the gate shut"
        if not self.is_primary:
            # The epoch starts where its Acquire said: this node must hold exactly the data
            # before it (an Acquire that committed late, after more was applied, is not ours).
            record = next((r for r in self.control.state().history
                           if r.epoch == epoch), None)
            have = self.latest_seq()
            if record is not None and record.start_seq != have + 1:
                return (f"epoch {epoch} starts at seq {record.start_seq} but this node holds "
                        f"seq {have}")
        return None

    def _stale(self, epoch: int) -> bool:
        stale = self._may_serve(epoch)
        if stale is not None:
            log.info("%s: not opening the write gate for epoch %d: %s", self.name, epoch, stale)
        return stale is not None

    async def become_primary(self, epoch: int, proposed_at: float) -> None:
        """The lock is ours (a committed Acquire or Renew proposed at ``proposed_at``)."""
        async with self._role_lock:
            if self._stale(epoch):
                return
            if self.is_primary and self.role.epoch == epoch and self.feed is not None:
                if self.gate.refusal() is None:
                    self.gate.extend(proposed_at)   # a routine renewal
                else:
                    self.gate.open(epoch, proposed_at)
                return
            try:
                self.watchdog.arm()     # before the gate opens, never after
            except WatchdogError as exc:
                if self.control is not None:
                    self.control.fencing_failed(epoch, str(exc))   # the loop releases
                return
            if self.is_primary:
                # Primary of an older epoch still (its parts serve that epoch): stop them.
                await self._stop_primary_parts()
            await self._stop_follower()
            if self._stale(epoch):              # a batch may have landed while it stopped
                return
            store = self.store or self.open_store()
            # Durable before the first write of this epoch: what follows is epoch's data.
            assert self.lineage is not None
            self.lineage.record(epoch, store.latest_seq() + 1)
            self.role = Role(self.name, epoch)
            # What this node acknowledged in an earlier epoch was recorded then, or was a
            # tail it has since dropped (async mode): it is no floor for this epoch, and a
            # floor above every node's data would let no one be promoted (rule 2).
            self.acked_seq = 0
            self._start_primary(store)
            self.gate.open(epoch, proposed_at)
            self.hooks.fire("promote", role="primary", epoch=epoch, primary=self.name)

    async def stop_following(self) -> int:
        """Stop applying (before proposing to become primary); return the seq we stopped at."""
        async with self._role_lock:
            await self._stop_follower()
            if self.store is None and has_database(self.db_dir):
                self.store = self.open_store()
            return self.store.latest_seq() if self.store else 0

    async def become_replica(self, primary: str | None, epoch: int) -> None:
        """Follow ``primary`` (or no one); the write gate closes first."""
        self.gate.close(f"following {primary}" if primary else "no primary")
        self.watchdog.disarm("demoted" if self.is_primary else "not the primary")
        async with self._role_lock:
            if self.role == Role(primary, epoch) and (
                    primary is None or self.follower is not None):
                return
            was_primary = self.is_primary
            await self._stop_primary_parts()
            await self._stop_follower()
            self.role = Role(primary, epoch)
            if was_primary:
                log.info("%s demoted in epoch %d; now %s", self.name, epoch,
                         f"following {primary}" if primary else "waiting for a primary")
            self.hooks.fire("demote" if was_primary else "follow", role="replica", epoch=epoch,
                            primary=primary)
            if primary is not None and primary != self.name:
                if self.control is not None:
                    await self._handle_divergence(self.control.state().history)
                self._start_replica()

    async def reinit(self) -> str:
        """Wipe this replica's database and bootstrap it again from the primary's checkpoint.

        Returns the primary it will copy from. Refused (NotWritable) on the primary and while
        no primary is known: a node must never wipe the only copy it could be asked to serve.
        """
        async with self._role_lock:
            primary = self.role.primary
            if self.is_primary:
                raise NotWritable(f"{self.name} is the primary; switch over first")
            if primary is None:
                raise NotWritable("no primary is known to copy from")
            await self._stop_follower()
            if self.store is not None:
                self.store.close()
                self.store = None
                gc.collect()   # rocksdict releases its handles on collection
            if self.db_dir.exists():
                shutil.rmtree(self.db_dir)
            log.info("%s: reinit: database removed; bootstrapping from %s (epoch %d)",
                     self.name, primary, self.role.epoch)
            self._start_replica()
            return primary

    async def _handle_divergence(self, history: Sequence[EpochRecord]) -> None:
        """Before following: keep writes no current primary has in a file, then start over."""
        store = self.store
        if store is None and has_database(self.db_dir):
            store = self.store = self.open_store()
        if store is None or self.lineage is None:
            return
        div = find_divergence(self.lineage, store.latest_seq(), history)
        if div is None:
            return
        st = self.cfg.storage
        # Off the event loop: a long tail must not stall leases, Raft reports or /status.
        # Nothing writes this store meanwhile: the caller holds the role lock, the follower
        # and the primary parts are stopped, and the role names another primary, so
        # Node.write refuses.
        saved = await asyncio.to_thread(save_divergent_tail, self.data_dir, self.name, store,
                                        div, max_bytes=st.divergent_max_mb << 20)
        log.error("%s: divergent tail: seqs %d..%d were written in epoch %d but epoch history "
                  "gives them to a later epoch; %d ops saved to %s%s; re-bootstrapping from "
                  "the primary", self.name, div.first_seq, div.last_seq, div.epoch, saved.ops,
                  saved.path, "" if saved.complete else f" (INCOMPLETE: {saved.error})")
        store.close()
        self.store = None
        aside = set_aside(self.db_dir)
        self.lineage.reset(0, 1)
        if saved.complete:
            await asyncio.to_thread(shutil.rmtree, aside, True)
        else:
            log.error("%s: kept the old database at %s for manual recovery", self.name, aside)
        await asyncio.to_thread(prune_divergence, self.data_dir, st.divergent_keep_days,
                                st.divergent_max_mb << 20, keep=saved.path)

    async def _watch_space(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            try:
                self.space.tend(self.disk_full)
            except OSError as exc:
                log.warning("%s: cannot check disk space: %s", self.name, exc)

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(min(60.0, self.cfg.replication.checkpoint_ttl_seconds / 4))
            if self.checkpoints:
                self.checkpoints.expire()

    def write(self, ops: list[NamedOp]) -> AppliedRange:
        """The write gate: checked before the local write and again before acknowledging."""
        refusal = self.gate.refusal() if self.is_primary else f"{self.name} is not the primary"
        if refusal or self.store is None:
            raise NotWritable(refusal or "no database open")
        self.check_space()
        try:
            applied = self.store.write(ops)
        except Exception as exc:
            if not no_space(exc):
                raise
            # RocksDB stops every later write after a failed WAL append; only a reopen (once
            # there is space) clears it. Nothing of this write was applied.
            self.disk_full = f"RocksDB ran out of space: {exc}"
            self.gate.close("disk full")
            self.space.tend(self.disk_full)
            log.error("%s: disk full, writes refused: %s", self.name, exc)
            raise DiskFull(self.disk_full) from None
        self.writes += 1
        if self.feed:
            self.feed.notify()
        late = self.gate.refusal()
        if late:
            raise OutcomeUnknown(f"written locally at seq {applied.last_seq} but not "
                                 f"acknowledged: {late}; it may be lost on failover")
        return applied

    async def acknowledge(self, seq: int) -> None:
        """Return once the write ending at ``seq`` may be acknowledged to its client.

        Durable here first (``storage.durability: fsync``, one sync for every write waiting),
        confirmed by the synchronous set in sync mode, and the gate still open at the end;
        else OutcomeUnknown. Records ``seq`` as acknowledged (rule 2) with no await between the
        last check and the record, so a release after the gate shut sees every ack.
        """
        if self.durable_acks:
            try:
                await self.wal_sync.through(seq)
            except Exception as exc:
                raise OutcomeUnknown(f"written locally at seq {seq} but the WAL sync failed: "
                                     f"{exc}") from None
        await self.confirm(seq)
        late = self.gate.refusal()
        if late:
            raise OutcomeUnknown(f"written at seq {seq} but not acknowledged: {late}; it may "
                                 "be lost on failover")
        self.acked_seq = max(self.acked_seq, seq)

    def check_space(self) -> None:
        """Refuse a write (DiskFull) after a RocksDB space error or while low on space."""
        why = self.space.tend(self.disk_full)
        if why:
            raise DiskFull(why)

    async def recover_disk(self) -> bool:
        """After a space error: reopen the store once there is room again. True when done."""
        if not self.disk_full:
            return True
        if self.space.tend() is not None:
            return False
        async with self._role_lock:
            if self.follower is not None:
                self.disk_full = None      # the follower reopens its own store
                return True
            if self.store is not None:
                self.store.close()
                self.store = None
            try:
                self.store = self.open_store()
            except Exception as exc:
                if no_space(exc):
                    return False
                raise
            log.info("%s: disk space is back; database reopened at seq %d", self.name,
                     self.store.latest_seq())
            self.disk_full = None
            return True

    @property
    def sync_mode(self) -> bool:
        return self.control is not None and self.cfg.replication.mode == "sync"

    async def confirm(self, seq: int) -> None:
        """Sync mode: return once every member of the synchronous set has ``seq``.

        The set is the committed one plus, while a change of it is undecided, every set
        proposed since (rule 6). Raises OutcomeUnknown when that does not happen within
        ``sync_timeout_s``, or when the lock is lost meanwhile: ``seq`` is then on this node
        but may be on no replica.
        """
        if not self.sync_mode:
            return
        assert self.control is not None
        deadline = time.monotonic() + self.cfg.replication.sync_timeout_s
        need = self.cfg.replication.sync_replicas
        while True:
            state = self.control.state()
            lock = state.lock
            if not (lock.held and lock.holder == self.name and lock.epoch == self.role.epoch):
                raise OutcomeUnknown(f"written locally at seq {seq} but the lock was lost "
                                     "before replicas confirmed it")
            if self._stopping:
                # The answer is the same 503 a timeout gives, only sooner: waiting on would
                # hold the shutdown for sync_timeout_s (aiohttp's cleanup waits for handlers).
                raise OutcomeUnknown(f"written locally at seq {seq} but the node is shutting "
                                     "down before the synchronous set confirmed it")
            members = self.control.confirmers(state)
            if (len(state.sync_set) >= need
                    and all(self.positions.applied(m) >= seq for m in members)):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise OutcomeUnknown(
                    f"written locally at seq {seq} but not confirmed by the synchronous set "
                    f"{sorted(members) or '(none recorded yet)'} within "
                    f"{self.cfg.replication.sync_timeout_s} s")
            await self.positions.changed(min(left, 0.05))

    def begin_read(self) -> int:
        """Rule 8, first half: may the primary read now, and up to which seq does it see?

        The caller reads right after, on the same turn of the event loop, so the read sees
        exactly the returned seq; then it calls ``finish_read`` before answering.
        Raises NotWritable when this node is not a primary with a valid lease.
        """
        refusal = self.gate.refusal() if self.is_primary else f"{self.name} is not primary"
        if refusal is not None:
            raise NotWritable(refusal)
        return self.latest_seq()

    async def finish_read(self, seq: int) -> None:
        """Rule 8, second half: what the read saw (up to ``seq``) is safe to show.

        Waits until the synchronous set confirmed ``seq`` (sync mode: a value a failover
        could take back is never shown) and checks the lease again: a primary whose lease ran
        out meanwhile may have been replaced. Raises NotWritable or OutcomeUnknown.
        """
        await self.confirm(seq)
        late = self.gate.refusal()
        if late is not None:
            raise NotWritable(late)

    async def wait_applied(self, seq: int, timeout: float) -> int | None:
        """A replica's read-your-writes: wait until this node holds ``seq``; its seq, or None."""
        deadline = time.monotonic() + timeout
        while True:
            have = self.latest_seq()
            if have >= seq:
                return have
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.005)

    def write_refusal(self) -> str | None:
        """Why this node would refuse a write now (as primary), or None."""
        return self.gate.refusal() or self.disk_full or self.space.low

    # -- the control loop's port (consensus.ports.NodePort) ----------------------------------

    def local_state(self) -> LocalState:
        self.space.tend(self.disk_full)     # a replica's reserve goes too when its disk fills
        store = self.current_store()
        return LocalState(
            seq=store.latest_seq() if store else None,
            has_database=store is not None or has_database(self.db_dir),
            is_primary=self.is_primary,
            writable=self.is_primary and self.gate.refusal() is None,
            renewal_proposed_at=self.gate.renewal_proposed_at,
            disk_full=self.disk_full or None, space_low=self.space.low or None,
            unfit=self._unfit(), acked_seq=self.acked_seq,
            replicas=tuple(ReplicaView(r.name, r.connected, r.applied_seq, r.advanced_at)
                           for r in self.positions.replicas.values()))

    def _unfit(self) -> str | None:
        """Why this node may not become primary, beside its disk: replication stopped for good
        (diverged), or a required watchdog that cannot be armed."""
        if self.follower is not None and self.follower.status.state == "diverged":
            return "replication diverged"
        usable = self.watchdog.usable()
        if usable != self._watchdog_usable:
            self._watchdog_usable = usable
            if not usable:
                log.warning("%s: watchdog required but %s is not writable: not a candidate "
                            "for primary", self.name, self.cfg.watchdog.device)
        return None if usable else (f"watchdog required but {self.cfg.watchdog.device} is "
                                    "not writable")

    def close_gate(self, reason: str) -> None:
        self.gate.close(reason)

    def lease_left(self) -> float:
        return self.gate.lease_left()

    def tend_fencing(self, paused: bool) -> str | None:
        """Fed on every pass while writable; disarmed in pause mode and when not writable."""
        wd = self.watchdog
        if not wd.enabled:
            return None
        if not (self.is_primary and self.gate.refusal() is None):
            wd.disarm("the write gate is closed")
            self._watchdog_tried = False
            return None
        if paused:
            wd.disarm("maintenance mode")
            self._watchdog_tried = False
            return None
        if not wd.armed and not self._watchdog_tried:
            self._watchdog_tried = True     # automatic mode: one attempt per writable spell
            try:
                wd.arm()
            except WatchdogError as exc:
                self.gate.close(str(exc))   # shut now; the loop gives the lock up
                return str(exc)
        wd.feed()
        return None

    def status_epoch(self) -> int:
        """The newest epoch this node knows: a replica learns it from its stream."""
        return self.follower.known_epoch if self.follower else self.role.epoch

    def leader(self) -> str | None:
        """Who holds a valid lease, as far as this node can tell."""
        if self.is_primary:
            return self.name if self.gate.refusal() is None else None
        if self.control is None:
            return self.role.primary
        last = self.control.last
        if last is not None and last.action is Action.FOLLOW:
            return last.target
        return None

    def _loop_age(self, now: float) -> float | None:
        """How long since the control loop and the Raft ticks last both made progress."""
        if self.control is None or self.control.last_pass_at is None:
            return None
        ages = [now - self.control.last_pass_at]
        tick = self.control.raft_tick_at()
        if tick is not None:
            ages.append(now - tick)
        return max(ages)

    def view(self, now: float) -> NodeView:
        store = self.current_store()
        st = self.follower.status if self.follower else None
        leader = self.leader()
        rep = self.cfg.replication
        return NodeView(
            name=self.name, is_primary=self.is_primary,
            writable=self.is_primary and self.write_refusal() is None,
            write_refusal=self.write_refusal() if self.is_primary else None,
            epoch=self.status_epoch(), leader=leader,
            leader_url=self.api_url_of(leader) if leader else None,
            stream_state=st.state if st else None,
            applied_seq=store.latest_seq() if store else None,
            primary_seq=st.primary_seq if st else None,
            last_frame_age_s=now - st.last_frame_at if st and st.last_frame_at else None,
            loop_age_s=self._loop_age(now),
            lease_s=self.cfg.consensus.lease_s if self.control else float("inf"),
            stream_timeout_s=max(2.0, 4 * rep.heartbeat_interval),
            max_lag=rep.max_replica_lag, tags=self.me.tags)

    def status(self) -> dict[str, Any]:
        store = self.current_store()
        seq = store.latest_seq() if store else None
        # Writable and lag as the probes, metrics and KV answers see them: one view.
        view = self.view(time.monotonic())
        out: dict[str, Any] = {
            "node": self.name,
            "role": "primary" if self.is_primary else "replica",
            "primary": self.role.primary,
            "epoch": self.status_epoch(),
            "writable": view.writable,
            "disk_full": self.disk_full or self.space.low,
            "applied_seq": seq,
            "column_families": self.column_families,
            "rocksdb": store.background_work() if store else None,
            "uptime": round(time.time() - self.started_at, 1),
            "version": VERSION,
        }
        if self.is_primary:
            out["replicas"] = self.positions.snapshot(seq or 0)
            out["writes"] = self.writes
            out["wal_feed_error"] = self.feed.error if self.feed else None
        if self.follower:
            st = self.follower.status
            out["replication"] = {
                "state": st.state, "error": st.error, "primary_seq": st.primary_seq,
                "lag": probes.lag(view),
                "connects": st.connects, "batches_applied": st.batches_applied,
                "ops_applied": st.ops_applied, "bootstraps": st.bootstraps,
                "bootstrap_bytes": st.bootstrap_bytes,
            }
        if self.control:
            out["consensus"] = self.control.status()
        if self.watchdog.enabled:
            out["watchdog"] = self.watchdog.snapshot()
        out["divergent_tails"] = list_divergent_tails(self.data_dir)
        return out

    async def stop(self) -> None:
        notify_systemd("STOPPING=1")
        self._stopping = True
        self.gate.close("shutting down")
        self.watchdog.disarm("shutting down")
        if self.control:
            await self.control.stop()
        await self._stop_follower()
        await self._stop_primary_parts()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._runner:
            await self._runner.cleanup()
        if self.store:
            self.store.close()
        log.info("%s stopped", self.name)

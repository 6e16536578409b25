"""One hacluster node process: its store, its role, and the parts that role needs.

Owns the wiring of a process: recovering an interrupted checkpoint install before anything
opens the database, starting the control loop (consensus mode: it decides the role) or the
role the config names (static mode), the role transitions the loop drives through its
``NodePort`` — ``become_primary`` (the WAL feed, stream source, checkpoint service and janitor,
then the write gate) and ``become_replica`` (the follower) — and the HTTP server. The write path
is ``write_path``'s, what the node shows and reports is ``views``', the upkeep of its data
directory is ``upkeep``'s. It must never accept a client write unless it is the primary with
its gate open, never open the gate on a stale epoch, and never open the DB before an
interrupted checkpoint install has been finished or discarded.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hacluster import logfields
from hacluster.aiotasks import cancel_and_wait
from hacluster.api import build_app
from hacluster.api.counters import WatchStats
from hacluster.config import ClusterConfig, NodeConfig
from hacluster.consensus import settings
from hacluster.fencing import WriteGate
from hacluster.groupsync import GroupSync, NativeWalSync
from hacluster.hooks import Hooks
from hacluster.key_seqs import SEQ_CF
from hacluster.lineage.labels import Lineage
from hacluster.lineage.tails import (
    prune_divergence,
)
from hacluster.managed.options import ManagedDbError
from hacluster.node.archiving import start_archiver, stop_archiver
from hacluster.node.dynamic import DynamicSettings
from hacluster.node.managed import ManagedRole
from hacluster.node.reload import reload_credentials
from hacluster.node.systemd import notify_systemd
from hacluster.node.upkeep import Upkeep
from hacluster.node.views import NodeViews
from hacluster.node.write_path import WritePath
from hacluster.replication import bootstrap
from hacluster.replication.checkpoints import CheckpointService
from hacluster.replication.feed import POLL_INTERVAL, WalFeed
from hacluster.replication.follower import Follower
from hacluster.replication.positions import ReplicaPositions
from hacluster.replication.source import ReplicationSource
from hacluster.role import Role
from hacluster.security import certs
from hacluster.security.tls import Contexts
from hacluster.space import SpaceGuard
from hacluster.store import Store, StoreSlot, has_database
from hacluster.watchdog import Watchdog, WatchdogError

if TYPE_CHECKING:
    from hacluster.consensus.loop import ControlLoop

log = logging.getLogger("hacluster.node")


GC_GEN0_THRESHOLD = 20_000
CERT_WARN_DAYS = 30         # a certificate closer to its end is warned about at start


class Node(WritePath, NodeViews, Upkeep, ManagedRole, DynamicSettings):
    """One node process (see the module docstring); the mixins hold the rest of it."""

    def __init__(self, cfg: ClusterConfig, name: str, role: Role) -> None:
        self.cfg = cfg
        self.me: NodeConfig = cfg.node(name)
        self.name = name
        self.role = role
        self.data_dir = self.me.data_dir
        app = cfg.application
        # Managed mode: the service's own database, wherever its config puts it.
        self.db_dir = app.db_path_for(name) if app else self.data_dir / "db"
        self._slot = StoreSlot()          # the one handle to the database (``store``)
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
        self.watches = WatchStats()
        self.http_connections = 0
        # The highest seq acknowledged to a client by this process (rule 2: renewals and
        # releases carry it into Raft as the floor no successor may be below).
        self.acked_seq = 0
        self.wal_sync = GroupSync(self.latest_seq, self._sync_wal, self._native_wal_sync)
        self.disk_full: str | None = None     # set by a RocksDB space error, until reopened
        self._stopping = False                # stop() began: no write waits for replicas
        st = cfg.storage
        self.space = SpaceGuard(self.data_dir, st.min_free_mb, st.reserve_mb, name)
        # Built before anything starts: a certificate that cannot be used stops the node here
        # (TlsError names the file), never a fallback to plain HTTP.
        self.tls = Contexts.build(cfg.tls.for_node(name)) if cfg.tls.enabled else None
        self._managed_init()
        logfields.attach(self)           # node, role, epoch, seq on every log line

    @property
    def is_primary(self) -> bool:
        return self.role.primary == self.name

    def _count_connections(self, server: web.Server | None) -> None:
        """Count accepted HTTP connections (``/status``: a client pool that reconnects for
        every request shows as a count growing with the requests)."""
        if server is None:
            return
        made = server.connection_made

        def counted(handler: Any, transport: Any) -> None:
            self.http_connections += 1
            made(handler, transport)

        server.connection_made = counted  # type: ignore[method-assign]

    @property
    def column_families(self) -> list[str]:
        """The column families clients may use (not the store's own ``SEQ_CF``)."""
        names = self.store.column_families if self.store else list(self.cfg.column_families)
        return [n for n in names if n != SEQ_CF]

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

    @property
    def store(self) -> Store | None:
        """The open database, or None; the follower shares the same slot while it follows."""
        return self._slot.store

    @store.setter
    def store(self, store: Store | None) -> None:
        self._slot.store = store

    def latest_seq(self) -> int:
        store = self.store
        # A managed primary has no handle: its seq is what it read of the service's WAL.
        return store.latest_seq() if store else self.managed_latest_seq()

    def _sync_wal(self) -> None:
        store = self.store
        if store is not None:
            store.sync_wal()
        elif self.service is not None and self.feed is not None:
            self.sync_service_wal()

    def _native_wal_sync(self) -> NativeWalSync | None:
        store = self.store
        return store.native_wal_sync() if store is not None else self.service_syncer()

    @property
    def durable_acks(self) -> bool:
        return self.cfg.storage.durability == "fsync"

    def open_store(self) -> Store:
        if self.cfg.managed:
            return Store(self.db_dir, (), self.cfg.storage, managed=True)
        return Store(self.db_dir, self.cfg.column_families, self.cfg.storage,
                     sync_writes=self.cfg.storage.fsync_writes)

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.space.tend()        # the reserve, before anything else takes the space
        if self.lineage is None:
            self.lineage = Lineage(self.data_dir)
        self.managed_preflight()
        bootstrap.recover(self.data_dir, self.db_dir)
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
        self._count_connections(self._runner.server)
        site = web.TCPSite(self._runner, self.me.api.host, self.me.api.port, reuse_address=True,
                           ssl_context=self.tls.server if self.tls else None)
        await site.start()
        self._warn_insecure()
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: reload_credentials(self))
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

    def _start_primary(self, store: Store | None, start_seq: int | None = None) -> None:
        """The primary's parts; ``store`` None in managed mode (the service owns the
        database: the feed tails its WAL from ``start_seq``, checkpoints come from a
        secondary instance)."""
        self.store = store
        app = self.cfg.application
        if store is not None:
            start_seq = store.latest_seq() + 1
            column_families = lambda: store.column_families   # noqa: E731
            create = store.checkpoint
            poll = POLL_INTERVAL
        else:
            assert app is not None and start_seq is not None
            column_families = self.service_column_families
            create = self.service_checkpoint
            poll = app.poll_interval_ms / 1000
        self.feed = WalFeed(self.db_dir, start_seq, lambda: self.role.epoch, poll_interval=poll)
        self.feed.start()
        self.source = ReplicationSource(
            node_name=self.name, db_dir=self.db_dir, feed=self.feed, positions=self.positions,
            latest_seq=self.latest_seq, column_families=column_families,
            epoch=lambda: self.role.epoch,
            heartbeat_interval=self.cfg.replication.heartbeat_interval,
            is_member=self.is_member,
            history_refusal=self.history_refusal if self.cfg.uses_consensus else None)
        self.checkpoints = CheckpointService(
            self.data_dir / "checkpoints", create=create,
            epoch=lambda: self.role.epoch, column_families=column_families,
            ttl_seconds=self.cfg.replication.checkpoint_ttl_seconds,
            on_bootstrap=self._bootstrap_started,
            max_checkpoints=self.cfg.replication.max_checkpoints,
            create_in_thread=store is None)
        self.checkpoints.clear()
        # The janitor belongs to this spell as primary: one at a time, cancelled on demotion.
        if self._janitor_task is not None:
            self._janitor_task.cancel()
        self._janitor_task = asyncio.get_running_loop().create_task(self._janitor())
        start_archiver(self)        # backup.url set: the WAL goes to the archive too
        log.info("%s is primary: epoch %d, seq %d%s", self.name, self.role.epoch,
                 start_seq - 1, "" if store else " (managed: the service writes)")

    def _start_replica(self) -> None:
        primary_url = self.primary_url()
        assert primary_url is not None
        self.follower = Follower(
            node=self.name, data_dir=self.data_dir, primary_url=primary_url,
            # With mutual TLS the certificate is the credential: no token crosses the wire.
            token=None if self.cfg.tls.peer_client_auth else self.cfg.peer_token,
            ssl=self.tls.client if self.tls else None,
            cfg=self.cfg.replication, open_store=self._replica_store,
            known_epoch=self.role.epoch, lineage=self.lineage,
            space_low=lambda: self.space.low, durable=self.durable_acks, slot=self._slot,
            db_dir=self.db_dir, before_install=self.stop_replica_service,
            after_install=self.restart_replica_service)
        self._follower_task = asyncio.get_running_loop().create_task(self.follower.run())

    def _warn_insecure(self) -> None:
        cert = self.tls.tls.cert_file if self.tls is not None else None
        if cert is not None and (days := certs.expires_in_days(cert)) < CERT_WARN_DAYS:
            log.warning("%s: its TLS certificate %s expires in %.1f days: renew it and send "
                        "SIGHUP (docs/security.md)", self.name, cert, days)
        if not self.cfg.tls.enabled:
            log.warning("%s: TLS is off (tls: off): tokens and data cross the network in the "
                        "clear; use it on loopback or a trusted network only", self.name)
        if self.cfg.token:
            log.warning("%s: cluster.token is one credential for every role, replication "
                        "included: move to role tokens (auth.tokens, docs/security.md)",
                        self.name)

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
        return self.open_store()        # the follower puts it in the shared slot

    async def _stop_follower(self) -> None:
        if self.follower is None:
            return
        self.follower.stop()
        await cancel_and_wait([self._follower_task])
        self.follower.detach_store()      # the store stays in this node's slot
        self.follower = None
        self._follower_task = None

    async def _stop_primary_parts(self) -> None:
        if self.source:
            self.source.closing.set()
        if self.feed:
            await self.feed.stop()
        self.feed = None
        # Made again on the first round after the next promotion: a reinit may have put
        # another database directory under the same path.
        self._close_service_syncer()
        self.source = None
        self.checkpoints = None
        await stop_archiver(self)
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
        if self._stopping:
            return "the node is shutting down"
        if epoch < self.role.epoch:
            return f"epoch {epoch} is older than epoch {self.role.epoch} this node serves"
        if self.control is None:
            return None
        lock = self.control.state().lock
        if not (lock.held and lock.holder == self.name):
            return f"the lock is no longer mine (holder {lock.holder}, epoch {lock.epoch})"
        if lock.epoch != epoch:
            return f"the lock moved on to epoch {lock.epoch}"
        if self.control.switching:
            return "a switchover holds the gate shut"
        unfenced = self.control.fencing_refusal(epoch)
        if unfenced is not None:
            return f"fencing failed in this epoch ({unfenced})"
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
                    self.gate.open(epoch, proposed_at, self._lock_lease_s(epoch))
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
            store: Store | None = None
            if self.service is not None:
                seq = await self.hand_db_to_service()
            else:
                store = self.store or self.open_store()
                seq = store.latest_seq()
            # Durable before the first write of this epoch: what follows is epoch's data.
            assert self.lineage is not None
            self.lineage.record(epoch, seq + 1)
            self.role = Role(self.name, epoch)
            # What this node acknowledged in an earlier epoch was recorded then, or was a
            # tail it has since dropped (async mode): it is no floor for this epoch, and a
            # floor above every node's data would let no one be promoted (rule 2).
            self.acked_seq = 0
            self._start_primary(store, seq + 1)
            self.gate.open(epoch, proposed_at, self._lock_lease_s(epoch))
            if self.service is not None:
                await self.start_primary_service()
            self.hooks.fire("promote", role="primary", epoch=epoch, primary=self.name)

    async def make_durable(self, seq: int) -> None:
        if self.store is not None or self.feed is not None:
            await self.wal_sync.through(min(seq, self.latest_seq()))

    async def stop_following(self) -> int:
        """Stop applying (before proposing to become primary); return the seq we stopped at."""
        async with self._role_lock:
            await self._stop_follower()
            if self.store is None and has_database(self.db_dir):
                self.store = self.open_store()
            return self.store.latest_seq() if self.store else 0

    async def become_replica(self, primary: str | None, epoch: int) -> None:
        """Follow ``primary`` (or no one); the write gate closes first."""
        lease_left = self.gate.lease_left()
        self.gate.close(f"following {primary}" if primary else "no primary")
        self.watchdog.disarm("demoted" if self.is_primary else "not the primary")
        async with self._role_lock:
            if self._stopping:
                return                  # stop() takes the parts down; nothing new starts
            if self.role == Role(primary, epoch) and (
                    primary is None or self.follower is not None):
                return
            was_primary = self.is_primary
            if was_primary and self.service is not None:
                # Fencing by process control: the service goes before anything else.
                await self.take_db_from_service(
                    f"following {primary}" if primary else "no primary", lease_left)
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
                await self.start_replica_service()

    async def stop(self) -> None:
        notify_systemd("STOPPING=1")
        self._stopping = True
        self.gate.close("shutting down")
        self.watchdog.disarm("shutting down")
        if self.service is not None:
            try:
                await self.take_db_from_service("shutting down", float("inf"))
            except ManagedDbError as exc:
                log.error("%s: %s", self.name, exc)
        if self.control:
            await self.control.stop()
        await self._stop_follower()
        await self._stop_primary_parts()
        await cancel_and_wait(self._tasks)
        if self._runner:
            await self._runner.cleanup()
        if self.store:
            self.store.close()
        log.info("%s stopped", self.name)

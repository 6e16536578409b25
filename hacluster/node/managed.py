"""Managed mode on a node: the service that owns the database, run where the role says.

Owns what a node does differently when the config has an ``application:`` section: the checks
before anything opens the service's database (its directory, who holds its lock, its RocksDB
options), handing the database to the service when this node becomes primary (the replica
handle closed first, the service started only once the write gate is open), taking it back
when the role is lost (the service stopped first), stopping a replica's read-only service
while its database directory is replaced and starting it on the new one, the lease watch that
stops the service when its lease runs low without a renewal and SIGKILLs it when the lease
ends, the check of every new OPTIONS file the service writes while it runs as primary (a
refusal stops the WAL stream and gives the primary role up, as a crash loop does), the WAL
sync and the seq a managed primary reports, and ``wait_held`` behind ``GET /v1/wait``.

It must never let the service run as primary without a valid lease (past the lease end it is
killed, before a successor's lease wait can end), never open the database while the service
has it open, never start the service as primary before the gate is open, and never answer a
``/v1/wait`` while the newest OPTIONS file of the service's database is unchecked or refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rocksdict

from hacluster.groupsync import NATIVE, NativeWalSync
from hacluster.managed.checkpoint import create_foreign_checkpoint, verify_continuation
from hacluster.managed.options import (
    ManagedDbError,
    check_db_path,
    check_service_options,
    lock_holder,
    refuse_if_in_use,
)
from hacluster.managed.options_watch import OptionsWatch
from hacluster.managed.policy import service_spec
from hacluster.managed.repair import give_db_back
from hacluster.managed.supervisor import Supervisor
from hacluster.managed.wal_sync import sync_live_wal
from hacluster.node_errors import NotWritable, OutcomeUnknown, WaitTimeout
from hacluster.store import has_database

if TYPE_CHECKING:
    from hacluster.config import ClusterConfig, NodeConfig
    from hacluster.consensus.loop import ControlLoop
    from hacluster.fencing import WriteGate
    from hacluster.groupsync import GroupSync
    from hacluster.lineage.labels import Lineage
    from hacluster.replication.feed import WalFeed
    from hacluster.replication.positions import ReplicaPositions
    from hacluster.role import Role
    from hacluster.store import Store

log = logging.getLogger("hacluster.node")

LEASE_WATCH_S = 0.01          # how often a managed primary looks at its lease
OPTIONS_LOOK_S = 0.1          # how often it looks for a new OPTIONS file (a stat of the dir)
OPTIONS_LIST_S = 1.0          # and lists the directory whatever its mtime says
LOCK_RELEASE_WAIT_S = 5.0     # a stopped service's LOCK is the kernel's to release: not long
PID_FILE = "service.pid"


class ManagedRole:
    """Mixed into ``Node``; every method is a no-op or the standalone behaviour when the
    config has no ``application`` section."""

    service: Supervisor | None = None
    _lease_task: asyncio.Task[None] | None = None
    _service_waiter: asyncio.Task[None] | None = None   # starts the replica service later
    options_watch: OptionsWatch | None = None    # while the service runs as primary
    _reopen_due = False           # options refused: reopen the database once the service stops
    _service_syncer: NativeWalSync | None = None     # the service's WAL, while primary
    _syncer_refused = False

    if TYPE_CHECKING:
        cfg: ClusterConfig
        me: NodeConfig
        name: str
        role: Role
        gate: WriteGate
        control: ControlLoop | None
        feed: WalFeed | None
        positions: ReplicaPositions
        wal_sync: GroupSync
        data_dir: Path
        db_dir: Path
        lineage: Lineage | None
        acked_seq: int
        _stopping: bool

        @property
        def store(self) -> Store | None: ...
        @store.setter
        def store(self, store: Store | None) -> None: ...
        @property
        def is_primary(self) -> bool: ...
        @property
        def sync_mode(self) -> bool: ...
        def primary_url(self) -> str | None: ...
        def latest_seq(self) -> int: ...
        async def confirm(self, seq: int) -> None: ...

    # -- start-up ------------------------------------------------------------------------------

    def _managed_init(self) -> None:
        app = self.cfg.application
        if app is None:
            return
        self.service = Supervisor(service_spec(app, self.name, self.data_dir), self.name,
                                  on_give_up=self._service_gave_up)

    def managed_preflight(self) -> None:
        """Refuse to start (ManagedDbError names the path, the option and the file) when the
        service's database cannot be managed here; kill a service this node left behind."""
        if self.cfg.application is None:
            return
        parent = self.db_dir.parent
        if not parent.is_dir():
            raise ManagedDbError(f"{self.cfg.source}: application.db_path: the directory "
                                 f"{parent} that should hold {self.db_dir.name} does not exist")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.stat(parent).st_dev != os.stat(self.data_dir).st_dev:
            # A checkpoint is installed by renaming it into place from the data directory.
            raise ManagedDbError(
                f"{self.cfg.source}: application.db_path: {self.db_dir} is on another file "
                f"system than the data directory {self.data_dir}: put both on one")
        self._kill_leftover_service()
        if self.db_dir.is_dir():
            refuse_if_in_use(self.db_dir)
        try:
            check_db_path(self.db_dir, must_exist=False)    # missing or empty: created later
        except ManagedDbError as exc:
            raise ManagedDbError(f"{self.cfg.source}: application.db_path: {exc}") from None
        if has_database(self.db_dir):
            check_service_options(self.db_dir)

    def _kill_leftover_service(self) -> None:
        """A service a previous run of this node started (and a SIGKILL kept from stopping):
        killed before anything else, so it cannot write beside whoever is primary now."""
        path = self.data_dir / PID_FILE
        try:
            pid_text, started = path.read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return
        if _start_time(pid) == started:
            log.warning("%s: killing the service (pid %d) a previous run left behind",
                        self.name, pid)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        path.unlink(missing_ok=True)

    def _record_service_pid(self) -> None:
        pid = self.service.pid if self.service else None
        path = self.data_dir / PID_FILE
        if pid is None:
            path.unlink(missing_ok=True)
            return
        started = _start_time(pid)
        if started is not None:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(f"{pid} {started}\n")
            tmp.replace(path)

    # -- the role changes --------------------------------------------------------------------

    def service_env(self, role: str) -> dict[str, str]:
        return {"HACLUSTER_ROLE": role, "HACLUSTER_EPOCH": str(self.role.epoch),
                "HACLUSTER_NODE": self.name, "HACLUSTER_PRIMARY_URL": self.primary_url() or "",
                "HACLUSTER_DB_PATH": str(self.db_dir), "HACLUSTER_API_URL": self.me.api.url}

    async def hand_db_to_service(self) -> int:
        """Before becoming primary: stop a read-only service, close the handle (the service
        must be able to take RocksDB's lock); the seq the database holds."""
        assert self.service is not None
        await self.service.stop("becoming primary")
        store = self.store
        seq = store.latest_seq() if store is not None else 0
        if store is not None:
            store.close()
            self.store = None
        return seq

    async def start_primary_service(self) -> None:
        """The gate is open: the service may write."""
        assert self.service is not None
        # A new spell: the options of whatever the service opens from now on are checked.
        self.options_watch = OptionsWatch(self.db_dir)
        self.service.options_error = None
        await self.service.want("primary", self.service_env("primary"))
        self._record_service_pid()
        if self.service.given_up:
            self._service_gave_up("the service gave up earlier and its restart window is "
                                  "not over")
            return
        if self._lease_task is None or self._lease_task.done():
            self._lease_task = asyncio.get_running_loop().create_task(self._lease_watch())

    async def take_db_from_service(self, reason: str, lease_left: float) -> None:
        """Leaving the primary role: the service stops (stop signal, SIGKILL once the lease
        it was given ends, or after stop_timeout_s if sooner) and its lock is released."""
        assert self.service is not None
        if self._lease_task is not None:
            self._lease_task.cancel()
            self._lease_task = None
        self.options_watch = None
        app = self.cfg.application
        assert app is not None
        await self.service.stop(reason, timeout_s=max(0.0, min(app.stop_timeout_s, lease_left)))
        self._record_service_pid()
        if self.store is not None:
            # Never probe the lock of a database this process has open: closing the probe's
            # descriptor would drop this process's own RocksDB lock.
            return
        deadline = time.monotonic() + LOCK_RELEASE_WAIT_S
        while (holder := lock_holder(self.db_dir)) is not None:
            if time.monotonic() > deadline:
                raise ManagedDbError(f"{self.db_dir}: still locked by pid {holder} after the "
                                     "service stopped: another process uses the database")
            await asyncio.sleep(0.02)
        if self._reopen_due:
            self._reopen_due = False
            st = self.cfg.storage
            await asyncio.to_thread(give_db_back, self.name, self.db_dir, self.lineage,
                                    st.wal_ttl_seconds, st.wal_size_limit_mb)

    async def start_replica_service(self) -> None:
        """Following a primary: the read-only service, when the config has one."""
        if self.service is None or self.cfg.application is None:
            return
        if self.cfg.application.replica_command is None:
            await self.service.want(None, {})
        elif has_database(self.db_dir):
            await self.service.want("replica", self.service_env("replica"))
        elif self._service_waiter is None or self._service_waiter.done():
            # A secondary instance needs a database to open: after the bootstrap (one waiter,
            # however often the node follows meanwhile; a reference, or it could be collected).
            self._service_waiter = asyncio.get_running_loop().create_task(
                self._replica_service_after_bootstrap())
        self._record_service_pid()

    async def stop_replica_service(self, why: str) -> None:
        """Before this replica's database directory is replaced (a checkpoint installed, a
        divergent tail set aside): a read-only service holding the old files would go on
        serving them, rolled-back writes included, and none of what follows."""
        app = self.cfg.application
        if self.service is not None and app is not None and app.replica_command is not None:
            await self.service.stop(f"the database is replaced: {why}")
            self._record_service_pid()

    @property
    def _following(self) -> bool:
        """A replica of some primary, not stopping: where a read-only service may run."""
        return not self.is_primary and self.role.primary is not None and not self._stopping

    async def restart_replica_service(self) -> None:
        """The new database is open: the read-only service starts on it, if still a replica."""
        if self._following:
            await self.start_replica_service()

    async def _replica_service_after_bootstrap(self) -> None:
        assert self.service is not None
        # Not once stop() began: it stopped the service first, and must not find it running.
        while self._following:
            if has_database(self.db_dir) and self.store is not None:
                await self.service.want("replica", self.service_env("replica"))
                self._record_service_pid()
                return
            await asyncio.sleep(0.2)

    async def _lease_watch(self) -> None:
        """While primary, keep the service inside the lease.

        A third of the lease left with no renewal: the service is frozen (SIGSTOP to its
        group), so nothing more can land; a renewal that comes late thaws it (SIGCONT),
        with no restart. The lease over: SIGKILL. The gate closed with lease left (a
        switchover, a lost lock): ``stop_signal``, SIGKILL at the lease's end. A service
        stopped here is started again once the gate is open with a renewed lease.
        """
        assert self.service is not None
        low = self.cfg.consensus.lease_s / 3
        lease_end = time.monotonic() + self.gate.lease_left()
        stopping: asyncio.Future[Any] | None = None
        frozen: int | None = None
        fenced = False                  # killed at the lease's end; started again on renewal
        looked = listed = 0.0
        while self.is_primary and not self._stopping:
            await asyncio.sleep(LEASE_WATCH_S)
            now = time.monotonic()
            if now - looked >= OPTIONS_LOOK_S:
                looked, list_anyway = now, now - listed >= OPTIONS_LIST_S
                listed = now if list_anyway else listed
                self.options_refusal(list_anyway=list_anyway)   # refused: the gate shuts
            is_open = self.gate.refusal() is None
            if is_open:
                lease_end = now + self.gate.lease_left()
            left = lease_end - now
            pid = self.service.pid if self.service.running else None
            if left <= 0:
                if pid is not None:
                    self.service.fence(f"the lease of epoch {self.role.epoch} ended")
                    fenced = True
                frozen = None
                continue
            if not is_open:
                if frozen is not None:
                    _signal_group(frozen, signal.SIGCONT)   # to take its stop signal
                    frozen = None
                if pid is not None and (stopping is None or stopping.done()):
                    why = self.gate.refusal() or "the gate closed"
                    log.warning("%s: stopping the service (epoch %d, %.3f s of lease left): "
                                "%s", self.name, self.role.epoch, left, why)
                    stopping = asyncio.ensure_future(self.service.stop(why, timeout_s=left))
                continue
            if left < low:
                if pid is not None and frozen != pid:
                    _signal_group(pid, signal.SIGSTOP)
                    frozen = pid
                    log.warning("%s: lease of epoch %d ends in %.3f s with no renewal: "
                                "service frozen (SIGSTOP)", self.name, self.role.epoch, left)
                continue
            if frozen is not None:
                _signal_group(frozen, signal.SIGCONT)
                log.info("%s: lease renewed (%.3f s left): service resumed", self.name, left)
                frozen = None
            # Stopped (gate closed) or killed (lease over), then renewed: the lock is ours.
            if ((fenced or (stopping is not None and stopping.done()))
                    and not self.service.running):
                log.info("%s: lease renewed (%.3f s left): starting the service again",
                         self.name, left)
                stopping, fenced = None, False
                await self.service.want("primary", self.service_env("primary"))
                self._record_service_pid()

    async def quiesce(self) -> None:
        """A switchover closed the gate: return once the service has stopped and the feed
        has read its WAL to the end, so ``latest_seq`` is final."""
        if self.service is None:
            return
        while self.service.running:
            await asyncio.sleep(LEASE_WATCH_S)      # the lease watch is stopping it
        if self.feed is not None:
            while self.feed.poll():
                pass

    def options_refusal(self, *, list_anyway: bool = False) -> str | None:
        """Why the service's database options are refused, if they are: a new OPTIONS file is
        checked (``OptionsWatch``), and a refusal acted on (``_refuse_options``)."""
        watch = self.options_watch
        if watch is None or self.service is None:
            return None
        try:
            refusal = watch.look(list_anyway=list_anyway)
        except OSError as exc:
            log.warning("%s: cannot look for the service's OPTIONS file in %s: %s", self.name,
                        self.db_dir, exc)
            return None
        if refusal is not None and self.service.options_error is None:
            self._refuse_options(refusal)
        return refusal

    def _refuse_options(self, why: str) -> None:
        """The service opened its database with options hacluster cannot replicate: stop
        shipping its WAL, and give the primary role up as for a service that keeps exiting
        (the supervisor stops it and starts it as primary again only after its restart
        window; the gate closes and the lock is released)."""
        assert self.service is not None
        self.service.options_error = why
        self._reopen_due = True
        if self.feed is not None:
            # Every stream ends with this error, and /v1/wait answers 503 from now on.
            self.feed.fail(f"the service's database options are refused: {why}")
        self.service.give_up(f"the service's database options cannot be replicated: {why}")

    def _service_gave_up(self, reason: str) -> None:
        """A service that keeps exiting on the primary: hand the role over to a replica."""
        log.error("%s: %s: giving up the primary role", self.name, reason)
        if self.service is not None and self.service.options_error is not None:
            reason = "its database options cannot be replicated"    # logged once, in full
        if self.control is not None and self.is_primary:
            self.control.fencing_failed(self.role.epoch, f"service gave up: {reason}")
            self.gate.close(f"service gave up: {reason}")

    # -- what a managed primary serves -------------------------------------------------------

    def service_column_families(self) -> list[str]:
        """The service's column families in id order (RocksDB reads them from the MANIFEST
        without taking the database's lock)."""
        if not has_database(self.db_dir):
            return ["default"]
        return list(rocksdict.Rdict.list_cf(str(self.db_dir), rocksdict.Options(raw_mode=True)))

    def service_checkpoint(self, target: Path) -> int:
        """A checkpoint of the live service database (``managed.checkpoint``), checked to
        continue in the WAL the stream serves; its seq."""
        target.parent.mkdir(parents=True, exist_ok=True)
        seq = create_foreign_checkpoint(self.db_dir, target,
                                        scratch=self.data_dir / "managed-scratch")
        verify_continuation(self.db_dir, seq)
        return seq

    # -- what a managed primary reports and waits for ---------------------------------------

    def managed_latest_seq(self) -> int:
        """A managed primary's seq: what its WAL feed has read of the service's WAL."""
        return self.feed.next_seq - 1 if self.feed is not None else 0

    def sync_service_wal(self) -> None:
        sync_live_wal(self.db_dir)

    def service_syncer(self) -> NativeWalSync | None:
        """A managed primary's native syncer of the service's WAL, made on first use once the
        service has made its database directory: a round fsyncs the logs the feed read (the
        service wrote them before it began), new ones learnt from inotify. None without the C
        module or when it could not watch the directory: ``sync_service_wal`` then runs in the
        Python sync thread."""
        if (self._service_syncer is None and NATIVE and self.cfg.managed
                and self.feed is not None and not self._syncer_refused
                and self.db_dir.is_dir()):
            try:
                self._service_syncer = NativeWalSync(self.db_dir)
            except OSError as exc:
                self._syncer_refused = True
                log.warning("%s: the native WAL syncer cannot watch %s (%s); the service's "
                            "WAL is synced from a Python thread", self.name, self.db_dir, exc)
        return self._service_syncer

    def _close_service_syncer(self) -> None:
        self._syncer_refused = False
        syncer, self._service_syncer = self._service_syncer, None
        if syncer is not None:
            syncer.close()

    async def wait_held(self, seq: int, timeout: float) -> dict[str, Any]:
        """``GET /v1/wait``: return once ``seq`` is durable here and held per the mode (sync:
        by the synchronous set), with the gate still open; WaitTimeout, NotWritable or
        OutcomeUnknown otherwise. Recorded as acknowledged (the service answers its client
        next), so a release carries it as the floor no successor may be below."""
        refusal = self.gate.refusal() if self.is_primary else f"{self.name} is not the primary"
        # The seq is in a database whose options may be new: never held before they are seen.
        refusal = refusal or self.options_refusal()
        if refusal is not None or self.feed is None:
            raise NotWritable(refusal or "no WAL feed")
        try:
            async with asyncio.timeout(timeout):
                self.feed.notify()      # read the service's WAL now, not at the next poll
                while self.latest_seq() < seq:
                    if self.feed.error:
                        raise NotWritable(f"the WAL feed stopped: {self.feed.error}")
                    await self.feed.wait(0.05)
                    self.feed.notify()
                await self.wal_sync.through(seq)
                if self.sync_mode:
                    await self.confirm(seq)
                else:
                    await self._wait_async_replicas(seq)
        except TimeoutError:
            raise WaitTimeout(f"seq {seq} not held within {timeout:.3f} s (it may be later)"
                              ) from None
        late = self.gate.refusal() or self.options_refusal()
        if late is not None:
            raise OutcomeUnknown(f"seq {seq} reached the replicas but not acknowledged: {late}")
        self.acked_seq = max(self.acked_seq, seq)
        return {"seq": seq, "epoch": self.role.epoch, "node": self.name}

    async def _wait_async_replicas(self, seq: int) -> None:
        """Async mode: ``replication.sync_replicas`` replicas have applied ``seq`` (a failover
        may still promote another: async mode promises nothing more)."""
        need = self.cfg.replication.sync_replicas
        while sum(1 for r in self.positions.replicas.values() if r.applied_seq >= seq) < need:
            await self.positions.changed(0.05, None, seq)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (``/proc/<pid>/stat`` field 22): a pid and this
    name one process, not a later one that reused the pid."""
    try:
        stat = open(f"/proc/{pid}/stat").read()     # noqa: SIM115 - one short read
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _signal_group(pid: int, sig: int) -> None:
    """The service runs in its own process group (its pid is the group's id)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


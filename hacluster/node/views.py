"""What a node shows and reports about itself: one view, read by every consumer.

Owns ``NodeViews`` (mixed into ``Node``): the ``LocalState`` the control loop reads once per
pass (its ``NodePort``), the ``NodeView`` the health checks, metrics and KV answers judge
(``writable`` and lag computed once there), the ``/status`` document, who the leader is as
far as this node can tell, and the watchdog's tending (``tend_fencing``) and the gate's
closing as the loop asks. It must never compute "writable" or "lag" a second way: every
consumer reads the view.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from hacluster.api import probes
from hacluster.api.probes import NodeView
from hacluster.consensus.decide import Action
from hacluster.consensus.model import ReplicaView
from hacluster.consensus.ports import LocalState
from hacluster.lineage.tails import list_divergent_tails
from hacluster.node.archiving import backup_status
from hacluster.replication.bootstrap import BootstrapProgress, progress_of
from hacluster.role import VERSION
from hacluster.store import has_database
from hacluster.watchdog import WatchdogError

if TYPE_CHECKING:
    from pathlib import Path

    from hacluster.api.counters import WatchStats
    from hacluster.config import ClusterConfig, NodeConfig
    from hacluster.consensus.loop import ControlLoop
    from hacluster.fencing import WriteGate
    from hacluster.groupsync import GroupSync, NativeWalSync
    from hacluster.managed.supervisor import Supervisor
    from hacluster.replication.feed import WalFeed
    from hacluster.replication.follower import Follower
    from hacluster.replication.positions import ReplicaPositions
    from hacluster.role import Role
    from hacluster.space import SpaceGuard
    from hacluster.store import Store
    from hacluster.watchdog import Watchdog

log = logging.getLogger("hacluster.node")


def bootstrap_view(boot: BootstrapProgress | None, view: NodeView) -> dict[str, Any] | None:
    """The newest bootstrap of this node as /status shows it; None when it never bootstrapped
    since it started. Once installed, the phase says whether the replica has caught up since,
    as the /replica probe judges it (its max_lag)."""
    if boot is None:
        return None
    doc = boot.snapshot()
    if doc["phase"] == "installed":
        caught_up = probes.replica_refusal(view, view.max_lag) is None
        doc["phase"] = "caught_up" if caught_up else "catching_up"
    return doc


class NodeViews:
    if TYPE_CHECKING:
        cfg: ClusterConfig
        me: NodeConfig
        name: str
        role: Role
        data_dir: Path
        db_dir: Path
        gate: WriteGate
        space: SpaceGuard
        positions: ReplicaPositions
        wal_sync: GroupSync
        control: ControlLoop | None
        follower: Follower | None
        feed: WalFeed | None
        watchdog: Watchdog
        service: Supervisor | None
        disk_full: str | None
        acked_seq: int
        writes: int
        unknown_outcomes: int
        started_at: float
        watches: WatchStats
        http_connections: int
        _watchdog_tried: bool
        _watchdog_usable: bool

        @property
        def store(self) -> Store | None: ...
        @property
        def is_primary(self) -> bool: ...
        @property
        def column_families(self) -> list[str]: ...
        def latest_seq(self) -> int: ...
        def api_url_of(self, name: str) -> str | None: ...
        def write_refusal(self) -> str | None: ...
        def _native_wal_sync(self) -> NativeWalSync | None: ...
        @property
        def durable_acks(self) -> bool: ...

    # -- the control loop's port (consensus.ports.NodePort) ----------------------------------

    def local_state(self) -> LocalState:
        self.space.tend(self.disk_full)     # a replica's reserve goes too when its disk fills
        store = self.store
        return LocalState(
            seq=self.held_seq(),
            has_database=store is not None or has_database(self.db_dir),
            is_primary=self.is_primary,
            gate_open=self.is_primary and self.gate.refusal() is None,
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
        if self.service is not None and self.service.primary_given_up:
            # Until its restart window passes: electing it again would start the same loop.
            if self.service.options_error is not None:
                return "its service's database options cannot be replicated"
            return "its service kept exiting as primary"
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
            applied_seq=self.held_seq(),
            primary_seq=st.primary_seq if st else None,
            last_frame_age_s=now - st.last_frame_at if st and st.last_frame_at else None,
            loop_age_s=self._loop_age(now),
            lease_s=self.cfg.consensus.lease_s if self.control else float("inf"),
            stream_timeout_s=max(2.0, 4 * rep.heartbeat_interval),
            max_lag=rep.max_replica_lag, tags=self.me.tags)

    def held_seq(self) -> int | None:
        """The seq this node's database holds: its handle's, or a managed primary's (what it
        read of the service's WAL); None without a database."""
        store = self.store
        if store is not None:
            return store.latest_seq()
        return self.latest_seq() if self.feed is not None else None

    def wal_sync_status(self) -> dict[str, Any]:
        """The group commit (``storage.durability: fsync``): rounds so far, the seq every
        acknowledgement may rely on, and whether rounds run on the native syncer (False: in
        RocksDB's FlushWAL or, managed, the Python listing, from a Python thread)."""
        native = self._native_wal_sync()
        return {"rounds": self.wal_sync.syncs, "synced_seq": self.wal_sync.synced_seq,
                "native": native is not None and native.failed is None,
                "native_error": native.failed if native is not None else None}

    def status(self) -> dict[str, Any]:
        store = self.store
        seq = self.held_seq()
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
            "http": {"connections_accepted": self.http_connections,
                     "watches_open": self.watches.open, "watches_ended": dict(self.watches.ended)},
        }
        if self.is_primary:
            out["replicas"] = self.positions.snapshot(seq or 0)
            out["writes"] = self.writes
            out["wal_feed_error"] = self.feed.error if self.feed else None
            if self.durable_acks:
                out["wal_sync"] = self.wal_sync_status()
        if self.follower:
            st = self.follower.status
            out["replication"] = {
                "state": st.state, "error": st.error, "primary_seq": st.primary_seq,
                "lag": probes.lag(view),
                "connects": st.connects, "batches_applied": st.batches_applied,
                "runs_applied": st.runs_applied, "ops_applied": st.ops_applied,
                "bootstraps": st.bootstraps, "bootstrap_bytes": st.bootstrap_bytes,
                "bootstrap": bootstrap_view(progress_of(self.data_dir), view),
            }
        if self.control:
            out["consensus"] = self.control.status()
        if self.watchdog.enabled:
            out["watchdog"] = self.watchdog.snapshot()
        if self.service is not None:
            out["service"] = self.service.status()
        if (backup := backup_status(self)) is not None:
            out["backup"] = backup
        out["divergent_tails"] = list_divergent_tails(self.data_dir)
        return out

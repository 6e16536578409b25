"""The upkeep of a node's data directory: lineage, divergent tails, re-seeding, disk space.

Owns ``Upkeep`` (mixed into ``Node``): this node's lineage label of a seq and the check a
primary makes of a replica's position against its own history (rule 1), saving a divergent
tail and re-bootstrapping, ``reinit`` (drop the database and bootstrap again), the checkpoint
janitor of a primary, watching disk space in static mode, and reopening the store once there
is room (``recover_disk``). It must never drop data without saving it first (a divergent tail
goes to a file, an old database is set aside), nor reopen the store under a primary's parts.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hacluster.consensus.epochs import same_history
from hacluster.consensus.state import EpochRecord
from hacluster.lineage.labels import Lineage, find_divergence
from hacluster.lineage.tails import prune_divergence, save_divergent_tail, set_aside
from hacluster.node_errors import NotWritable
from hacluster.store import has_database, no_space

if TYPE_CHECKING:
    from pathlib import Path

    from hacluster.config import ClusterConfig
    from hacluster.consensus.loop import ControlLoop
    from hacluster.fencing import WriteGate
    from hacluster.managed.supervisor import Supervisor
    from hacluster.replication.checkpoints import CheckpointService
    from hacluster.replication.follower import Follower
    from hacluster.role import Role
    from hacluster.space import SpaceGuard
    from hacluster.store import Store

log = logging.getLogger("hacluster.node")


class Upkeep:
    if TYPE_CHECKING:
        cfg: ClusterConfig
        name: str
        role: Role
        data_dir: Path
        db_dir: Path
        gate: WriteGate
        space: SpaceGuard
        control: ControlLoop | None
        follower: Follower | None
        checkpoints: CheckpointService | None
        lineage: Lineage | None
        disk_full: str | None
        _role_lock: asyncio.Lock

        @property
        def store(self) -> Store | None: ...
        @store.setter
        def store(self, store: Store | None) -> None: ...
        @property
        def is_primary(self) -> bool: ...
        def latest_seq(self) -> int: ...
        def open_store(self) -> Store: ...
        def primary_url(self) -> str | None: ...
        async def _stop_follower(self) -> None: ...
        def _start_replica(self) -> None: ...
        async def start_replica_service(self) -> None: ...
        async def stop_replica_service(self, why: str) -> None: ...
        service: Supervisor | None

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
            if self.service is not None:
                # A read-only service holds the files open: it goes before they do.
                await self.service.stop("reinit")
            if self.store is not None:
                self.store.close()
                self.store = None
                gc.collect()   # rocksdict releases its handles on collection
            if self.db_dir.exists():
                shutil.rmtree(self.db_dir)
            log.info("%s: reinit: database removed; bootstrapping from %s (epoch %d)",
                     self.name, primary, self.role.epoch)
            self._start_replica()
            await self.start_replica_service()
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
        await self.stop_replica_service(f"the divergent tail of epoch {div.epoch} is set aside")
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

    async def recover_disk(self) -> bool:
        """After a space error: reopen the store once there is room again. True when done."""
        if not self.disk_full:
            return True
        if self.space.tend() is not None:
            return False
        async with self._role_lock:
            if self.is_primary:
                # Its feed, stream source and checkpoints hold the store: a primary steps
                # down first (effects.plan puts StepDown before RecoverDisk).
                log.warning("%s: not reopening the database while primary", self.name)
                return False
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

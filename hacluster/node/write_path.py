"""The node's write and read path: the write gate asked twice, durability, the synchronous set.

Owns ``WritePath`` (mixed into ``Node``): ``write`` (the gate checked before the local write),
``acknowledge`` (group-committed to disk, confirmed by the synchronous set, the gate checked
again — only then is the seq acknowledged), the linearizable primary read (``begin_read`` and
``finish_read``, rule 8), a replica's read-your-writes wait, and why a write would be refused
now. It must never acknowledge a write that is not durable and, in sync mode, confirmed, nor
one whose lease ran out meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from hacluster.node_errors import DiskFull, NotWritable, OutcomeUnknown
from hacluster.store import AppliedRange, NamedOp, no_space

if TYPE_CHECKING:
    from hacluster.config import ClusterConfig
    from hacluster.consensus.loop import ControlLoop
    from hacluster.fencing import WriteGate
    from hacluster.groupsync import GroupSync
    from hacluster.replication.feed import WalFeed
    from hacluster.replication.positions import ReplicaPositions
    from hacluster.role import Role
    from hacluster.space import SpaceGuard
    from hacluster.store import Store

log = logging.getLogger("hacluster.node")

# How long a look at the free space that found room stands for the writes after it.
SPACE_RECHECK_S = 0.01


class WritePath:
    _space_seen_ok: float = float("-inf")   # monotonic time of the last look that found room
    acks_pending = 0            # writes waiting in acknowledge now

    if TYPE_CHECKING:
        cfg: ClusterConfig
        name: str
        role: Role
        gate: WriteGate
        space: SpaceGuard
        positions: ReplicaPositions
        control: ControlLoop | None
        wal_sync: GroupSync
        feed: WalFeed | None
        disk_full: str | None
        acked_seq: int
        writes: int
        _stopping: bool

        @property
        def store(self) -> Store | None: ...
        @property
        def is_primary(self) -> bool: ...
        @property
        def durable_acks(self) -> bool: ...
        def latest_seq(self) -> int: ...

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
        self.positions.written.note(applied.last_seq)    # lag in seconds (metrics)
        if self.feed:
            self.feed.notify(others_waiting=self.acks_pending > 0)
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
        self.acks_pending += 1
        try:
            if self.durable_acks:
                try:
                    await self.wal_sync.through(seq)
                except Exception as exc:
                    raise OutcomeUnknown(f"written locally at seq {seq} but the WAL sync "
                                         f"failed: {exc}") from None
            await self.confirm(seq)
        finally:
            self.acks_pending -= 1
        late = self.gate.refusal()
        if late:
            raise OutcomeUnknown(f"written at seq {seq} but not acknowledged: {late}; it may "
                                 "be lost on failover")
        self.acked_seq = max(self.acked_seq, seq)

    def check_space(self) -> None:
        """Refuse a write (DiskFull) after a RocksDB space error or while low on space.

        The file system is asked (statvfs, the reserve file) at most every SPACE_RECHECK_S
        while it last had room: under load that is one look per few dozen writes, not one
        per write. After a space error, or while low, every write looks again.
        """
        now = time.monotonic()
        if (now - self._space_seen_ok < SPACE_RECHECK_S and self.disk_full is None
                and self.space.low is None):
            return
        why = self.space.tend(self.disk_full)
        if why:
            raise DiskFull(why)
        self._space_seen_ok = now

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
            complete = len(state.sync_set) >= need
            if complete and all(self.positions.applied(m) >= seq for m in members):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise OutcomeUnknown(
                    f"written locally at seq {seq} but not confirmed by the synchronous set "
                    f"{sorted(members) or '(none recorded yet)'} within "
                    f"{self.cfg.replication.sync_timeout_s} s")
            # Woken when a member reaches seq (not by other replicas' acks); at most 50 ms
            # later in any case, to look at the lock and the synchronous set again.
            await self.positions.changed(min(left, 0.05), members if complete else None, seq)

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

    def acknowledged_through(self) -> int:
        """The highest seq up to which every write counts as acknowledged per the mode:
        durable here (``storage.durability: fsync``) and, in sync mode, held by every member
        of the synchronous set while this node holds the lock; or acknowledged to a client
        already. What a watch may deliver: nothing above it can be taken back by a failover
        (in sync mode)."""
        latest = self.latest_seq()
        top = min(latest, self.wal_sync.synced_seq) if self.durable_acks else latest
        if self.sync_mode:
            assert self.control is not None
            state = self.control.state()
            lock = state.lock
            members = self.control.confirmers(state)
            if (lock.held and lock.holder == self.name and lock.epoch == self.role.epoch
                    and len(state.sync_set) >= self.cfg.replication.sync_replicas):
                top = min([top, *(self.positions.applied(m) for m in members)])
            else:
                top = 0
        return max(top, min(self.acked_seq, latest))

    async def make_durable(self, seq: int) -> None:
        """Sync the WAL through ``seq`` when acknowledgements need it (one group commit)."""
        if self.durable_acks:
            await self.wal_sync.through(seq)

    def write_refusal(self) -> str | None:
        """Why this node would refuse a write now (as primary), or None."""
        return self.gate.refusal() or self.disk_full or self.space.low

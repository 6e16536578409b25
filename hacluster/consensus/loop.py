"""The control loop: every renew interval, snapshot, decide, act — and say why in one sentence.

Owns the node's RaftNode, its periodic Report of its own replication position, the local
observations ``decide`` needs (when each member's report last changed here), the peers' clock
rates measured from their reports (``clock``: reported only, never decided on), and carrying out
the decision: renew the lease, propose an Acquire, follow a primary, or demote. Acting means
calling the node's role transitions; results of Raft proposals arrive on the Raft thread and are
handed to the event loop. It must never open the write gate on anything but a committed Acquire
or Renew that took effect, and never let a failing step stop the loop (a node that stops
deciding must at least stop writing: the lease does that by itself).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from hacluster.consensus import settings
from hacluster.consensus.clock import BEYOND, OK, ClockPolicy, ClockWatch, describe
from hacluster.consensus.decide import decide
from hacluster.consensus.eligibility import failover_refusal, successors
from hacluster.consensus.model import (
    CloseGate,
    Decision,
    Effect,
    Follow,
    HandOver,
    Observation,
    ProposeAcquire,
    ProposeRelease,
    ProposeRenew,
    ProposeSyncSet,
    RecoverDisk,
    ReplicaView,
    StepDown,
)
from hacluster.consensus.raft import RaftNode
from hacluster.consensus.reports import ReportTracker
from hacluster.consensus.state import (
    Acquire,
    ClusterState,
    Command,
    Forget,
    Release,
    Renew,
    Report,
    SetFailover,
    SetPaused,
    SetSyncSet,
)
from hacluster.store import has_database
from hacluster.watchdog import WatchdogError

if TYPE_CHECKING:
    from hacluster.node import Node

log = logging.getLogger(__name__)


class SwitchoverError(Exception):
    """A switchover could not be done safely; the primary stays primary."""


class NotCommitted(SwitchoverError):
    """Raft did not commit the change in time: it may still take effect; retry to find out."""


class ControlLoop:
    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.cfg
        c = cfg.consensus
        assert node.me.raft is not None
        self.policy = settings.policy(cfg)
        self.timing = self.policy.timing
        self.quorum_window = max(3 * c.report_interval_s, 3 * c.renew_interval_s)
        partners = [str(n.raft) for n in cfg.nodes if n.name != node.name]
        self.raft = RaftNode(str(node.me.raft), partners, node.data_dir / "raft",
                             cfg.raft_password, settings.raft_timing(cfg))
        self.last: Decision | None = None
        self.passes = 0
        self.reports = ReportTracker()     # when each member's report last changed here
        # Each peer's clock rate against ours, from the clocks in their reports: reported in
        # /status and metrics only, never used to decide (see hacluster.consensus.clock).
        self.clocks = ClockWatch(node.name, ClockPolicy(bound=c.drift))
        self._last_report = 0.0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acquiring: float | None = None   # when an Acquire was proposed, until decided
        # The epoch this process proposed to acquire (kept once it took effect): any other
        # epoch of the lock in my name belongs to an earlier run of this node (rule 3).
        self._claimed_epoch: int | None = None
        self._claimed_start = 0            # its start_seq
        self._claim_confirmed = False      # its Acquire's callback said it took effect
        self.switching = False                  # a switchover holds the write gate shut
        # Rule 6: names of every synchronous set proposed whose outcome is not known yet.
        # Until it is, a write needs them as well as the committed set.
        self._sync_pending: frozenset[str] = frozenset()
        self._sync_unknown = False
        self._sync_proposed_at = 0.0
        self._watchdog_tried = False
        self._watchdog_usable = True
        self._disk_handover: int | None = None
        self._fencing_failed: tuple[int, str] | None = None   # (epoch, why)
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_pass_at: float | None = None   # liveness: when the last pass finished
        self.epoch_changes: dict[str, int] = {}  # by reason, seen since this process started
        self._seen_epoch: int | None = None
        self._started_at = time.monotonic()

    def start(self) -> None:
        self._started_at = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self.raft.start()
        self._task = self._loop.create_task(self._run(), name="control-loop")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await asyncio.to_thread(self.raft.stop)

    async def _run(self) -> None:
        interval = self.node.cfg.consensus.renew_interval_s
        # Decide nothing (and report nothing) on a half-replayed log: a stale snapshot could
        # hide our own earlier report or the lock.
        while not self.raft.ready.is_set():
            await asyncio.sleep(0.02)
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("%s: control loop pass failed", self.node.name)
            await asyncio.sleep(interval)

    def _on_raft(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop (Raft callbacks arrive on the Raft thread)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(fn(*args)))

    def _observe(self, state: ClusterState, now: float) -> Observation:
        # Read after the snapshot was taken, so a clock sample is never timed before the
        # report it pairs with was applied (the estimator assumes delays are never negative).
        # Only a fallback: the Raft thread's own apply time is used when it has it.
        seen = time.monotonic()
        for m in self.reports.note(state, now):
            # Only a report that changed while this process ran: the first sighting may be
            # replayed from the log, proposed long ago, and its delay would say nothing about
            # clock rates. (getattr: a Member unpickled from an older dump lacks the field.)
            clock = float(getattr(m, "clock", 0.0))
            if clock > 0:
                applied = self.raft.report_seen_at(m.name, clock)
                self._clock_sample(m.name, seen if applied is None else applied, clock)
        for gone in set(self.clocks.estimates) - {m.name for m in state.members}:
            self.clocks.forget(gone)
        store = self.node.current_store()
        holder = state.lock.held and state.lock.holder == self.node.name
        seq = store.latest_seq() if store else self._seq_on_disk()
        return Observation(
            me=self.node.name, now=now,
            has_quorum=self.raft.has_quorum(now, self.quorum_window),
            lock_seen_at=self.raft.lock_seen_at(),
            renewal_proposed_at=self.node.gate.renewal_proposed_at if holder else None,
            my_applied_seq=seq,
            member_seen_at=dict(self.reports.seen),
            member_reported_at=dict(self.reports.fresh),
            my_last_epoch=self.node.lineage_label(seq),
            acquired_epoch=self._acquired_epoch(seq),
            uptime_s=now - self._started_at,
            is_primary=self.node.is_primary,
            disk_full=self.node.disk_full or None,
            space_low=self.node.space.low or None,
            switching=self.switching,
            unfit=self._unfit(),
            fencing_failed=(self._fencing_failed[1] if self._fencing_failed is not None
                            and self._fencing_failed[0] == state.lock.epoch else None),
            handover_epoch=self._disk_handover,
            acquiring_since=self._acquiring,
            sync_pending=self._sync_pending, sync_unknown=self._sync_unknown,
            sync_proposed_at=self._sync_proposed_at,
            replicas=tuple(ReplicaView(r.name, r.connected, r.applied_seq, r.advanced_at)
                           for r in self.node.positions.replicas.values()))

    def _unfit(self) -> str | None:
        """Why this node may not become primary, beside its disk: replication stopped for good
        (diverged), or a required watchdog that cannot be armed."""
        node = self.node
        if node.follower is not None and node.follower.status.state == "diverged":
            return "replication diverged"
        usable = node.watchdog.usable()
        if usable != self._watchdog_usable:
            self._watchdog_usable = usable
            if not usable:
                log.warning("%s: watchdog required but %s is not writable: not a candidate "
                            "for primary", node.name, node.cfg.watchdog.device)
        return None if usable else f"watchdog required but {node.cfg.watchdog.device} is " \
            "not writable"

    def _acquired_epoch(self, seq: int) -> int | None:
        """The epoch this process may serve as its own (rule 3).

        An Acquire whose outcome was unknown (a Raft leader change while it was in flight) may
        still commit: the epoch is ours only if this node still holds exactly the data it
        proposed to start after; otherwise it is treated as a restarted holder's.
        """
        if self._claimed_epoch is None:
            return None
        if self._claim_confirmed or seq == self._claimed_start - 1:
            return self._claimed_epoch
        return None

    def _clock_sample(self, peer: str, seen: float, peer_clock: float) -> None:
        est = self.clocks.observe(peer, seen, peer_clock)
        if est is not None:
            level = (logging.ERROR if est.verdict == BEYOND else
                     logging.INFO if est.verdict == OK or est.rate is None else logging.WARNING)
            log.log(level, "%s: %s", self.node.name,
                    describe(peer, self.node.name, est, self.clocks.policy.bound))

    def _won_earlier(self, epoch: int, start_seq: int) -> bool:
        """Did an earlier proposal of this process take ``epoch``? (Its answer was lost: a Raft
        leader change, as a switchover's leadership transfer causes, and the retry then
        failed the compare-and-set.) Only if the epoch starts exactly where this process
        proposed it: an earlier run's Acquire that did commit would have let that run write,
        and it is then never resumed."""
        state = self.raft.snapshot()
        record = next((r for r in state.history if r.epoch == epoch), None)
        return (state.lock.holder == self.node.name and state.lock.epoch == epoch
                and record is not None and record.start_seq == start_seq)

    def _seq_on_disk(self) -> int:
        """Before the store is open (a fresh start), the last reported seq is our best guess."""
        mine = self.raft.snapshot().member(self.node.name)
        return mine.applied_seq if mine else 0

    async def run_once(self) -> Decision:
        now = time.monotonic()
        node = self.node
        if now - self._last_report >= node.cfg.consensus.report_interval_s:
            self._last_report = now
            store = node.current_store()
            has_db = store is not None or has_database(node.db_dir)
            # Unhealthy: replication stopped for good (diverged), or a required watchdog
            # cannot be armed; either way it must not be promoted.
            healthy = self._unfit() is None and not node.disk_full and node.space.low is None
            seq = store.latest_seq() if store else 0
            self.raft.propose(Report(
                node.name, node.me.api.url, seq,
                "primary" if node.is_primary else ("replica" if has_db else "starting"),
                healthy, node.me.tags, node.lineage_label(seq), clock=time.monotonic()))
        node.space.tend(node.disk_full)     # a replica's reserve goes too when its disk fills
        state = self.raft.snapshot()
        obs = self._observe(state, now)
        decision = decide(state, obs, self.policy)
        self._record(decision)
        await self._act(decision, state, obs)
        self._tend_watchdog(state)
        self._count_epoch(state)
        self.last_pass_at = time.monotonic()
        return decision

    def _count_epoch(self, state: ClusterState) -> None:
        epoch = state.lock.epoch
        if self._seen_epoch is not None and epoch > self._seen_epoch and state.history:
            reason = state.history[-1].reason
            self.epoch_changes[reason] = self.epoch_changes.get(reason, 0) + 1
        self._seen_epoch = epoch

    def _tend_watchdog(self, state: ClusterState) -> None:
        """Fed on every pass while writable; disarmed in pause mode and when not writable."""
        wd, node = self.node.watchdog, self.node
        if not wd.enabled:
            return
        if not (node.is_primary and node.gate.refusal() is None):
            wd.disarm("the write gate is closed")
            self._watchdog_tried = False
            return
        if state.paused:
            wd.disarm("maintenance mode")
            self._watchdog_tried = False
            return
        if not wd.armed and not self._watchdog_tried:
            self._watchdog_tried = True     # automatic mode: one attempt per writable spell
            try:
                wd.arm()
            except WatchdogError as exc:
                # Shut now; the next pass gives the lock up (decide: fencing_failed).
                node.gate.close(str(exc))
                self._fencing_failed = (state.lock.epoch, str(exc))
                log.error("%s (epoch %d)", exc, state.lock.epoch)
                return
        wd.feed()

    def _loop_task(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hand_over_for_disk(self) -> None:
        try:
            successor = await self.switchover(None)
            log.info("%s: handed over to %s for lack of disk space", self.node.name, successor)
        except SwitchoverError as exc:
            log.error("%s: handover for lack of disk space failed: %s", self.node.name, exc)
        finally:
            self.switching = False

    def member_seen_at(self) -> dict[str, float]:
        """When each member's report last changed, on this node's monotonic clock."""
        return dict(self.reports.seen)

    def release(self, epoch: int) -> None:
        """Give the lock up (no successor named): others elect without waiting out a lease.

        The gate is shut by now, so what this node acknowledged is final: the release records
        it as the floor no successor may be below (rule 2).
        """
        self.raft.propose(Release(self.node.name, epoch, None, self.node.acked_seq))

    def _record(self, d: Decision) -> None:
        self.passes += 1
        prev = self.last
        self.last = d
        if prev is None or (prev.action, prev.target, prev.epoch) != (d.action, d.target,
                                                                       d.epoch):
            log.info("%s", d.sentence)
        else:
            log.debug("%s", d.sentence)

    async def _act(self, d: Decision, state: ClusterState, obs: Observation) -> None:
        """Carry out ``d.effects`` in order; a RecoverDisk that fails ends the pass."""
        for effect in d.effects:
            if not await self._do(effect, state):
                return

    async def _do(self, effect: Effect, state: ClusterState) -> bool:
        node = self.node
        match effect:
            case CloseGate(reason):
                node.gate.close(reason)
            case StepDown(target, epoch):
                await node.become_replica(target, epoch)
            case RecoverDisk():
                return await node.recover_disk()
            case HandOver(epoch, reason):
                self._disk_handover = epoch
                self.switching = True     # now, not when the task starts: no Release meanwhile
                log.error("%s: %s; handing the primary role over", node.name, reason)
                self._loop_task(self._hand_over_for_disk())
            case ProposeRelease(epoch):
                self.release(epoch)
            case ProposeRenew(epoch):
                self._renew(epoch)
            case ProposeSyncSet(epoch, members):
                self._propose_sync_set(epoch, members)
            case Follow(target, epoch):
                await node.become_replica(target, epoch)
            case ProposeAcquire():
                await self._acquire(effect, state)
        return True

    def _renew(self, epoch: int) -> None:
        node = self.node

        def renewed(ok: bool | None, proposed_at: float) -> None:
            if ok and self._claimed_epoch == epoch and \
                    node.latest_seq() == self._claimed_start - 1:
                # Renewed as ours while we held exactly the data it starts after: ours from
                # now on, whatever this node writes in it.
                self._claim_confirmed = True
            # During a switchover the lease is kept but the gate stays shut.
            if ok and not self.switching:
                self._on_raft(node.become_primary, epoch, proposed_at)

        store = node.store
        self.raft.propose(Renew(node.name, epoch, store.latest_seq() if store else 0,
                                node.acked_seq), renewed)

    async def _acquire(self, effect: ProposeAcquire, state: ClusterState) -> None:
        node, lock, epoch = self.node, state.lock, effect.epoch
        self._acquiring = time.monotonic()
        # Stop applying first: the epoch must start after the last batch this node holds, or
        # nodes holding the same old-epoch batches would look divergent.
        start_seq = await node.stop_following() + 1
        cmd = Acquire(node.name, lock.epoch, lock.renewals, start_seq, self.timing.lease_s,
                      effect.reason, time.time(), node.lineage_label(start_seq - 1),
                      effect.lag_allowance, effect.force)
        self._claimed_epoch, self._claimed_start = epoch, start_seq
        self._claim_confirmed = False

        def acquired(ok: bool | None, proposed_at: float) -> None:
            self._acquiring = None
            if ok:
                if self._claimed_epoch == epoch:
                    self._claim_confirmed = True
                log.info("%s: promoted, epoch %d, from seq %d", node.name, epoch, start_seq)
                self._on_raft(node.become_primary, epoch, proposed_at)
            elif ok is False and self._claimed_epoch == epoch and \
                    not self._won_earlier(epoch, start_seq):
                # Committed without effect: if the lock shows up in my name at this epoch
                # anyway, an earlier run of this node took it, and it is never resumed. (Won
                # earlier: ours, served once a renewal of it commits while this node still
                # holds exactly the data the epoch starts after.)
                self._claimed_epoch = None

        self.raft.propose(cmd, acquired)

    async def switchover(self, target: str | None, timeout: float = 5.0) -> str:
        """Hand the primary role over with no acknowledged write lost; returns the successor.

        Stops acknowledging writes, waits until the successor has applied everything this
        primary wrote, then releases the lock naming it. Raises SwitchoverError (and reopens
        the gate) if no successor qualifies or it does not catch up within ``timeout``.
        """
        node = self.node
        state = self.raft.snapshot()
        lock = state.lock
        if not (node.is_primary and lock.held and lock.holder == node.name):
            raise SwitchoverError(f"{node.name} is not the primary")
        if target is not None and state.member(target) is None:
            raise SwitchoverError(f"{target!r} is not a member of this cluster")
        deadline = time.monotonic() + timeout
        while not (choices := self._successors(target)):
            # Just after an election, reports may not have been seen yet: give them a moment.
            if time.monotonic() > deadline:
                raise SwitchoverError(f"no healthy replica "
                                      f"{'named ' + target + ' ' if target else ''}"
                                      "qualifies as successor")
            await asyncio.sleep(0.05)
        successor = choices[0]
        self.switching = True
        node.gate.close(f"switchover to {successor}")
        store = node.store
        assert store is not None
        last = store.latest_seq()
        deadline = time.monotonic() + timeout
        while True:
            # Wait for the successor's own report in Raft: that is what every node's election
            # reads, so it must already show the successor holding every acknowledged write.
            report = self.raft.snapshot().member(successor)
            if report is not None and report.role == "replica" and report.applied_seq >= last:
                break
            if time.monotonic() > deadline:
                self.switching = False     # the next effective renewal reopens the gate
                raise SwitchoverError(f"{successor} did not reach seq {last} within "
                                      f"{timeout} s; still primary")
            await asyncio.sleep(0.01)
        # What this primary acknowledged is final now (the gate is shut): the floor (rule 2).
        ok = await self._propose_and_wait(
            Release(node.name, lock.epoch, successor, node.acked_seq), timeout)
        if not ok:
            self.switching = False
            raise SwitchoverError("the release could not be committed; still primary")
        log.info("%s: switchover: handed over to %s at seq %d (epoch %d)", node.name,
                 successor, last, lock.epoch)
        # The Raft leadership follows, so restarting this node next (a rolling upgrade) costs
        # no Raft election under the new primary's lease.
        raft_address = next((n.raft for n in node.cfg.nodes if n.name == successor), None)
        if raft_address is not None:
            self.raft.transfer_leadership(str(raft_address))
        await node.become_replica(None, lock.epoch)
        self.switching = False
        return successor

    def confirmers(self, state: ClusterState) -> frozenset[str]:
        """Whose confirmation a write needs: the committed synchronous set and, while a change
        of it may still commit, every set proposed since (rule 6)."""
        return state.sync_set | self._sync_pending

    def _propose_sync_set(self, epoch: int, new: frozenset[str]) -> None:
        """Propose ``new`` as the synchronous set (chosen by ``effects.sync_set_change``);
        until its outcome is known, writes need its members too (rule 6)."""
        node = self.node
        self._sync_pending = self._sync_pending | new
        self._sync_unknown = False
        self._sync_proposed_at = time.monotonic()
        latest = node.latest_seq()

        def done(ok: bool | None, proposed_at: float) -> None:
            if ok is None:
                # Not committed, yet it still may be: keep requiring its members. A later
                # proposal whose outcome is known ends the doubt (the log is ordered: once a
                # later entry of ours commits, this one has committed or never will).
                log.warning("%s: synchronous set change to %s: outcome unknown; writes need "
                            "both sets until a later change settles it", node.name,
                            sorted(new))
                self._sync_unknown = True
                return
            self._sync_pending = frozenset()
            self._sync_unknown = False
            if ok:
                log.info("%s: synchronous set is now %s (epoch %d, at seq %d)", node.name,
                         sorted(new), epoch, latest)

        self.raft.propose(SetSyncSet(node.name, epoch, new), done)

    def _successors(self, target: str | None) -> list[str]:
        """Who may take over in a switchover, best first (``eligibility.successors``)."""
        return successors(self.raft.snapshot(), self.node.name, self.policy,
                          self.reports.seen, time.monotonic(), target)

    async def _raft_result(self, start: Any, timeout: float) -> bool | None:
        """Call ``start(settle)``; wait for the Raft thread to call ``settle(ok)``.

        None when nothing came within ``timeout``.
        """
        assert self._loop is not None
        loop = self._loop
        result: asyncio.Future[bool | None] = loop.create_future()

        def settle(ok: bool | None) -> None:
            if not result.done():
                result.set_result(ok)

        start(lambda ok: loop.call_soon_threadsafe(settle, ok))
        try:
            return await asyncio.wait_for(result, timeout)
        except TimeoutError:
            return None

    async def _propose_and_wait(self, cmd: Command, timeout: float) -> bool | None:
        return await self._raft_result(
            lambda settle: self.raft.propose(cmd, lambda ok, proposed_at: settle(ok)), timeout)

    async def request_failover(self, candidate: str, force: bool,
                               timeout: float = 5.0) -> int:
        """Record an operator's failover to ``candidate``; returns the epoch it applies to.

        Raises SwitchoverError when a primary is serving (use a switchover), when the
        candidate would lose acknowledged writes and ``force`` is not given, or when Raft does
        not commit the request.
        """
        state = self.raft.snapshot()
        leader = self.node.leader()
        if leader is not None:
            raise SwitchoverError(f"{leader} is a healthy primary (epoch {state.lock.epoch}); "
                                  "use a switchover")
        if candidate not in {n.name for n in self.node.cfg.nodes} | {
                m.name for m in state.members}:
            raise SwitchoverError(f"{candidate!r} is not a node of this cluster")
        refusal = failover_refusal(state, candidate, force, self.policy,
                                   self.member_seen_at(), time.monotonic())
        if refusal is not None:
            forceable = not force and failover_refusal(
                state, candidate, True, self.policy, self.member_seen_at(),
                time.monotonic()) is None
            raise SwitchoverError(refusal + ("; --force to promote it anyway" if forceable
                                             else ""))
        ok = await self._propose_and_wait(SetFailover(candidate, state.lock.epoch, force),
                                          timeout)
        if not ok:
            raise SwitchoverError("the failover request was not committed (no quorum, or the "
                                  "epoch changed meanwhile)")
        log.warning("%s: manual failover to %s requested%s (epoch %d)", self.node.name,
                    candidate, " with --force" if force else "", state.lock.epoch)
        return state.lock.epoch

    async def _membership(self, action: str, address: str, timeout: float) -> bool:
        return bool(await self._raft_result(
            lambda settle: self.raft.change_membership(action, address, settle), timeout))

    async def add_member(self, name: str, raft_address: str, timeout: float = 10.0) -> None:
        """Make ``raft_address`` a Raft member, before the new node ``name`` starts."""
        state = self.raft.snapshot()
        if state.member(name) is not None:
            raise SwitchoverError(f"{name} is already a member")
        if raft_address in self.raft.raft_members():
            raise SwitchoverError(f"{raft_address} is already a Raft member")
        if not await self._membership("add", raft_address, timeout):
            raise NotCommitted(f"adding {name} ({raft_address}) was not committed in time")
        log.warning("%s: member added: %s (raft %s); start it now", self.node.name, name,
                    raft_address)

    async def remove_member(self, name: str, raft_address: str,
                            timeout: float = 10.0) -> None:
        """Take ``name`` out of the Raft membership and forget its reports. Never the primary."""
        state = self.raft.snapshot()
        if state.lock.held and state.lock.holder == name:
            raise SwitchoverError(f"{name} is the primary; switch over first")
        if raft_address == str(self.raft.selfNode):
            raise SwitchoverError(f"ask another node to remove {name}: a node cannot remove "
                                  "itself")
        if raft_address not in self.raft.raft_members():
            raise SwitchoverError(f"{raft_address} is not a Raft member")
        if not await self._membership("remove", raft_address, timeout):
            raise NotCommitted(f"removing {name} ({raft_address}) was not committed in time")
        if state.member(name) is not None and not await self._propose_and_wait(Forget(name),
                                                                                timeout):
            log.warning("%s: %s left Raft but its member record was not dropped",
                        self.node.name, name)
        log.warning("%s: member removed: %s (raft %s)", self.node.name, name, raft_address)

    async def set_paused(self, paused: bool, timeout: float = 5.0) -> bool | None:
        """Record the maintenance flag in Raft; None if it could not be committed in time."""
        return await self._propose_and_wait(SetPaused(paused), timeout)

    def status(self) -> dict[str, Any]:
        state = self.raft.snapshot()
        lock = state.lock
        return {
            "decision": self.last.sentence if self.last else None,
            "lock": {"holder": lock.holder, "epoch": lock.epoch, "released": lock.released,
                     "renewals": lock.renewals},
            "lease_left_s": round(self.node.gate.lease_left(), 3) if self.node.is_primary
            else None,
            "paused": state.paused,
            "failover_request": None if state.failover_request is None else {
                "to": state.failover_request.candidate, "force": state.failover_request.force,
                "epoch": state.failover_request.epoch},
            "sync_set": sorted(state.sync_set),
            "members": [{"name": m.name, "applied_seq": m.applied_seq, "role": m.role,
                         "healthy": m.healthy, "tags": sorted(m.tags)} for m in state.members],
            "history": [{"epoch": r.epoch, "primary": r.primary, "start_seq": r.start_seq,
                         "reason": r.reason, "time": r.wall_time} for r in state.history[-10:]],
            "raft": self.raft.raft_status(),
            "clock": self.clocks.status(),
        }

"""The control loop: every renew interval, snapshot, decide, act — and say why in one sentence.

Owns the node's RaftNode (the consensus port), its periodic Report of its own replication
position, the local observations ``decide`` needs (when each member's report last changed here,
the node's ``LocalState`` through the ``NodePort``), the peers' clock rates measured from their
reports (``clock``: reported only, never decided on), and carrying out the ordered effects of
each decision — a small interpreter (``_do``); operators' requests are ``operator``'s. Acting
means calling the node's role transitions through the port; results of Raft proposals arrive on
the Raft thread and are handed to the event loop. It must never open the write gate on anything
but a committed Acquire or Renew that took effect, and never let a failing step stop the loop (a
node that stops deciding must at least stop writing: the lease does that by itself).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from hacluster.aiotasks import cancel_and_wait
from hacluster.config import ClusterConfig
from hacluster.consensus import settings
from hacluster.consensus.clock import BEYOND, OK, ClockPolicy, ClockWatch, describe
from hacluster.consensus.decide import decide
from hacluster.consensus.errors import NotCommitted, RequestRefused
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
    StepDown,
)
from hacluster.consensus.operator import OperatorRequests
from hacluster.consensus.pacing import (
    SYNC_WATCH_EVERY_S,
    lock_hands,
    next_pass_in,
    standbys_waiting,
    watch_for_standbys,
)
from hacluster.consensus.ports import LocalState, NodePort
from hacluster.consensus.raft import RaftNode
from hacluster.consensus.reports import ReportTracker
from hacluster.consensus.state import (
    Acquire,
    ClusterState,
    Release,
    Renew,
    Report,
    member_role,
)
from hacluster.consensus.sync_set import SyncSetProposals

__all__ = ["ControlLoop", "NotCommitted", "RequestRefused"]

log = logging.getLogger(__name__)


class ControlLoop(OperatorRequests, SyncSetProposals):
    def __init__(self, node: NodePort, cfg: ClusterConfig) -> None:
        self.node = node
        self.cfg = cfg                 # the file's, then with the dynamic configuration
        self.file_cfg = cfg
        self.settings_version = 0
        self.settings_error: str | None = None
        c = cfg.consensus
        self.me = next(n for n in cfg.nodes if n.name == node.name)
        assert self.me.raft is not None
        self.policy = settings.policy(cfg)
        self.timing = self.policy.timing
        self.quorum_window = settings.quorum_window(cfg)
        partners = [str(n.raft) for n in cfg.nodes if n.name != node.name]
        self.raft = RaftNode(str(self.me.raft), partners, self.me.data_dir / "raft",
                             cfg.raft_password, settings.raft_timing(cfg),
                             on_change=self._raft_applied,
                             also_accepted=cfg.raft_password_also_accepted)
        # Set (from the Raft thread) when the lock changes hands: the next pass runs at once,
        # so a replica follows a new primary without waiting out the renew interval.
        self._wake = asyncio.Event()
        self._wake_key: tuple[Any, ...] | None = None
        self._hands_changed_at: float | None = None
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
        self._sync_pending: frozenset[str] = frozenset()   # rule 6 (sync_set)
        self._sync_unknown = False
        self._sync_proposed_at = 0.0
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
        await cancel_and_wait([self._task])
        await asyncio.to_thread(self.raft.stop)

    async def _run(self) -> None:
        # Decide nothing (and report nothing) on a half-replayed log: a stale snapshot could
        # hide our own earlier report or the lock.
        while not self.raft.ready.is_set():
            await asyncio.sleep(0.02)
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("%s: control loop pass failed", self.node.name)
            state = self.raft.snapshot()
            now = time.monotonic()
            delay = next_pass_in(self.cfg.consensus.renew_interval_s, state.lock,
                                 self.node.name, self.raft.lock_seen_at(), now, self.timing)
            if watch_for_standbys(state, self.node.name, self.policy.sync_mode,
                                  self.policy.sync_replicas, self._hands_changed_at, now):
                await self._watch_standbys(state, now + delay)
            else:
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()

    async def _watch_standbys(self, state: ClusterState, until: float) -> None:
        """Sleep until ``until``, a wake, or a replica that could join this new primary's
        synchronous set (the next pass proposes it: in sync mode writes wait for it)."""
        def ready() -> frozenset[str]:
            me = self.node.local_state()
            return standbys_waiting(state, me.replicas, me.seq)

        known = ready()                 # the pass just now saw these (and proposed them)
        while time.monotonic() < until and not self._wake.is_set():
            if ready() - known:
                return
            try:
                async with asyncio.timeout(min(SYNC_WATCH_EVERY_S, until - time.monotonic())):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _raft_applied(self, state: ClusterState) -> None:
        """On the Raft thread, after each command is applied: wake the loop when the lock
        changed hands (not on a mere renewal, which comes every pass)."""
        key = lock_hands(state)
        first, changed, self._wake_key = self._wake_key is None, key != self._wake_key, key
        if changed and not first:       # the first state seen (replayed at start) is no change
            self._hands_changed_at = time.monotonic()
        # A new dynamic configuration is taken on at once too (the next pass applies it).
        if ((changed and not first) or state.settings_version != self.settings_version) and \
                self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _on_raft(self, fn: Any, *args: Any) -> None:
        """Run the coroutine ``fn(*args)`` on the event loop (Raft callbacks arrive on the Raft
        thread)."""
        self._on_loop(lambda: self._loop_task(fn(*args)))

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn(*args)`` on the event loop, from the Raft thread."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def _observe(self, state: ClusterState, now: float, me: LocalState) -> Observation:
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
        holder = state.lock.held and state.lock.holder == self.node.name
        seq = me.seq if me.seq is not None else self._seq_on_disk()
        return Observation(
            me=self.node.name, now=now,
            has_quorum=self.raft.has_quorum(now, self.quorum_window),
            lock_seen_at=self.raft.lock_seen_at(),
            renewal_proposed_at=me.renewal_proposed_at if holder else None,
            my_applied_seq=seq,
            member_seen_at=dict(self.reports.seen),
            member_reported_at=dict(self.reports.fresh),
            my_last_epoch=self.node.lineage_label(seq),
            acquired_epoch=self._acquired_epoch(seq),
            uptime_s=now - self._started_at,
            is_primary=me.is_primary,
            disk_full=me.disk_full,
            space_low=me.space_low,
            switching=self.switching,
            unfit=me.unfit, my_has_database=me.has_database,
            fencing_failed=(self._fencing_failed[1] if self._fencing_failed is not None
                            and self._fencing_failed[0] == state.lock.epoch else None),
            handover_epoch=self._disk_handover,
            acquiring_since=self._acquiring, acked_seq=me.acked_seq,
            sync_pending=self._sync_pending, sync_unknown=self._sync_unknown,
            sync_proposed_at=self._sync_proposed_at,
            replicas=me.replicas)

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
        self._take_settings(self.raft.snapshot())
        now = time.monotonic()
        node = self.node
        me = node.local_state()
        if now - self._last_report >= self.cfg.consensus.report_interval_s:
            self._last_report = now
            # Unhealthy: its store refuses writes, replication stopped for good (diverged), or
            # a required watchdog cannot be armed; whichever, it must not be promoted.
            healthy = me.unfit is None and not me.disk_full and me.space_low is None
            seq = me.seq or 0
            self.raft.propose(Report(
                node.name, self.me.api.url, seq,
                member_role(me.is_primary, me.has_database),
                healthy, self.me.tags, node.lineage_label(seq), clock=time.monotonic()))
        state = self.raft.snapshot()
        obs = self._observe(state, now, me)
        decision = decide(state, obs, self.policy)
        self._record(decision)
        await self._act(decision, state)
        failed = node.tend_fencing(state.paused)
        if failed is not None:
            self.fencing_failed(state.lock.epoch, failed)
        self._count_epoch(state)
        self.last_pass_at = time.monotonic()
        return decision

    def _count_epoch(self, state: ClusterState) -> None:
        epoch = state.lock.epoch
        if self._seen_epoch is not None and epoch > self._seen_epoch and state.history:
            reason = state.history[-1].reason
            self.epoch_changes[reason] = self.epoch_changes.get(reason, 0) + 1
        self._seen_epoch = epoch

    def fencing_refusal(self, epoch: int) -> str | None:
        """Why the gate must stay shut in ``epoch``: its watchdog would not arm (rule 7: a late
        renewal never reopens a gate shut on purpose)."""
        failed = self._fencing_failed
        return failed[1] if failed is not None and failed[0] == epoch else None

    def fencing_failed(self, epoch: int, why: str) -> None:
        """The node could not arm its watchdog as primary of ``epoch`` (its gate is shut): the
        next pass gives the lock up (decide: ``Observation.fencing_failed``)."""
        self._fencing_failed = (epoch, why)
        log.error("%s: %s (epoch %d)", self.node.name, why, epoch)

    def _loop_task(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hand_over_for_disk(self) -> None:
        try:
            successor = await self.switchover(None)
            log.info("%s: handed over to %s for lack of disk space", self.node.name, successor)
        except RequestRefused as exc:
            log.error("%s: handover for lack of disk space failed: %s", self.node.name, exc)
        finally:
            self.switching = False

    # -- what the node, the API and metrics may read (never ``raft`` itself) -----------------

    def state(self) -> ClusterState:
        """The replicated state as this node last applied it."""
        return self.raft.snapshot()

    def raft_members(self) -> list[str]:
        return self.raft.raft_members()

    def raft_status(self) -> dict[str, Any]:
        return self.raft.raft_status()

    def compact_raft_log(self) -> None:
        self.raft.compact_log()

    def raft_tick_at(self) -> float | None:
        return self.raft.last_tick_at

    def member_seen_at(self) -> dict[str, float]:
        """When each member's report last changed, on this node's monotonic clock."""
        return dict(self.reports.seen)

    def _record(self, d: Decision) -> None:
        self.passes += 1
        prev = self.last
        self.last = d
        if prev is None or (prev.action, prev.target, prev.epoch) != (d.action, d.target,
                                                                       d.epoch):
            log.info("%s", d.sentence)
        else:
            log.debug("%s", d.sentence)

    async def _act(self, d: Decision, state: ClusterState) -> None:
        """Carry out ``d.effects`` in order; a RecoverDisk that fails ends the pass."""
        for effect in d.effects:
            if not await self._do(effect, state):
                return

    async def _do(self, effect: Effect, state: ClusterState) -> bool:
        node = self.node
        match effect:
            case CloseGate(reason):
                node.close_gate(reason)
            case StepDown(target, epoch):
                await node.become_replica(target, epoch)
            case RecoverDisk():
                return await node.recover_disk()
            case HandOver(epoch, reason):
                self._disk_handover = epoch
                self.switching = True     # now, not when the task starts: no Release meanwhile
                log.error("%s: %s; handing the primary role over", node.name, reason)
                self._loop_task(self._hand_over_for_disk())
            case ProposeRelease(epoch, floor):
                # A floor beyond what this process acknowledged (a restarted holder's: all it
                # holds) must be on disk first, or a power loss could leave it above every node.
                try:
                    await node.make_durable(floor)
                except Exception as exc:
                    log.error("%s: could not sync through seq %d before releasing: %s",
                              node.name, floor, exc)
                self.raft.propose(Release(node.name, epoch, None, floor))
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
            # On the Raft thread: nothing of the node is touched here. Its store may be
            # closing on the loop this very moment (a managed node handing its database to
            # the service), and a Rust-backed handle used from two threads raises
            # "Already mutably borrowed" — inside Raft's tick, which then fails.
            if ok:
                self._on_loop(self._renewed, epoch, proposed_at)

        me = node.local_state()
        self.raft.propose(Renew(node.name, epoch, me.seq or 0, me.acked_seq), renewed)

    def _renewed(self, epoch: int, proposed_at: float) -> None:
        """On the event loop, after a renewal of ``epoch`` committed (proposed at
        ``proposed_at``): the node reads its own state on its own thread."""
        node = self.node
        if self._claimed_epoch == epoch and node.latest_seq() == self._claimed_start - 1:
            # Renewed as ours while we held exactly the data it starts after: ours from now
            # on, whatever this node writes in it.
            self._claim_confirmed = True
        # During a switchover, or once fencing failed in this epoch, the lease is kept but the
        # gate stays shut (the node checks both again under its role lock).
        if not self.switching and self.fencing_refusal(epoch) is None:
            self._loop_task(node.become_primary(epoch, proposed_at))

    async def _acquire(self, effect: ProposeAcquire, state: ClusterState) -> None:
        node, lock, epoch = self.node, state.lock, effect.epoch
        self._acquiring = time.monotonic()
        # Stop applying first: the epoch must start after the last batch this node holds, or
        # nodes holding the same old-epoch batches would look divergent.
        start_seq = await node.stop_following() + 1
        # The epoch's prefix becomes a floor (rule 2): it must be on disk before it is claimed
        # (a restarted holder's recovered WAL may sit in the page cache only).
        try:
            await node.make_durable(start_seq - 1)
        except Exception as exc:
            log.error("%s: could not sync through seq %d before acquiring: %s", node.name,
                      start_seq - 1, exc)
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

    def status(self) -> dict[str, Any]:
        state = self.raft.snapshot()
        lock = state.lock
        return {
            "decision": self.last.sentence if self.last else None,
            "lock": {"holder": lock.holder, "epoch": lock.epoch, "released": lock.released,
                     "renewals": lock.renewals},
            "lease_left_s": round(self.node.lease_left(), 3) if self.node.is_primary else None,
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
            "settings": self.settings_status(),
        }

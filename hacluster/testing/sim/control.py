"""Each simulated node's control loop: observe, the real ``decide``, and its effects carried out.

Owns one pass per renew interval of each node's drifting clock: the periodic report, the
``Observation`` (built from the node's own state as ``ControlLoop._observe`` builds it),
``decide`` — which returns the verdict, its sentence and the ordered effects — and an
interpreter of those effects against the simulated node and consensus log, mirroring
``ControlLoop._do`` effect by effect (gate, step down, disk recovery, handover, release,
renew, synchronous set, follow, acquire). Also the switchover procedure (an operator's, or a
disk handover), which waits for the successor as ``ControlLoop.switchover`` does. It must never
decide anything itself: which effect happens, and when, is ``decide``'s answer.
"""

from __future__ import annotations

from hacluster.consensus.decide import decide
from hacluster.consensus.eligibility import successors
from hacluster.consensus.model import (
    CloseGate,
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
from hacluster.consensus.state import Acquire, ClusterState, Release, Renew, Report, SetSyncSet
from hacluster.testing.sim.core import Callback, Core, SimNode

_FIGURES = str.maketrans("0123456789.", "###########")


class Control(Core):
    # -- the pass -------------------------------------------------------------------------

    def schedule_pass(self, n: SimNode, first: bool = False) -> None:
        interval = self.pol(n).timing.renew_interval_s / (1 + n.rate)
        self.after(self.rng.uniform(0, interval) if first else interval,
                   lambda: self.control_pass(n), n)

    def _acquired_epoch(self, n: SimNode) -> int | None:
        if n.claimed_epoch is None:
            return None
        if n.claim_confirmed or n.seq == n.claimed_start - 1:
            return n.claimed_epoch
        return None

    def observe(self, n: SimNode, state: ClusterState, now: float) -> Observation:
        n.reports.note(state, now)
        lock = state.lock
        holder = lock.held and lock.holder == n.name
        seq = len(n.entries)
        replicas: tuple[ReplicaView, ...] = ()
        if n.positions and n.primary_epoch is not None:    # only a primary's are read
            connected = {m.name for m in self.connected(n)}
            replicas = tuple(ReplicaView(name, name in connected, at, moved)
                             for name, (at, moved) in sorted(n.positions.items()))
        failed = n.fencing_failed
        return Observation(
            me=n.name, now=now, has_quorum=self.majority(n), lock_seen_at=n.lock_seen_at,
            renewal_proposed_at=n.gate_proposed_at if holder else None, my_applied_seq=seq,
            member_seen_at=n.reports.seen, my_last_epoch=n.entries[-1][0] if seq else 0,
            acquired_epoch=self._acquired_epoch(n), uptime_s=now - n.started_at,
            member_reported_at=n.reports.fresh, is_primary=n.primary_epoch is not None,
            disk_full=n.disk_full, unfit=self.unfit(n),
            fencing_failed=failed[1] if failed is not None and failed[0] == lock.epoch else None,
            switching=n.switching, handover_epoch=n.handover_epoch, acquiring_since=n.acquiring,
            acked_seq=n.acked_seq, sync_pending=n.sync_pending, sync_unknown=n.sync_unknown,
            sync_proposed_at=n.sync_proposed_at, replicas=replicas)

    def unfit(self, n: SimNode) -> str | None:
        if n.diverged:
            return "replication diverged"
        if self.now < n.watchdog_until:
            return "watchdog required but /dev/watchdog is not writable"
        return None

    def control_pass(self, n: SimNode) -> None:
        self.schedule_pass(n)
        now = n.offset + self.now * (1 + n.rate)       # local(n)
        if now - n.last_report >= self.cfg.report_s:
            n.last_report = now
            seq = len(n.entries)
            self.propose(n, Report(n.name, f"http://{n.name}", seq,
                                   "primary" if n.primary_epoch is not None else "replica",
                                   self.unfit(n) is None and n.disk_full is None, frozenset(),
                                   n.entries[-1][0] if seq else 0, clock=now))
        state = self.states[n.log_index]
        d = decide(state, self.observe(n, state, now), self.pol(n))
        prev = n.last
        n.last = d
        # Traced when the decision changes, ignoring the figures in it (seconds left, ago).
        if prev is None or (prev.action, prev.target, prev.epoch) != (
                d.action, d.target, d.epoch):
            self.say(d.sentence)
            n.last_shape = d.sentence.translate(_FIGURES)
        elif prev.sentence != d.sentence:
            shape = d.sentence.translate(_FIGURES)
            if shape != n.last_shape:
                self.say(d.sentence)
            n.last_shape = shape
        for effect in d.effects:
            if not self.carry_out(n, effect, state):
                break
        self.settle_writes(n)
        if n.following is not None and not n.pull_due:
            self.pull(n)

    # -- effects --------------------------------------------------------------------------

    def carry_out(self, n: SimNode, effect: Effect, state: ClusterState) -> bool:
        match effect:
            case CloseGate(reason):
                n.gate_reason = reason
            case StepDown(target, _):
                self.become_replica(n, target)
            case RecoverDisk():
                if self.now < n.room_at:
                    return False
                n.disk_full = None
                self.say(f"{n.name}: store reopened, the disk has room again")
            case HandOver(epoch, reason):
                n.handover_epoch, n.switching = epoch, True
                self.switchover(n, None)
            case ProposeRelease(epoch, floor):
                n.synced = max(n.synced, min(floor, n.seq))    # ControlLoop: make_durable
                self.propose(n, Release(n.name, epoch, None, floor))
            case ProposeRenew(epoch):
                self._renew(n, epoch)
            case ProposeSyncSet(epoch, members):
                self._propose_sync_set(n, epoch, members)
            case Follow(target, _):
                self.become_replica(n, target)
            case ProposeAcquire():
                self._acquire(n, effect, state)
        return True

    def become_primary(self, n: SimNode, epoch: int, proposed_at: float) -> None:
        if n.switching:
            return
        if n.primary_epoch != epoch:
            n.primary_epoch, n.following, n.positions = epoch, None, {}
            n.acked_seq = 0             # Node.become_primary: no floor from older epochs
            if self.now < n.watchdog_until:
                # ControlLoop._tend_watchdog: arming a required watchdog failed.
                n.fencing_failed = (epoch, "watchdog required but cannot open /dev/watchdog")
        if n.fencing_failed is not None and n.fencing_failed[0] == epoch:
            n.gate_reason = n.fencing_failed[1]
            return
        n.gate_reason = None
        lock = self.states[n.log_index].lock      # Node._lock_lease_s
        n.gate_lock_lease = lock.lease_s if lock.epoch == epoch and lock.lease_s > 0 else None
        n.gate_proposed_at = max(proposed_at, n.gate_proposed_at or proposed_at)
        self.gate_opened(n)

    def become_replica(self, n: SimNode, target: str | None) -> None:
        if n.primary_epoch is not None:
            n.primary_epoch, n.gate_proposed_at, n.gate_reason = None, None, "replica"
            n.sync_pending, n.sync_unknown = frozenset(), False
            for p in n.waiting:
                self.finish(p, n, 503, "outcome unknown: no longer primary")
            n.waiting = []
        if n.following != target:
            n.following = target
            if target is not None:
                self.pull(n)

    def _renew(self, n: SimNode, epoch: int) -> None:
        def renewed(ok: bool | None, proposed_at: float) -> None:
            if ok and n.claimed_epoch == epoch and n.seq == n.claimed_start - 1:
                n.claim_confirmed = True
            if ok:
                self.become_primary(n, epoch, proposed_at)

        self.propose(n, Renew(n.name, epoch, n.seq, n.acked_seq), self._mine(n, renewed))

    def _mine(self, n: SimNode, cb: Callback) -> Callback:
        """Drop an answer meant for an earlier incarnation of ``n``'s process."""
        inc = n.incarnation

        def call(ok: bool | None, at: float) -> None:
            if n.incarnation == inc:
                cb(ok, at)
        return call

    def _propose_sync_set(self, n: SimNode, epoch: int, members: frozenset[str]) -> None:
        n.sync_pending = n.sync_pending | members
        n.sync_unknown = False
        n.sync_proposed_at = self.local(n)

        def done(ok: bool | None, _: float) -> None:
            if ok is None:
                n.sync_unknown = True
                return
            n.sync_pending, n.sync_unknown = frozenset(), False
            self.settle_writes(n)

        self.propose(n, SetSyncSet(n.name, epoch, members), self._mine(n, done))

    def _acquire(self, n: SimNode, effect: ProposeAcquire, state: ClusterState) -> None:
        lock, epoch = state.lock, effect.epoch
        n.acquiring = self.local(n)
        n.following = None              # stop applying first: the epoch starts after it
        n.synced = n.seq                # ControlLoop._acquire: make_durable(start - 1)
        start = n.seq + 1
        cmd = Acquire(n.name, lock.epoch, lock.renewals, start, self.pol(n).timing.lease_s,
                      effect.reason, 0.0, n.label(start - 1), effect.lag_allowance,
                      effect.force)
        n.claimed_epoch, n.claimed_start, n.claim_confirmed = epoch, start, False

        def acquired(ok: bool | None, proposed_at: float) -> None:
            n.acquiring = None
            if ok:
                if n.claimed_epoch == epoch:
                    n.claim_confirmed = True
                self.become_primary(n, epoch, proposed_at)
            elif ok is False and n.claimed_epoch == epoch:
                st = self.state(n)
                rec = next((r for r in st.history if r.epoch == epoch), None)
                won = (st.lock.holder == n.name and st.lock.epoch == epoch
                       and rec is not None and rec.start_seq == start)
                if not won:
                    n.claimed_epoch = None

        self.propose(n, cmd, self._mine(n, acquired))

    # -- switchover (ControlLoop.switchover) ----------------------------------------------

    def switchover(self, n: SimNode, target: str | None, timeout: float = 5.0) -> None:
        state = self.state(n)
        lock = state.lock
        if not (n.primary_epoch is not None and lock.held and lock.holder == n.name):
            n.switching = False
            return
        choices = successors(state, n.name, self.pol(n), n.reports.seen, self.local(n),
                             target)
        if not choices:
            n.switching = False
            self.say(f"{n.name}: switchover: no successor qualifies")
            return
        successor, epoch = choices[0], lock.epoch
        n.switching, n.gate_reason = True, f"switchover to {successor}"
        last, deadline = n.seq, self.local(n) + timeout
        self.say(f"{n.name}: switchover to {successor} at seq {last}")

        def wait() -> None:
            report = self.state(n).member(successor)
            if report is not None and report.role == "replica" and report.applied_seq >= last:
                self.propose(n, Release(n.name, epoch, successor, n.acked_seq),
                             self._mine(n, released))
            elif self.local(n) > deadline:
                n.switching = False          # the next effective renewal reopens the gate
                self.say(f"{n.name}: switchover: {successor} did not reach seq {last}")
            else:
                self.after(0.05, wait, n)

        def released(ok: bool | None, _: float) -> None:
            if not ok:
                n.switching = False
                return
            self.become_replica(n, None)
            n.switching = False

        self.after(0.01, wait, n)

    # -- provided by the data model -------------------------------------------------------

    def connected(self, p: SimNode) -> list[SimNode]:
        raise NotImplementedError

    def gate_opened(self, n: SimNode) -> None:
        raise NotImplementedError

    def pull(self, f: SimNode) -> None:
        raise NotImplementedError

    def settle_writes(self, n: SimNode) -> None:
        raise NotImplementedError

    def finish(self, p: object, n: SimNode, status: int, note: str) -> None:
        raise NotImplementedError

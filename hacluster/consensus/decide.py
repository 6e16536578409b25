"""One pass of the control loop, decided: a pure function from a snapshot to a verdict.

Owns the failover judgement: when a lease counts as expired, who is the best candidate (ranked
by ``eligibility``: on the epoch history, at the acknowledged floor, most up to date — rules 1
and 2 of docs/architecture.md), what a lock holder back from a restart does (rule 3), what a
node without quorum does, what pause mode and an operator's failover request hold back. Input
is an immutable snapshot of the replicated state plus this node's ``Observation``; output is a
``Decision``: an action, the sentence that explains it ("n2: promoting, epoch 7 from seq 81234;
n1's lease expired 0.31 s ago"), which the loop logs and shows in status, and the ordered
effects that carry it out (``effects.plan``). It must never read a clock, touch the network or
the disk, never choose to promote on a side without quorum, and never promote a candidate whose
data left the epoch history.
"""

from __future__ import annotations

from dataclasses import replace

from hacluster.consensus import eligibility as elig
from hacluster.consensus.effects import plan
from hacluster.consensus.eligibility import (
    Purpose,
    failover_refusal,
    lag_allowance,
    position_refusal,
    rank,
)
from hacluster.consensus.lease import holder_lease_end, observer_lease_end
from hacluster.consensus.model import (
    Action,
    Decision,
    Effect,
    Observation,
    Policy,
    ReplicaView,
)
from hacluster.consensus.state import ClusterState, FailoverRequest, Member, member_role

__all__ = ["Action", "Decision", "Effect", "Observation", "Policy", "Purpose", "ReplicaView",
           "decide", "failover_refusal", "lag_allowance", "position_refusal", "rank"]


def _ago(seconds: float) -> str:
    return f"{seconds:.2f} s ago"


def decide(state: ClusterState, obs: Observation, policy: Policy) -> Decision:
    """The verdict of one pass, its sentence, and the ordered effects that carry it out."""
    return plan(state, obs, policy, judge(state, obs, policy))


def judge(state: ClusterState, obs: Observation, policy: Policy) -> Decision:
    """The action and its sentence, before effects (``effects.plan`` adds them)."""
    me, now, t = obs.me, obs.now, policy.timing
    lock = state.lock
    pause = "PAUSE: " if state.paused else ""

    if lock.held and lock.holder == me and obs.acquired_epoch != lock.epoch:
        return _restarted_holder(state, obs, policy, pause)

    if lock.held and lock.holder == me:
        end = (holder_lease_end(obs.renewal_proposed_at, t, lock.lease_s)
               if obs.renewal_proposed_at is not None else None)
        if not obs.has_quorum:
            if end is None or now >= end:
                late = "" if end is None else f", lease expired {_ago(now - end)}"
                return Decision(Action.DEMOTE, f"{pause}{me}: demoted, no quorum{late}",
                                epoch=lock.epoch)
            return Decision(Action.WAIT, f"{pause}{me}: primary without quorum, epoch "
                            f"{lock.epoch}; lease ends in {end - now:.2f} s unless renewed",
                            target=me, epoch=lock.epoch)
        if end is None or now >= end:
            return Decision(Action.RENEW, f"{pause}{me}: primary, epoch {lock.epoch}; lease "
                            "lapsed, renewing before accepting writes", target=me,
                            epoch=lock.epoch)
        return Decision(Action.RENEW, f"{pause}{me}: primary, epoch {lock.epoch}; lease valid "
                        f"for {end - now:.2f} s", target=me, epoch=lock.epoch)

    if not obs.has_quorum:
        following = f"; last known primary {lock.holder} (epoch {lock.epoch})" if lock.held \
            else ""
        return Decision(Action.WAIT, f"{pause}{me}: no quorum, electing no one{following}",
                        target=lock.holder if lock.held else None, epoch=lock.epoch)

    why: str
    if lock.held:
        assert lock.holder is not None
        if obs.lock_seen_at is None:
            # Just started or just learned of this lock: a full lease from now, to be safe.
            return Decision(Action.FOLLOW, f"{pause}{me}: following {lock.holder} (epoch "
                            f"{lock.epoch}); waiting for its next renewal", target=lock.holder,
                            epoch=lock.epoch)
        # The longer of the holder's recorded lease and ours: configs may differ.
        expires = observer_lease_end(obs.lock_seen_at, t, lock.lease_s)
        if now < expires:
            return Decision(Action.FOLLOW, f"{pause}{me}: following {lock.holder} (epoch "
                            f"{lock.epoch})", target=lock.holder, epoch=lock.epoch)
        why = f"{lock.holder}'s lease expired {_ago(now - expires)}"
    elif lock.holder is not None:
        why = f"{lock.holder} released the lock (epoch {lock.epoch})"
        if lock.successor is not None:
            why = f"{lock.holder} handed over to {lock.successor} (epoch {lock.epoch})"
    else:
        why = "no primary yet"

    request = state.failover_request
    if request is not None:
        return _manual(state, obs, policy, why, request)
    # A switchover is an operator's act, like a manual failover: pause does not hold it back.
    handover = lock.released and lock.successor is not None
    if state.paused and not handover:
        return Decision(Action.WAIT, f"PAUSE: {me}: {why}; no automatic failover in "
                        "maintenance mode", epoch=lock.epoch)
    return _elect(state, obs, policy, why)


def _promote(obs: Observation, state: ClusterState, why: str) -> Decision:
    epoch, start = state.lock.epoch + 1, obs.my_applied_seq + 1
    return Decision(Action.PROMOTE, f"{obs.me}: promoting, epoch {epoch} from seq {start}; "
                    f"{why}", target=obs.me, epoch=epoch, start_seq=start)


def _restarted_holder(state: ClusterState, obs: Observation, policy: Policy,
                      pause: str) -> Decision:
    """Rule 3: the lock is in my name from an earlier run of this node. Its unsynced tail may
    be gone, and with it sequence numbers it handed out: take a new epoch from what this node
    really holds, or give the lock up to a node that holds more."""
    me, lock = obs.me, state.lock
    why = f"{me} holds the lock of epoch {lock.epoch} from before a restart"
    if not obs.has_quorum:
        return Decision(Action.WAIT, f"{pause}{me}: no quorum; {why}", epoch=lock.epoch)
    mine = state.member(me)
    refusal = ("no report of mine yet" if mine is None else
               _refusal(state, obs, policy, mine, obs.my_applied_seq, obs.my_last_epoch,
                        guarded=False))
    if refusal is not None:
        return Decision(Action.RELEASE, f"{pause}{me}: releasing the lock of epoch "
                        f"{lock.epoch}; {why} but {refusal}", epoch=lock.epoch)
    # Compare with what the others hold now, not with reports from before the restart (a
    # power loss may have taken their tails too): wait for each to report afresh, for as
    # long as a report may take to count as stale anyway.
    if obs.member_reported_at is not None:
        obs = replace(obs, member_seen_at=obs.member_reported_at)
    unheard = sorted(m.name for m in state.members if m.name != me and (
        obs.member_seen_at.get(m.name) is None
        or obs.now - obs.member_seen_at[m.name] > policy.member_stale_s))
    if unheard and obs.uptime_s < policy.member_stale_s:
        return Decision(Action.WAIT, f"{pause}{me}: {why}; waiting for fresh reports from "
                        f"{', '.join(unheard)}", epoch=lock.epoch)
    mine_rank = elig.rank(state, obs.my_applied_seq, obs.my_last_epoch)
    others = [(elig.rank(state, m.applied_seq, m.last_epoch), m.name) for m in state.members
              if m.name != me and _refusal(state, obs, policy, m, m.applied_seq, m.last_epoch,
                                           guarded=False) is None]
    better = [(r, name) for r, name in others if r > mine_rank]
    if better:
        (epoch, seq), name = max(better)
        return Decision(Action.RELEASE, f"{pause}{me}: releasing the lock of epoch "
                        f"{lock.epoch}; {why} and {name} holds more (seq {seq} of epoch "
                        f"{epoch} vs seq {obs.my_applied_seq})", epoch=lock.epoch)
    return _promote(obs, state, f"{why}: a new epoch, never its old one")


def _manual(state: ClusterState, obs: Observation, policy: Policy, why: str,
            request: FailoverRequest) -> Decision:
    """An operator named the successor: only it may take over, even in pause mode."""
    me, lock = obs.me, state.lock
    forced = " (forced)" if request.force else ""
    if me != request.candidate:
        return Decision(Action.WAIT, f"{me}: {why}; manual failover to {request.candidate}"
                        f"{forced} requested", target=request.candidate, epoch=lock.epoch)
    mine = state.member(me)
    refusal = elig.failover_refusal(state, me, request.force, policy, obs.member_seen_at,
                                    obs.now, obs.my_applied_seq, obs.my_last_epoch)
    if obs.disk_full or obs.unfit:
        refusal = f"my store refuses writes: {obs.disk_full}" if obs.disk_full else obs.unfit
    if refusal is not None or mine is None:
        return Decision(Action.WAIT, f"{me}: {why}; manual failover to me refused: "
                        f"{refusal or 'no report of mine yet'}", epoch=lock.epoch)
    return _promote(obs, state, f"{why}; manual failover{forced}")


def _refusal(state: ClusterState, obs: Observation, policy: Policy, m: Member, seq: int,
             last_epoch: int, guarded: bool) -> str | None:
    """Why ``m`` (at ``seq``, lineage ``last_epoch``) may not take over automatically, as the
    one eligibility rule says; ``guarded`` adds the synchronous set's rule. A node judges its
    own store by what it sees now, not by its last report."""
    if m.name == obs.me and obs.disk_full:
        return f"my store refuses writes: {obs.disk_full}"
    if m.name == obs.me and obs.unfit:
        return obs.unfit
    if m.name == obs.me and obs.my_has_database is not None:
        # Its database as it is now: one just set aside (a divergent tail, a reinit) must not
        # pass for the copy its last report described, nor a bootstrap just done wait a report.
        m = replace(m, role=member_role(obs.is_primary, obs.my_has_database))
    return elig.refusal(state, m, Purpose.ELECTION, policy, seen_at=obs.member_seen_at,
                        now=obs.now, me=obs.me, seq=seq, last_epoch=last_epoch,
                        guarded=guarded,
                        best_known=elig.best_known_seq(state, obs.my_applied_seq))


def _elect(state: ClusterState, obs: Observation, policy: Policy, why: str) -> Decision:
    me, lock = obs.me, state.lock
    members = {m.name: m for m in state.members}
    mine = members.get(me)
    if mine is None:
        return Decision(Action.WAIT, f"{me}: {why}; not a candidate until my report is in the "
                        "cluster state", epoch=lock.epoch)
    # After a switchover the holder itself checked its successor holds every write.
    guarded = policy.sync_mode and lock.holder is not None and not lock.released
    if guarded and not state.sync_set:
        return Decision(Action.WAIT, f"{me}: {why}; no synchronous standby was recorded, so "
                        "no one can be promoted without risking acknowledged writes",
                        epoch=lock.epoch)

    def position(m: Member) -> tuple[int, int]:
        return ((obs.my_applied_seq, obs.my_last_epoch) if m.name == me
                else (m.applied_seq, m.last_epoch))

    my_refusal = _refusal(state, obs, policy, mine, *position(mine), guarded)
    qualified = [m for m in state.members if (
        my_refusal is None if m.name == me else
        _refusal(state, obs, policy, m, *position(m), guarded) is None)]
    # The node that held the lock is not its own successor while another qualifies: it gave
    # the lock up (a switchover, a full disk, a watchdog that would not arm) or its lease ran
    # out while it was cut off. Once it released the lock and no one else qualifies, it may
    # take it back in a new epoch rather than leave the cluster without a primary (it may be
    # the only node holding every acknowledged write).
    others = [m for m in qualified if m.name != lock.holder]
    if others or not lock.released:
        qualified = others
        if me == lock.holder:
            my_refusal = my_refusal or "I held the lock"
    if my_refusal:
        return Decision(Action.WAIT, f"{me}: {why}; not a candidate ({my_refusal})",
                        epoch=lock.epoch)
    eligible = [(elig.rank(state, *position(m)), m.name) for m in qualified]
    # A switchover names its successor: it alone may take over, while it qualifies.
    if lock.released and lock.successor in {name for _, name in eligible}:
        eligible = [(r, name) for r, name in eligible if name == lock.successor]
    elif state.paused:
        # Paused, only the handover itself may happen: anyone else would be a failover.
        return Decision(Action.WAIT, f"PAUSE: {me}: {why}; {lock.successor} does not qualify "
                        "and there is no automatic failover in maintenance mode",
                        epoch=lock.epoch)
    # The most up-to-date wins (epoch of the last write, then seq); on a tie the smallest
    # name, so every node picks the same one.
    (best_epoch, best_seq), best = min(eligible, key=lambda c: (-c[0][0], -c[0][1], c[1]))
    if best != me:
        my_epoch = elig.rank(state, obs.my_applied_seq, obs.my_last_epoch)[0]
        versus = (f"seq {best_seq} vs {obs.my_applied_seq}" if best_epoch == my_epoch else
                  f"seq {best_seq} written in epoch {best_epoch} vs seq {obs.my_applied_seq} "
                  f"in epoch {my_epoch}")
        return Decision(Action.WAIT, f"{me}: {why}; {best} is the better candidate "
                        f"({versus})", target=best, epoch=lock.epoch)
    return _promote(obs, state, why)

"""One pass of the control loop, decided: a pure function from a snapshot to one sentence.

Owns the failover rules: who may hold the primary lock, when a lease counts as expired, who is
the best candidate (on the epoch history, at the acknowledged floor, most up to date: rules 1
and 2 of docs/architecture.md), what a lock holder back from a restart does (rule 3), what a
node without quorum does, what pause mode holds back. Input is an
immutable snapshot of the replicated state plus this node's local observations (its monotonic
clock, whether Raft has quorum, when it last saw the lock renewed); output is an action and the
sentence that explains it ("n2: promoting, epoch 7 from seq 81234; n1's lease expired 0.31 s
ago"), which the loop logs and shows in status. It must never read a clock, touch the network or
the disk, never choose to promote on a side without quorum, and never promote a candidate whose
data left the epoch history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum

from hacluster.consensus.epochs import conflict, writer_epoch
from hacluster.consensus.lease import LeaseTiming, holder_lease_end, observer_lease_end
from hacluster.consensus.state import ClusterState, FailoverRequest, Member, floor_refusal


class Action(Enum):
    RENEW = "renew"          # I hold the lock: renew it (and write while the lease lasts)
    PROMOTE = "promote"      # propose Acquire for myself
    FOLLOW = "follow"        # replicate from ``target``
    DEMOTE = "demote"        # I held the lock and must stop writing now
    RELEASE = "release"      # I hold the lock but must not serve it: give it up
    WAIT = "wait"            # nothing to do this pass


@dataclass(frozen=True, slots=True)
class Policy:
    timing: LeaseTiming = field(default_factory=LeaseTiming)
    sync_mode: bool = True
    maximum_lag_on_failover: int = 1 << 20     # sequence numbers
    member_stale_s: float = 3.0                # a member report older than this is not a candidate


@dataclass(frozen=True, slots=True)
class Observation:
    """What this node knows locally, beside the replicated state."""

    me: str
    now: float                                  # monotonic
    has_quorum: bool                            # Raft has a leader and commits reach it
    lock_seen_at: float | None                  # when the current (epoch, renewals) was applied
    renewal_proposed_at: float | None           # mine: proposal time of my last effective renewal
    my_applied_seq: int
    member_seen_at: Mapping[str, float] = field(default_factory=dict)
    my_last_epoch: int = 0                      # my lineage's label of my_applied_seq
    # The epoch this process acquired (or is acquiring) the lock for. A lock held in my name
    # in any other epoch was taken by an earlier run of this node: after a crash or power
    # loss it may lack an acknowledged tail, so it is never resumed, only re-acquired.
    acquired_epoch: int | None = None
    uptime_s: float = float("inf")              # since this process's control loop started
    # When each member's report last changed while this process ran (a subset of
    # member_seen_at, which also counts the first report seen, replayed or not).
    member_reported_at: Mapping[str, float] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    sentence: str
    target: str | None = None                   # the primary to follow, or me when promoting
    epoch: int | None = None                    # the epoch to expect (follow) or create (promote)
    start_seq: int | None = None                # promote: the first seq of the new epoch


def _ago(seconds: float) -> str:
    return f"{seconds:.2f} s ago"


def lag_allowance(policy: Policy) -> int:
    """How far below the acknowledged floor a candidate may be: none in sync mode."""
    return 0 if policy.sync_mode else policy.maximum_lag_on_failover


def position_refusal(state: ClusterState, seq: int, last_epoch: int, policy: Policy,
                     force: bool = False) -> str | None:
    """Rules 1 and 2 for any candidate position: on the newest history, at the floor."""
    off = conflict(last_epoch, seq, state.history)
    if off is not None:
        return f"diverged: {off}"
    if force:
        return None
    below = floor_refusal(state, seq, lag_allowance(policy))
    return None if below is None else f"{below}: it would lose an acknowledged write"


def rank(state: ClusterState, seq: int, last_epoch: int) -> tuple[int, int]:
    """Raft's up-to-date rule in our terms: (epoch of the last write, seq), higher is better."""
    return writer_epoch(last_epoch, seq, state.history), seq


def decide(state: ClusterState, obs: Observation, policy: Policy) -> Decision:
    me, now, t = obs.me, obs.now, policy.timing
    lock = state.lock
    pause = "PAUSE: " if state.paused else ""

    if lock.held and lock.holder == me and obs.acquired_epoch != lock.epoch:
        return _restarted_holder(state, obs, policy, pause)

    if lock.held and lock.holder == me:
        end = (holder_lease_end(obs.renewal_proposed_at, t)
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
               "unhealthy" if not mine.healthy else
               position_refusal(state, obs.my_applied_seq, obs.my_last_epoch, policy))
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
    mine_rank = rank(state, obs.my_applied_seq, obs.my_last_epoch)
    others = [(rank(state, m.applied_seq, m.last_epoch), m.name) for m in state.members
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
    refusal = failover_refusal(state, me, request.force, policy, obs.member_seen_at, obs.now,
                               obs.my_applied_seq, obs.my_last_epoch)
    if refusal is not None or mine is None:
        return Decision(Action.WAIT, f"{me}: {why}; manual failover to me refused: "
                        f"{refusal or 'no report of mine yet'}", epoch=lock.epoch)
    return _promote(obs, state, f"{why}; manual failover{forced}")


def failover_refusal(state: ClusterState, candidate: str, force: bool, policy: Policy,
                     member_seen_at: Mapping[str, float], now: float,
                     candidate_seq: int | None = None,
                     candidate_epoch: int | None = None) -> str | None:
    """Why ``candidate`` may not be made primary by an operator; None when it may.

    Never a candidate whose data left the epoch history. Without ``force``, a candidate that
    could lack acknowledged writes is refused: below the acknowledged floor, in sync mode one
    outside the recorded synchronous set, in async mode one behind the highest position known.
    With ``force`` only those and a candidate without a database (or the holder itself) are.
    """
    lock = state.lock
    m = state.member(candidate)
    if m is None:
        return f"{candidate} has never reported"
    if candidate == lock.holder and lock.held:
        return f"{candidate} holds the lock of epoch {lock.epoch}"
    if lock.epoch > 0 and m.role == "starting":
        return f"{candidate} has no database yet"
    seq = m.applied_seq if candidate_seq is None else candidate_seq
    last_epoch = m.last_epoch if candidate_epoch is None else candidate_epoch
    position = position_refusal(state, seq, last_epoch, policy, force)
    if position is not None:
        return f"{candidate} is {position}"
    if force:
        return None
    if not m.healthy:
        return f"{candidate} is unhealthy"
    seen = member_seen_at.get(candidate)
    if seen is None or now - seen > policy.member_stale_s:
        return f"{candidate} has not reported recently"
    if policy.sync_mode and lock.holder is not None and not lock.released:
        if candidate not in state.sync_set:
            return (f"{candidate} is not in the synchronous set "
                    f"{sorted(state.sync_set) or '(none recorded)'}: it may lack acknowledged "
                    "writes")
        return None
    best = max([x.applied_seq for x in state.members] + [lock.holder_seq])
    if seq < best:
        return (f"{candidate} is at seq {seq}, behind seq {best}: writes acknowledged after "
                "it would be lost")
    return None


def _best_known(state: ClusterState, obs: Observation) -> int:
    return max([m.applied_seq for m in state.members]
               + [obs.my_applied_seq, state.lock.holder_seq])


def _refusal(state: ClusterState, obs: Observation, policy: Policy, m: Member, seq: int,
             last_epoch: int, guarded: bool) -> str | None:
    """Why member ``m`` (at ``seq``, lineage ``last_epoch``) may not take over automatically.

    The one eligibility rule of automatic elections, for every candidate a node judges
    (itself included): ``guarded`` adds the synchronous set's rule.
    """
    lock = state.lock
    if "nofailover" in m.tags:
        return "tagged nofailover"
    if not m.healthy:
        return "unhealthy"
    # Once anything was written, a node without a database must never be promoted; before
    # that (a first primary that gave the lock back) an empty node loses nothing.
    best_known = _best_known(state, obs)
    if lock.epoch > 0 and m.role == "starting" and best_known > 0:
        return "no database yet"
    seen = obs.member_seen_at.get(m.name)
    if m.name != obs.me and (seen is None or obs.now - seen > policy.member_stale_s):
        return "no recent report"
    if guarded and m.name not in state.sync_set:
        return "not in the synchronous set"
    position = position_refusal(state, seq, last_epoch, policy)
    if position is not None:
        return position
    if best_known - seq > policy.maximum_lag_on_failover:
        return f"{best_known - seq} behind, over maximum_lag_on_failover"
    return None


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

    # The node that held the lock is never its own successor: it released it on purpose
    # (switchover), or its lease ran out while it was cut off.
    my_refusal = ("I held the lock" if me == lock.holder else
                  _refusal(state, obs, policy, mine, *position(mine), guarded))
    if my_refusal:
        return Decision(Action.WAIT, f"{me}: {why}; not a candidate ({my_refusal})",
                        epoch=lock.epoch)
    eligible = [(rank(state, *position(m)), m.name) for m in state.members
                if m.name != lock.holder
                and (m.name == me or _refusal(state, obs, policy, m, *position(m),
                                              guarded) is None)]
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
        my_epoch = rank(state, obs.my_applied_seq, obs.my_last_epoch)[0]
        versus = (f"seq {best_seq} vs {obs.my_applied_seq}" if best_epoch == my_epoch else
                  f"seq {best_seq} written in epoch {best_epoch} vs seq {obs.my_applied_seq} "
                  f"in epoch {my_epoch}")
        return Decision(Action.WAIT, f"{me}: {why}; {best} is the better candidate "
                        f"({versus})", target=best, epoch=lock.epoch)
    return _promote(obs, state, why)

"""What one pass of the control loop does: the verdict of ``decide`` turned into ordered effects.

Owns the rules that used to live in the loop beside the decision: a primary that cannot be
fenced (its required watchdog would not arm) gives the lock up; a primary low on disk hands
over (a switchover, nothing acknowledged lost) and one whose store refuses writes gives the
lock up; a replica whose store refused writes reopens it before anything else; a lock that is
ours is renewed on every pass (with or without proven quorum: the commit of the renewal is the
proof), and a primary keeps its synchronous set; anyone else who was primary steps down first;
an Acquire carries its reason and is not proposed again while the last one may still answer
(``Policy.acquire_retry_s``). Also the synchronous set's next value (rule 6). Pure functions;
it must never read a clock, the store or the network, and never order a renewal of a lock that
``decide`` did not judge to be this process's own (rule 3).
"""

from __future__ import annotations

from hacluster.consensus.eligibility import lag_allowance, successors
from hacluster.consensus.model import (
    Action,
    CloseGate,
    Decision,
    Effect,
    Follow,
    HandOver,
    Observation,
    Policy,
    ProposeAcquire,
    ProposeRelease,
    ProposeRenew,
    ProposeSyncSet,
    RecoverDisk,
    StepDown,
)
from hacluster.consensus.state import ClusterState


def acquire_reason(state: ClusterState, me: str) -> str:
    lock, request = state.lock, state.failover_request
    if request is not None and request.candidate == me:
        return "manual failover"
    if lock.held and lock.holder == me:
        return "restart"
    if lock.holder is None:
        return "bootstrap"
    if lock.released and lock.successor == me:
        return "switchover"
    return "failover"


def sync_set_change(state: ClusterState, obs: Observation,
                    policy: Policy) -> frozenset[str] | None:
    """The synchronous set a primary should propose now, or None to leave it.

    A member stays while it is connected and applying. A new member is added only once it
    holds every write so far (and no write is acknowledged from deciding the change until it
    commits), so every member of the committed set holds every acknowledged write — which is
    what lets ``decide`` promote only from that set. A proposal whose outcome is unknown, or
    unanswered for ``sync_set_retry_s``, is settled by proposing again (the committed set if
    nothing else would do).
    """
    settle = False
    if obs.sync_pending:
        if not obs.sync_unknown and obs.now - obs.sync_proposed_at < policy.sync_set_retry_s:
            return None      # the answer is on its way
        settle = True        # an outcome we may never hear: decide it by another proposal
    latest = obs.my_applied_seq
    by_name = {r.name: r for r in obs.replicas if r.connected}

    def stalled(name: str) -> bool:
        # Connected but not applying (its disk is full, say): it holds every write back until
        # the sync timeout, so it is replaced once another replica has it all.
        r = by_name[name]
        return r.applied_seq < latest and (
            r.advanced_at is None or obs.now - r.advanced_at > policy.sync_stall_s)

    keep = {m for m in state.sync_set & by_name.keys() if not stalled(m)}
    need = policy.sync_replicas
    if keep == state.sync_set and len(keep) >= need:
        return state.sync_set if settle else None        # unchanged: most passes end here
    ready = sorted((n for n in by_name.keys() - keep if by_name[n].applied_seq >= latest),
                   key=lambda n: (-by_name[n].applied_seq, n))
    new = frozenset(keep | set(ready[:max(0, need - len(keep))]))
    # Nobody can take over yet: writes wait (and time out) rather than go unguarded, and a
    # stalled member stays until a replacement is ready.
    if len(new) < min(need, len(state.sync_set)) or not new or new == state.sync_set:
        return state.sync_set if settle else None
    return new


def _with(d: Decision, effects: tuple[Effect, ...], action: Action | None = None,
          sentence: str | None = None) -> Decision:
    # Not dataclasses.replace: this runs on every pass, thousands of times a second in the
    # simulator, and replace() costs ten times a plain constructor.
    return Decision(action or d.action, d.sentence if sentence is None else sentence, d.target,
                    d.epoch, d.start_seq, effects)


def release_floor(state: ClusterState, obs: Observation) -> int:
    """What a Release records as acknowledged (rule 2). The process that acquired the epoch
    knows exactly what it acknowledged. A holder back from a restart does not, and may have
    acknowledged any write it holds (acknowledged writes are durable before the answer): it
    records all it holds (the loop syncs it to disk first), or a later, unguarded election
    could go below a write the synchronous standby confirmed before the restart (found by the
    simulator)."""
    if obs.acquired_epoch == state.lock.epoch:
        return obs.acked_seq
    return max(obs.acked_seq, obs.my_applied_seq)


def plan(state: ClusterState, obs: Observation, policy: Policy, d: Decision) -> Decision:
    """``d`` with its effects, and with the sentence and action of a disk-space override."""
    me, lock = obs.me, state.lock
    fx: list[Effect] = []
    holding = lock.held and lock.holder == me
    if holding and obs.fencing_failed:
        return _with(d, (CloseGate(obs.fencing_failed),
                         ProposeRelease(lock.epoch, release_floor(state, obs))),
                     Action.RELEASE, f"{me}: {obs.fencing_failed}; releasing the lock of epoch "
                     f"{lock.epoch}")
    if holding and (obs.disk_full or obs.space_low):
        trouble = obs.disk_full or obs.space_low
        switching = obs.switching
        # Only a serving primary can hand over (a restarted holder has nothing to hand).
        if obs.is_primary and obs.handover_epoch != lock.epoch and not switching and successors(
                state, me, policy, obs.member_seen_at, obs.now):
            fx.append(HandOver(lock.epoch, str(trouble)))
            switching = True
            d = _with(d, (), sentence=f"{me}: {trouble}; handing the primary role over (epoch "
                      f"{lock.epoch})")
        if obs.disk_full and not switching:
            # RocksDB refuses every write until it is reopened: give the lock up. (With no
            # successor while only low, it stays primary and answers 507.)
            return _with(d, (*fx, CloseGate("disk full"),
                             ProposeRelease(lock.epoch, release_floor(state, obs))),
                         Action.RELEASE, f"{me}: {obs.disk_full}; releasing the lock of epoch "
                         f"{lock.epoch}")
    elif obs.disk_full:
        # Nobody follows or promotes with a broken store: reopen it once there is room.
        if obs.is_primary:
            fx.append(StepDown(None, lock.epoch))
        fx.append(RecoverDisk())
    if d.action is Action.RELEASE:
        # A lock in my name that I must not serve (rule 3).
        return _with(d, (*fx, CloseGate("releasing the lock"),
                         ProposeRelease(lock.epoch, release_floor(state, obs))))
    if holding and obs.acquired_epoch == lock.epoch:
        if d.action is Action.DEMOTE:
            fx.append(CloseGate("no quorum and the lease expired"))
        fx.append(ProposeRenew(lock.epoch))
        if obs.is_primary and policy.sync_mode:
            members = sync_set_change(state, obs, policy)
            if members is not None:
                fx.append(ProposeSyncSet(lock.epoch, members))
        return _with(d, tuple(fx))
    if obs.is_primary:
        # The lock is someone else's (or released): stop writing before anything else.
        fx.append(StepDown(lock.holder if lock.held else None, lock.epoch))
    if d.action is Action.FOLLOW and d.target is not None and d.epoch is not None:
        fx.append(Follow(d.target, d.epoch))
    elif d.action is Action.PROMOTE and d.epoch is not None and (
            obs.acquiring_since is None
            or obs.now - obs.acquiring_since > policy.acquire_retry_s):
        request = state.failover_request
        force = bool(request is not None and request.candidate == me and request.force)
        fx.append(ProposeAcquire(d.epoch, acquire_reason(state, me), force,
                                 lag_allowance(policy)))
    return _with(d, tuple(fx))

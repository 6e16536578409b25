"""Who may become primary: the one eligibility rule, for every way a primary is chosen.

Owns ``refusal`` — why a member may not take over, or None — for the four purposes that
choose a primary: an automatic election (``ELECTION``; ``guarded`` in sync mode while the lock
is unreleased), an operator's failover with and without ``--force``, and a switchover's choice
of successor (which then waits for it to catch up, so only its health, freshness and history
count). It also owns the position rules every purpose shares — on the newest epoch history
(rule 1), at the acknowledged floor (rule 2) — and the ranking of candidates. Pure functions of
the replicated state and one node's observations; it must never read a clock or any I/O, and
never let anything but ``force`` bypass the floor (nothing bypasses the history).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from hacluster.consensus.epochs import conflict, writer_epoch
from hacluster.consensus.model import Policy
from hacluster.consensus.state import ClusterState, Member, floor_refusal


class Purpose(Enum):
    ELECTION = "election"                    # automatic, after a lease expired or a release
    FAILOVER = "failover"                    # an operator named the candidate
    FORCED_FAILOVER = "forced failover"      # ... with --force
    SWITCHOVER = "switchover"                # the holder picks its successor


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


def best_known_seq(state: ClusterState, my_seq: int = 0) -> int:
    return max([m.applied_seq for m in state.members] + [my_seq, state.lock.holder_seq])


def _fresh(name: str, seen_at: Mapping[str, float], now: float, policy: Policy) -> bool:
    seen = seen_at.get(name)
    return seen is not None and now - seen <= policy.member_stale_s


def refusal(state: ClusterState, m: Member, purpose: Purpose, policy: Policy, *,
            seen_at: Mapping[str, float], now: float, me: str | None = None,
            seq: int | None = None, last_epoch: int | None = None, guarded: bool = False,
            best_known: int | None = None) -> str | None:
    """Why member ``m`` (at ``seq`` of lineage ``last_epoch``, by default its report's) may
    not become primary for ``purpose``; None when it may.

    ``me``: the judging node, whose own position is current rather than reported (its
    freshness is not in question). ``guarded`` (elections in sync mode while the lock is
    unreleased): only the recorded synchronous set may take over.
    """
    seq = m.applied_seq if seq is None else seq
    last_epoch = m.last_epoch if last_epoch is None else last_epoch
    lock = state.lock
    if purpose is Purpose.ELECTION:
        if "nofailover" in m.tags:
            return "tagged nofailover"
        if not m.healthy:
            return "unhealthy"
        best = best_known_seq(state) if best_known is None else best_known
        # Once anything was written, a node without a database must never be promoted;
        # before that (a first primary that gave the lock back) an empty node loses nothing.
        if lock.epoch > 0 and m.role == "starting" and best > 0:
            return "no database yet"
        if m.name != me and not _fresh(m.name, seen_at, now, policy):
            return "no recent report"
        if guarded and m.name not in state.sync_set:
            return "not in the synchronous set"
        position = position_refusal(state, seq, last_epoch, policy)
        if position is not None:
            return position
        if best - seq > policy.maximum_lag_on_failover:
            return f"{best - seq} behind, over maximum_lag_on_failover"
        return None

    if purpose is Purpose.SWITCHOVER:
        # The successor catches up before the lock is released: only who it is counts.
        if not m.healthy:
            return f"{m.name} is unhealthy"
        if "nofailover" in m.tags:
            return f"{m.name} is tagged nofailover"
        if not _fresh(m.name, seen_at, now, policy):
            return f"{m.name} has not reported recently"
        off = conflict(last_epoch, seq, state.history)
        return None if off is None else f"{m.name} is diverged: {off}"

    # An operator's failover: tags do not hold it back, the floor and history do.
    force = purpose is Purpose.FORCED_FAILOVER
    if m.name == lock.holder and lock.held:
        return f"{m.name} holds the lock of epoch {lock.epoch}"
    if lock.epoch > 0 and m.role == "starting":
        return f"{m.name} has no database yet"
    position = position_refusal(state, seq, last_epoch, policy, force)
    if position is not None:
        return f"{m.name} is {position}"
    if force:
        return None
    if not m.healthy:
        return f"{m.name} is unhealthy"
    if not _fresh(m.name, seen_at, now, policy):
        return f"{m.name} has not reported recently"
    if policy.sync_mode and lock.holder is not None and not lock.released:
        if m.name not in state.sync_set:
            return (f"{m.name} is not in the synchronous set "
                    f"{sorted(state.sync_set) or '(none recorded)'}: it may lack acknowledged "
                    "writes")
        return None
    best = max([x.applied_seq for x in state.members] + [lock.holder_seq])
    if seq < best:
        return (f"{m.name} is at seq {seq}, behind seq {best}: writes acknowledged after "
                "it would be lost")
    return None


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
    m = state.member(candidate)
    if m is None:
        return f"{candidate} has never reported"
    return refusal(state, m, Purpose.FORCED_FAILOVER if force else Purpose.FAILOVER, policy,
                   seen_at=member_seen_at, now=now, seq=candidate_seq,
                   last_epoch=candidate_epoch)


def successors(state: ClusterState, me: str, policy: Policy, seen_at: Mapping[str, float],
               now: float, target: str | None = None) -> list[str]:
    """Who may take the primary role over from ``me`` in a switchover, best first."""
    choices = sorted((m for m in state.members if m.name != me and (
        target is None or m.name == target) and refusal(
            state, m, Purpose.SWITCHOVER, policy, seen_at=seen_at, now=now) is None),
        key=lambda m: (-m.applied_seq, m.name))
    return [m.name for m in choices]

"""When the control loop passes: the renew interval, or sooner when waiting would cost a failover.

Owns the pure rules for the *timing* of passes, never their content (``decide`` judges, the
loop acts): a pass at once when the lock changes hands (``lock_hands``: the Raft thread wakes
the loop), a pass right at the end of another holder's lease as this node sees it
(``next_pass_in``), and, for a new primary in sync mode, a pass as soon as a replica that could
join its synchronous set has connected (``watch_for_standbys``, ``standbys_waiting``: until the
set is recorded it acknowledges nothing). Extra passes only renew, or propose the set, sooner.
No clock is read here.
"""

from __future__ import annotations

from typing import Any

from hacluster.consensus.lease import LeaseTiming, observer_lease_end
from hacluster.consensus.model import ReplicaView
from hacluster.consensus.state import ClusterState, Lock


def lock_hands(state: ClusterState) -> tuple[Any, ...]:
    """Who holds the lock, in which epoch, released to whom, and any failover request: a
    change of any of these makes the control loop's next pass run at once."""
    lock = state.lock
    return (lock.holder, lock.epoch, lock.released, lock.successor, state.failover_request)


def next_pass_in(interval: float, lock: Lock, me: str, lock_seen_at: float | None,
                 now: float, timing: LeaseTiming) -> float:
    """How long the loop sleeps before its next pass: the renew interval, or less when the
    lease of another holder ends sooner as this node sees it, so the pass that may promote
    runs right then rather than up to an interval later. Only when passes run; what a pass
    decides is ``decide``'s, which judges the same expiry (``observer_lease_end``)."""
    if lock.held and lock.holder != me and lock_seen_at is not None:
        left = observer_lease_end(lock_seen_at, timing, lock.lease_s) - now
        if 0 <= left < interval:
            return left + 0.002
    return interval


# How long after the lock changed hands a new primary watches for its first replicas (and how
# often): in sync mode it acknowledges nothing until a synchronous set is recorded, and the
# replicas connect a few tens of milliseconds after it took the lock.
SYNC_WATCH_S = 0.5
SYNC_WATCH_EVERY_S = 0.01


def watch_for_standbys(state: ClusterState, me: str, sync_mode: bool, need: int,
                       hands_changed_at: float | None, now: float) -> bool:
    """Should the loop, between passes, watch for a replica connecting (and pass at once when
    one does)? Only a holder in sync mode whose recorded synchronous set is short, shortly
    after the lock changed hands: the watch proposes nothing, and ends by itself."""
    lock = state.lock
    return (sync_mode and lock.held and lock.holder == me and len(state.sync_set) < need
            and hands_changed_at is not None and now - hands_changed_at < SYNC_WATCH_S)


def standbys_waiting(state: ClusterState, replicas: tuple[ReplicaView, ...],
                     latest_seq: int | None) -> frozenset[str]:
    """The replicas that could join the synchronous set now: streaming from this primary,
    holding all it has (``effects.sync_set_change`` adds no other), and not in the set."""
    return frozenset(r.name for r in replicas if r.connected and r.name not in state.sync_set
                     and latest_seq is not None and r.applied_seq >= latest_seq)

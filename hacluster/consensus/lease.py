"""Lease arithmetic: when a holder must stop writing, and when others may take over.

Owns the two sides of one inequality. The holder measures its lease from the moment it
*proposed* the renewal that Raft later committed (a majority accepted it after that moment) and
shortens it by the drift bound; every other node measures from the moment it *applied* that
renewal (necessarily later) and lengthens it by the drift bound plus a margin. As long as no two
clocks run apart by more than ``drift`` (a rate, e.g. 0.05 = 5 %), the holder's lease ends
before anyone else's view of it does. Clocks are monotonic and never compared across machines.
Pure functions of numbers; no clock is read here. Default timings are the config's.
"""

from __future__ import annotations

from dataclasses import dataclass

from hacluster.config import ConsensusConfig

_DEFAULTS = ConsensusConfig()     # every default timing is the config's (consensus.*)


@dataclass(frozen=True, slots=True)
class LeaseTiming:
    lease_s: float = _DEFAULTS.lease_s     # how long one committed renewal lets the holder write
    renew_interval_s: float = _DEFAULTS.renew_interval_s
    drift: float = _DEFAULTS.drift         # bound on clock rate difference between any two nodes
    margin_s: float = _DEFAULTS.drift_margin_s   # extra wait for the others (scheduling, apply)

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval_s < self.lease_s * (1 - self.drift):
            raise ValueError("renew_interval_s must be shorter than the drift-adjusted lease")
        if not 0 <= self.drift < 0.5 or self.margin_s < 0:
            raise ValueError("drift must be in [0, 0.5) and margin_s >= 0")


def holder_lease_end(proposed_at: float, t: LeaseTiming, lease_s: float | None = None) -> float:
    """Until when the holder may acknowledge writes after a renewal proposed at ``proposed_at``.

    ``lease_s``: the lease recorded in the lock (its Acquire's). The holder takes the shorter
    of it and its own, the mirror of ``observer_lease_end``: a lease lengthened by a dynamic
    change while an epoch runs takes effect at the next epoch, whose Acquire records it, so
    no observer still counting the old length can see the lease end while the holder writes.
    """
    lease = t.lease_s if not lease_s else min(lease_s, t.lease_s)
    return proposed_at + lease * (1 - t.drift)


def observer_lease_end(seen_at: float, t: LeaseTiming, lease_s: float | None = None) -> float:
    """From when another node may treat that lease as expired (it saw the renewal at seen_at).

    ``lease_s``: the holder's lease as recorded in the lock, when it may differ from ours.
    """
    lease = t.lease_s if lease_s is None else max(lease_s, t.lease_s)
    return seen_at + lease * (1 + t.drift) + t.margin_s


def holder_may_write(proposed_at: float | None, now: float, t: LeaseTiming,
                     lease_s: float | None = None) -> bool:
    return proposed_at is not None and now < holder_lease_end(proposed_at, t, lease_s)

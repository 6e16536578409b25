"""The write gate: may this node acknowledge a write right now?

Owns the one answer every write path asks twice (before the local write, and again before the
acknowledgement). In static mode (no consensus) the configured primary's gate is open. With
consensus the gate is open only while this node holds the primary lock *and* the lease from its
last effective renewal lasts (``lease.holder_may_write``), so a primary cut off from the
majority stops acknowledging within its lease, whatever pysyncobj thinks of its leadership. It
must never open on a belief (Raft leadership, an old lock in a stale snapshot): only on a
committed Acquire or Renew that took effect (``Node.become_primary``). It is closed by the
control loop's ``CloseGate`` and ``StepDown`` effects, a switchover, a disk or watchdog failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from hacluster.consensus.lease import LeaseTiming, holder_lease_end

log = logging.getLogger(__name__)


class WriteGate:
    def __init__(self, timing: LeaseTiming | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._timing = timing          # None: static mode, no lease
        # The lease the lock records for the open epoch (its Acquire's): the holder never
        # counts a longer one (``holder_lease_end``), whatever its own timing says now.
        self._lock_lease_s: float | None = None
        self._clock = clock
        self._open = False
        self.epoch: int | None = None
        self.renewal_proposed_at: float | None = None
        self.closed_reason = "not the primary"
        self.closes = 0                # times it closed while open: fencing events

    def set_timing(self, timing: LeaseTiming) -> None:
        """A dynamic change of the lease timings: from the next question on. A longer lease
        is still capped by the lock's until an epoch records it."""
        if self._timing is not None:
            self._timing = timing

    def open(self, epoch: int, proposed_at: float | None = None,
             lock_lease_s: float | None = None) -> None:
        """Open for ``epoch``; with consensus, ``proposed_at`` is the effective Acquire/Renew
        and ``lock_lease_s`` the lease its lock records."""
        self._open = True
        if epoch != self.epoch or lock_lease_s is not None:
            self._lock_lease_s = lock_lease_s
        self.epoch = epoch
        if proposed_at is not None:
            self.extend(proposed_at)
        if self._timing is not None and self.lease_left() <= 0:
            # A renewal proposed long ago that only now committed (quorum came back): the
            # gate is open but the lease it brings is already over, so it still refuses.
            log.debug("write gate: renewal of epoch %d committed too late to give a lease",
                      epoch)
            return
        log.info("write gate open: epoch %d%s", epoch, "" if self._timing is None else
                 f", lease until +{self.lease_left():.2f} s")

    def extend(self, proposed_at: float) -> None:
        """A renewal proposed at ``proposed_at`` took effect: the lease runs from then."""
        if self.renewal_proposed_at is None or proposed_at > self.renewal_proposed_at:
            self.renewal_proposed_at = proposed_at

    def close(self, reason: str) -> None:
        if self._open:
            self.closes += 1
            log.info("write gate closed: %s", reason)
        self._open = False
        self.closed_reason = reason
        self.renewal_proposed_at = None

    def lease_left(self) -> float:
        if self._timing is None or self.renewal_proposed_at is None:
            return 0.0
        return (holder_lease_end(self.renewal_proposed_at, self._timing, self._lock_lease_s)
                - self._clock())

    def refusal(self) -> str | None:
        """None when a write may be acknowledged now; otherwise why not."""
        if not self._open:
            return self.closed_reason
        if self._timing is None:
            return None
        if self.renewal_proposed_at is None:
            return "no lease yet"
        left = self.lease_left()
        if left <= 0:
            return f"lease expired {-left:.3f} s ago (no committed renewal)"
        return None

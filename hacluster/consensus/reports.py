"""When each member's report last changed, as one node sees it: the freshness ``decide`` reads.

Owns the bookkeeping behind ``Observation.member_seen_at`` and ``member_reported_at``: a
member's report counts as seen when its report counter moves, and as fresh only when it moved
while this process ran (the first report seen may be replayed from before a restart or a power
loss, and says nothing about what the member holds now). Shared by the control loop and the
simulator, so both observe alike. Pure state driven by an injected clock; it must never judge
a member (that is ``eligibility``'s) nor read a clock itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hacluster.consensus.state import ClusterState, Member


@dataclass(slots=True)
class ReportTracker:
    counts: dict[str, int] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)    # last change seen, any
    fresh: dict[str, float] = field(default_factory=dict)   # last change while running

    def note(self, state: ClusterState, now: float) -> list[Member]:
        """Record the reports in ``state``; returns the members whose report changed since
        this process first saw one (those are new, not replayed)."""
        changed = []
        for m in state.members:
            previous = self.counts.get(m.name)
            if previous != m.reports:
                self.counts[m.name] = m.reports
                self.seen[m.name] = now
                if previous is not None:
                    self.fresh[m.name] = now
                    changed.append(m)
        return changed

"""Counters the API keeps about its own work, shown in ``/status`` (and ``/metrics``).

Owns ``WatchStats``: watches open now and watches ended, by reason. Plain state with no
imports from the rest of the API, so the node and the API's port can hold it without an
import cycle. It must never decide anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class WatchStats:
    open: int = 0
    ended: dict[str, int] = field(default_factory=dict)    # "slow", or the HTTP status

    def count_end(self, reason: str) -> None:
        self.ended[reason] = self.ended.get(reason, 0) + 1

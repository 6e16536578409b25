"""Replication positions as the primary sees them: each replica's applied seq, lag and link state.

Owns the per-replica records the primary's parts read: the write path (a sync write waits for
the synchronous set's positions), the control loop (``LocalState.replicas``: who is connected
and applying, for the next synchronous set) and ``/status``. Pure state with an injected clock:
no sockets. Which names may have a record is the
caller's decision (the replication source admits cluster members only); this map only bounds
itself: at most ``max_replicas`` records, the least recently heard one without an open stream
giving way to a new name, and ``PositionsFull`` when every one has a stream open. It must never
move a replica's position backwards on a stale or reordered ack (a restarted replica may
legitimately be at a lower position; opening a new stream resets it to what the replica asks
for), and never drop the record of a replica whose stream is open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Far above any real cluster (members are named in the config or admitted to Raft); only a
# bound on memory.
MAX_REPLICAS = 64


class PositionsFull(Exception):
    """Every tracked replica has a stream open: no record can make room for another name."""


@dataclass(slots=True)
class ReplicaPosition:
    name: str
    applied_seq: int = 0
    acked_at: float | None = None     # clock() when the last ack arrived
    advanced_at: float | None = None  # clock() when applied_seq last moved forward
    connected: bool = False
    streams: int = 0                  # open stream responses (normally 0 or 1)
    bootstraps: int = 0


@dataclass
class ReplicaPositions:
    clock: Callable[[], float] = time.monotonic
    replicas: dict[str, ReplicaPosition] = field(default_factory=dict)
    max_replicas: int = MAX_REPLICAS
    _changed: asyncio.Event | None = None

    def _get(self, name: str) -> ReplicaPosition:
        rep = self.replicas.get(name)
        if rep is None:
            if len(self.replicas) >= self.max_replicas:
                self._evict()
            rep = self.replicas[name] = ReplicaPosition(name)
        return rep

    def _evict(self) -> None:
        idle = [r for r in self.replicas.values() if r.streams == 0]
        if not idle:
            raise PositionsFull(f"already tracking {len(self.replicas)} replicas, each with a "
                                "stream open")
        gone = min(idle, key=lambda r: -1.0 if r.acked_at is None else r.acked_at)
        del self.replicas[gone.name]

    def stream_opened(self, name: str, since: int) -> None:
        rep = self._get(name)
        rep.streams += 1
        rep.connected = True
        rep.applied_seq = since
        rep.acked_at = rep.advanced_at = self.clock()

    def stream_closed(self, name: str) -> None:
        rep = self.replicas.get(name)
        if rep is None:
            return
        rep.streams = max(0, rep.streams - 1)
        rep.connected = rep.streams > 0

    def ack(self, name: str, seq: int) -> None:
        rep = self._get(name)
        now = self.clock()
        if seq > rep.applied_seq:
            rep.advanced_at = now
        if seq >= rep.applied_seq:
            rep.applied_seq = seq
        rep.acked_at = now
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def applied(self, name: str) -> int:
        rep = self.replicas.get(name)
        return rep.applied_seq if rep else -1

    def stalled(self, name: str, target_seq: int, for_s: float) -> bool:
        """Behind ``target_seq`` without moving forward for ``for_s`` seconds (a replica that is
        connected but not applying: a full disk, a stuck apply)."""
        rep = self.replicas.get(name)
        if rep is None or rep.applied_seq >= target_seq:
            return False
        return rep.advanced_at is None or self.clock() - rep.advanced_at > for_s

    async def changed(self, timeout: float) -> None:
        """Wait for the next ack (or ``timeout``)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    def bootstrap_started(self, name: str) -> None:
        try:
            self._get(name).bootstraps += 1
        except PositionsFull:
            pass        # only a counter shown in status; the bootstrap itself goes on

    def snapshot(self, primary_seq: int) -> list[dict[str, Any]]:
        now = self.clock()
        return [
            {
                "name": r.name,
                "applied_seq": r.applied_seq,
                "lag": max(0, primary_seq - r.applied_seq),
                "connected": r.connected,
                "last_ack_age": None if r.acked_at is None else round(now - r.acked_at, 3),
                "bootstraps": r.bootstraps,
            }
            for r in sorted(self.replicas.values(), key=lambda r: r.name)
        ]

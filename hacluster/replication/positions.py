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
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

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
    # Tasks in ``changed``: (woken, names they wait for or None for any, seq they wait for).
    _waiters: list[tuple[asyncio.Future[bool], Collection[str] | None, int]] = field(
        default_factory=list, repr=False, compare=False)

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
        self._wake(name, since)

    def stream_closed(self, name: str) -> None:
        rep = self.replicas.get(name)
        if rep is None:
            return
        rep.streams = max(0, rep.streams - 1)
        rep.connected = rep.streams > 0

    def ack(self, name: str, seq: int) -> None:
        rep = self._get(name)
        now = self.clock()
        rep.acked_at = now
        if seq > rep.applied_seq:
            rep.advanced_at = now
            rep.applied_seq = seq
            self._wake(name, seq)

    def _wake(self, name: str, seq: int) -> None:
        """Wake the waiters ``name`` reaching ``seq`` may concern (only a hint: they check
        what they wait for themselves, and wake at their timeout anyway)."""
        if not self._waiters:
            return
        keep = []
        for waiter in self._waiters:
            woken, names, target = waiter
            if woken.done():
                continue
            if (names is None or name in names) and seq >= target:
                woken.set_result(True)
            else:
                keep.append(waiter)
        self._waiters = keep

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

    async def changed(self, timeout: float, names: Collection[str] | None = None,
                      seq: int = 0) -> None:
        """Wait until a replica's position moves forward (or ``timeout`` passes).

        With ``names`` and ``seq``: until one of ``names`` reaches ``seq`` — moves that cannot
        complete what the caller waits for do not wake it (a write waiting for the synchronous
        set is not woken by the other replicas' acks). A wake-up is a hint, never a verdict:
        the caller checks its condition again either way.
        """
        woken: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await wait_listed(self._waiters, (woken, names, seq), woken, timeout)

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


T = TypeVar("T")


def _expire(woken: asyncio.Future[bool]) -> None:
    if not woken.done():
        woken.set_result(False)


async def wait_listed(waiting: list[T], entry: T, woken: asyncio.Future[bool],
                      timeout: float) -> None:
    """Wait until ``woken`` is set True by whoever signals ``waiting`` (and drops ``entry``
    from it), or ``timeout`` passes. A future and a timer: no task per wait, as an Event
    under ``wait_for`` would cost. Timed out or cancelled, ``entry`` is still listed unless
    a signal came meanwhile: it is taken off here."""
    waiting.append(entry)
    timer = asyncio.get_running_loop().call_later(timeout, _expire, woken)
    try:
        await woken
    finally:
        timer.cancel()
        if woken.cancelled() or not woken.result():
            try:
                waiting.remove(entry)
            except ValueError:
                pass

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
for), and never drop the record of a replica whose stream is open. Also ``SeqTimes``, the
bounded record of when seqs were written that turns a lag in seqs into seconds; it must never
cost the write path more than a clock read and two stores.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

# Far above any real cluster (members are named in the config or admitted to Raft); only a
# bound on memory.
MAX_REPLICAS = 64


# SeqTimes: one entry per SEQ_TIME_RESOLUTION_S of writes at most, SEQ_TIME_ENTRIES of them:
# 10 minutes of continuous writing, about 1 MB. A lag beyond that reads as a lower bound.
SEQ_TIME_RESOLUTION_S = 0.05
SEQ_TIME_ENTRIES = 12_000


@dataclass
class SeqTimes:
    """When this node's newest seq reached each value: ``(seq, clock())`` pairs, newest last.

    ``note(seq)`` says "by now the newest seq was ``seq``". Notes closer together than
    ``resolution`` share one entry (the newest of them), so a write costs a clock read and two
    stores, and a new entry is appended at most every ``resolution`` seconds. ``lag_s`` turns
    a replica's applied seq into seconds: how long ago the first seq it lacks was written
    (0 when it lacks none). The figure is low by at most ``resolution`` and, once the seq it
    lacks is older than every entry, it is the age of the oldest entry: a lower bound.
    """

    clock: Callable[[], float] = time.monotonic
    resolution: float = SEQ_TIME_RESOLUTION_S
    entries: int = SEQ_TIME_ENTRIES
    _ring: deque[tuple[int, float]] = field(default_factory=deque, repr=False)
    _seq: int = -1                  # the open entry: newest seq noted, and when
    _at: float = 0.0
    _opened: float = float("-inf")  # when the open entry was started

    def note(self, seq: int) -> None:
        if seq <= self._seq:
            if seq < self._seq:     # a history that went back (a re-bootstrap): start over
                self._ring.clear()
                self._seq, self._opened = -1, float("-inf")
            else:
                return
        now = self.clock()
        if now - self._opened >= self.resolution:
            if self._seq >= 0:
                if len(self._ring) >= self.entries:
                    self._ring.popleft()
                self._ring.append((self._seq, self._at))
            self._opened = now
        self._seq, self._at = seq, now

    def lag_s(self, applied: int, latest: int) -> float | None:
        """Seconds since the first seq above ``applied`` was written; None when no note
        covers it (nothing noted up to ``latest`` yet)."""
        if applied >= latest:
            return 0.0
        if self._seq <= applied:
            return None
        ring = self._ring
        i = bisect.bisect_left(ring, applied + 1, key=lambda e: e[0])
        at = ring[i][1] if i < len(ring) else self._at
        return max(0.0, self.clock() - at)


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
    # When this node (as primary) wrote its seqs: the lag of each replica in seconds.
    written: SeqTimes = field(default_factory=SeqTimes)
    # Tasks in ``changed``: (woken, names they wait for or None for any, seq they wait for).
    _waiters: list[tuple[asyncio.Future[bool], Collection[str] | None, int]] = field(
        default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.written.clock = self.clock

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

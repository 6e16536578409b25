"""The write path's per-request savings keep their guarantees (issue 13, item 4).

- The live feed reads the WAL once per event-loop turn however many writes the turn had, and a
  stream that looks right after a write still sees it; while other writes wait for their acks
  it reads a little later, once for the writes of several turns. A caught-up stream is sent the new
  frames by the read itself without its task waking; never while its task writes or looks,
  never when the link is full (its task is woken instead), never a stream behind.
- A write waiting for the synchronous set is woken by a member reaching its seq, not by other
  replicas' acks; a waiter that timed out or was cancelled is forgotten.
- The free-space check asks the file system at most every ``SPACE_RECHECK_S`` while there is
  room, and on every write once space ran low.
- Group commit's sync thread hands results and errors to the waiting loop, and outlives loops.
- The metrics middleware still records every request's latency by method, route and status.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hacluster.config import StorageConfig
from hacluster.groupsync import GroupSync
from hacluster.node.write_path import SPACE_RECHECK_S, WritePath
from hacluster.node_errors import DiskFull
from hacluster.replication import frames
from hacluster.replication.feed import BUSY_READ_DELAY_S, LiveStream, WalFeed
from hacluster.replication.positions import ReplicaPositions
from hacluster.store import Store
from hacluster.wal.batch import PUT

# -- the live feed ----------------------------------------------------------------------------


def open_store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db", ["default"], StorageConfig(write_buffer_size_mb=1))


def decoded(data: bytes) -> list[frames.BatchFrame]:
    out = frames.FrameDecoder(1 << 20).feed(data)
    return [f for f in out if isinstance(f, frames.BatchFrame)]


async def test_feed_reads_once_per_turn_and_a_look_sees_the_write_at_once(
        tmp_path: Path) -> None:
    store = open_store(tmp_path)
    feed = WalFeed(tmp_path / "db", 1, lambda: 1)
    feed.start()
    reads = 0
    real_read = feed._reader.read

    def counting_read(*args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += 1
        return real_read(*args, **kwargs)

    feed._reader.read = counting_read  # type: ignore[method-assign]
    try:
        changed = asyncio.ensure_future(feed.wait(5))
        await asyncio.sleep(0)
        last = 0
        for i in range(10):                      # ten writes in one turn of the loop
            last = store.write([(PUT, "default", b"k%d" % i, b"v")]).last_seq
            feed.notify()
        assert reads == 0                        # nothing read yet ...
        await asyncio.wait_for(changed, 1)       # ... but the streams are woken
        state = feed.look(1)                     # a look reads what was announced
        assert reads == 1
        batches = decoded(state.data)
        assert len(batches) == 10 and state.next_seq == last + 1
        await asyncio.sleep(0)                   # the scheduled read finds nothing to do
        assert reads == 1

        store.write([(PUT, "default", b"alone", b"v")])
        feed.notify()
        await asyncio.sleep(0)                   # nobody looked: the callback read it
        assert reads == 2 and feed.next_seq == store.latest_seq() + 1
    finally:
        await feed.stop()
        store.close()


async def test_while_other_writes_wait_the_feed_reads_later_and_sends_several_turns_at_once(
        tmp_path: Path) -> None:
    """A write while others wait for their acks is read ``BUSY_READ_DELAY_S`` later, with the
    writes of the turns in between: one chunk to a caught-up replica, not one per turn. A
    lone writer's write is read on the next turn."""
    store = open_store(tmp_path)
    feed = WalFeed(tmp_path / "db", 1, lambda: 1)
    feed.start()
    sent: list[bytes] = []
    live = LiveStream(1, lambda data: sent.append(data) is None)
    feed.subscribe(live)
    try:
        store.write([(PUT, "default", b"lone", b"v")])
        feed.notify(others_waiting=False)
        await asyncio.sleep(0)
        assert len(sent) == 1                    # the next turn

        began = time.monotonic()
        for turn in range(3):                    # a write in each of three turns
            store.write([(PUT, "default", b"k%d" % turn, b"v")])
            feed.notify(others_waiting=True)
            await asyncio.sleep(0)
        assert len(sent) == 1                    # not yet: the others wait anyway
        await asyncio.wait_for(_until(lambda: len(sent) == 2), 1)
        assert time.monotonic() - began >= BUSY_READ_DELAY_S
        assert [f.seq for f in decoded(sent[1])] == [3, 5, 7]     # one chunk, three turns
        assert live.next_seq == feed.next_seq == store.latest_seq() + 1
    finally:
        await feed.stop()
        store.close()


async def _until(condition: Any) -> None:
    while not condition():
        await asyncio.sleep(0.0001)


async def test_feed_sends_a_caught_up_stream_its_frames_without_waking_it(
        tmp_path: Path) -> None:
    store = open_store(tmp_path)
    feed = WalFeed(tmp_path / "db", 1, lambda: 1)
    feed.start()
    sent: list[bytes] = []
    link_full = False

    def send(data: bytes) -> bool:
        if link_full:
            return False
        sent.append(data)
        return True

    live = LiveStream(1, send)
    behind = LiveStream(1, send)             # not at the feed's position: never sent to
    behind.next_seq = 0
    feed.subscribe(live)
    feed.subscribe(behind)
    try:
        waiting = asyncio.ensure_future(feed.wait(5, live))
        await asyncio.sleep(0)
        first = store.write([(PUT, "default", b"a", b"v")]).last_seq
        store.write([(PUT, "default", b"b", b"v")])
        feed.notify()
        await asyncio.sleep(0)               # the feed reads: both batches, in one chunk
        assert len(sent) == 1 and [f.seq for f in decoded(sent[0])] == [1, first + 1]
        assert live.next_seq == store.latest_seq() + 1 == feed.next_seq
        await asyncio.sleep(0.05)
        assert not waiting.done()            # sent what was new: nothing for its task

        # Its task is writing (or looking): nothing is sent around it; it is woken instead.
        live.busy = True
        c = store.write([(PUT, "default", b"c", b"v")]).first_seq
        feed.notify()
        await asyncio.wait_for(waiting, 1)
        assert len(sent) == 1 and live.next_seq == c      # still to be sent, by the task
        live.busy = False

        # A full link refuses: the task is woken to send (and wait for the link) itself.
        state = feed.look(live.next_seq)
        live.next_seq = state.next_seq
        link_full = True
        waiting = asyncio.ensure_future(feed.wait(5, live))
        await asyncio.sleep(0)
        d = store.write([(PUT, "default", b"d", b"v")]).first_seq
        feed.notify()
        await asyncio.wait_for(waiting, 1)
        assert len(sent) == 1 and live.next_seq == d
        assert behind.next_seq == 0
    finally:
        await feed.stop()
        store.close()


async def test_feed_does_not_read_after_it_stopped(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    feed = WalFeed(tmp_path / "db", 1, lambda: 1)
    feed.start()
    try:
        store.write([(PUT, "default", b"k", b"v")])
        feed.notify()
        await feed.stop()                        # the reader is closed before the callback
        await asyncio.sleep(0)
        assert feed.error is None
    finally:
        store.close()


# -- confirm's wake-ups -----------------------------------------------------------------------


async def test_a_waiter_is_woken_by_a_member_reaching_its_seq_only() -> None:
    positions = ReplicaPositions()
    positions.stream_opened("n2", 0)
    positions.stream_opened("n3", 0)
    waiter = asyncio.ensure_future(positions.changed(5, frozenset({"n2"}), 10))
    await asyncio.sleep(0)
    positions.ack("n3", 50)                      # not in the synchronous set
    positions.ack("n2", 9)                       # a member, short of seq 10
    await asyncio.sleep(0)
    assert not waiter.done()
    positions.ack("n2", 10)
    await asyncio.wait_for(waiter, 1)
    assert positions._waiters == []


async def test_any_forward_move_wakes_a_waiter_without_names_but_a_repeat_does_not() -> None:
    positions = ReplicaPositions()
    positions.stream_opened("n2", 5)
    waiter = asyncio.ensure_future(positions.changed(5))
    await asyncio.sleep(0)
    positions.ack("n2", 5)                       # the same position again (a heartbeat)
    await asyncio.sleep(0)
    assert not waiter.done()
    positions.ack("n2", 6)
    await asyncio.wait_for(waiter, 1)


async def test_a_reconnect_ahead_wakes_waiters() -> None:
    positions = ReplicaPositions()
    positions.stream_opened("n2", 0)
    waiter = asyncio.ensure_future(positions.changed(5, frozenset({"n2"}), 7))
    await asyncio.sleep(0)
    positions.stream_closed("n2")
    positions.stream_opened("n2", 8)             # it applied more before reconnecting
    await asyncio.wait_for(waiter, 1)


async def test_timed_out_and_cancelled_waiters_are_forgotten() -> None:
    positions = ReplicaPositions()
    started = time.monotonic()
    await positions.changed(0.02, frozenset({"n2"}), 3)
    assert time.monotonic() - started >= 0.015
    assert positions._waiters == []
    waiter = asyncio.ensure_future(positions.changed(5))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert positions._waiters == []
    positions.ack("n2", 1)                       # nothing left to wake: no error


# -- the free-space check ---------------------------------------------------------------------


class Space:
    def __init__(self) -> None:
        self.looks = 0
        self.low: str | None = None
        self.refuse: str | None = None

    def tend(self, hard_error: str | None = None) -> str | None:
        self.looks += 1
        self.low = hard_error or self.refuse
        return self.low


class Checker(WritePath):
    def __init__(self) -> None:
        self.space = Space()  # type: ignore[assignment]
        self.disk_full = None


def test_space_is_asked_at_most_every_recheck_interval_while_there_is_room() -> None:
    node = Checker()
    space: Space = node.space  # type: ignore[assignment]
    for _ in range(100):
        node.check_space()
    assert space.looks == 1
    time.sleep(SPACE_RECHECK_S * 1.5)
    node.check_space()
    assert space.looks == 2


def test_once_space_runs_low_every_write_looks_again() -> None:
    node = Checker()
    space: Space = node.space  # type: ignore[assignment]
    node.check_space()
    time.sleep(SPACE_RECHECK_S * 1.5)
    space.refuse = "3 MB free, below storage.min_free_mb"
    for _ in range(3):
        with pytest.raises(DiskFull):
            node.check_space()
    assert space.looks == 4
    space.refuse = None
    node.check_space()                           # room again: looked, accepted
    node.check_space()                           # and trusted for a moment
    assert space.looks == 5


def test_a_rocksdb_space_error_makes_every_write_look() -> None:
    node = Checker()
    space: Space = node.space  # type: ignore[assignment]
    node.check_space()
    node.disk_full = "RocksDB ran out of space"  # type: ignore[assignment]
    for _ in range(2):
        with pytest.raises(DiskFull):
            node.check_space()
    assert space.looks == 3


# -- group commit's thread --------------------------------------------------------------------


def test_the_sync_thread_serves_one_loop_after_another() -> None:
    calls: list[int] = []

    async def once(seq: int) -> int:
        group = GroupSync(lambda: seq, lambda: calls.append(seq))
        await group.through(seq)
        return group.synced_seq

    assert asyncio.run(once(3)) == 3
    assert asyncio.run(once(5)) == 5             # a new loop, the same thread
    assert calls == [3, 5]


async def test_a_sync_error_reaches_the_waiter_as_itself() -> None:
    def broken() -> None:
        raise OSError(28, "No space left on device")

    group = GroupSync(lambda: 1, broken)
    with pytest.raises(OSError, match="No space left"):
        await group.through(1)
    assert group.synced_seq == 0


async def test_a_cancelled_waiter_does_not_cancel_the_round_others_wait_for(
        tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        seq = store.write([(PUT, "default", b"k", b"v")]).last_seq
        group = GroupSync(store.latest_seq, store.sync_wal)
        first = asyncio.ensure_future(group.through(seq))
        second = asyncio.ensure_future(group.through(seq))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.wait_for(second, 5)
        assert group.synced_seq >= seq
    finally:
        store.close()


async def test_feed_wait_wakes_on_a_write_and_forgets_timed_out_waiters(
        tmp_path: Path) -> None:
    store = open_store(tmp_path)
    feed = WalFeed(tmp_path / "db", 1, lambda: 1)
    feed.start()
    try:
        await feed.wait(0.01)                    # nothing happens: times out
        await asyncio.gather(feed.wait(0.01), feed.wait(0.01))
        assert feed._waiting == []
        waiter = asyncio.ensure_future(feed.wait(5))
        await asyncio.sleep(0)
        store.write([(PUT, "default", b"k", b"v")])
        feed.notify()
        await asyncio.wait_for(waiter, 1)
        cancelled = asyncio.ensure_future(feed.wait(5))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert feed._waiting == []
    finally:
        await feed.stop()
        store.close()


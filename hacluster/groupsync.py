"""Group commit: one WAL sync makes every write before it durable, however many wait for it.

Owns the durability of acknowledgements under ``storage.durability: fsync``. Writes go to
RocksDB without a sync (into the OS page cache); before a write is acknowledged — to a client
by the primary, or to the primary by a replica — its seq must be covered by a completed
``Store.sync_wal()`` (RocksDB's FlushWAL(sync): every live WAL file and its directory). A sync
covers every seq that was in the DB when it *started*; callers that arrive while one runs wait
for the next, which then covers them all: one sync per round of writers, not one per write.
The sync never runs on the event loop, which keeps taking writes meanwhile. Where the C module
``hacluster._walsync`` is built (the normal install), a native thread per database fsyncs the
WAL files RocksDB wrote and their directory, and reports on an eventfd: no Python thread, so no
GIL hand-off on the loop's thread (each cost several futex calls and a switch per round on a
busy primary). Otherwise, or after a failed native fsync, RocksDB's FlushWAL(sync) runs in one
long-lived Python thread per process that does nothing else. It must never report a seq synced
that was written after its sync began.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hacluster.background import yield_to_event_loop

try:
    from hacluster import _walsync
except ImportError:  # the optional C module was not built: FlushWAL in a Python thread
    _walsync = None

log = logging.getLogger(__name__)

NATIVE = _walsync is not None

_Job = tuple[Callable[[], None], asyncio.AbstractEventLoop, "asyncio.Future[None]"]


class _SyncThread:
    """The process's WAL-sync thread: runs each job, then settles its future on its loop."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], None]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, name="wal-sync",
                                                    daemon=True)
                    self._thread.start()
        self._jobs.put((fn, loop, done))
        return done

    def _serve(self) -> None:
        yield_to_event_loop("wal-sync")
        while True:
            fn, loop, done = self._jobs.get()
            error: BaseException | None = None
            try:
                fn()
            except BaseException as exc:  # handed to the waiter, as to_thread would
                error = exc
            try:
                loop.call_soon_threadsafe(_settle, done, error)
            except RuntimeError:
                pass        # the loop is closed: nobody waits any more


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


_SYNC_THREAD = _SyncThread()


class NativeWalSync:
    """One open database's WAL fsync in a native thread (``hacluster._walsync``): a round is
    started from the event loop and reported on an eventfd the loop watches, with no Python
    thread and so no GIL hand-off on the loop's thread. Made by the ``Store`` that owns the
    directory's handle and closed with it (a checkpoint installed later is a new directory:
    a new syncer). After a failed fsync it reports every later round failed too, and
    ``failed`` says why: callers go back to RocksDB's own FlushWAL, which sees the error too.
    """

    def __init__(self, directory: Path) -> None:
        assert _walsync is not None
        self._c: Any = _walsync.Syncer(str(directory))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: asyncio.Future[None] | None = None
        self._next: asyncio.Future[None] | None = None   # asked for while one ran
        # Called with each ended round's future in the turn the eventfd is seen, before the
        # future's own callbacks (which the loop runs a turn later).
        self.on_round_end: Callable[[asyncio.Future[None]], None] | None = None
        self.failed: str | None = None

    def round(self) -> asyncio.Future[None]:
        """A future that ends once every WAL byte written before this call is on disk.

        One round runs at a time; a call while one runs gets the next round, begun when the
        current one ends (the current one may have started before the caller's write)."""
        if self._running is None:
            loop = asyncio.get_running_loop()
            if self._loop is not loop:
                self._unwatch()
                loop.add_reader(self._c.fileno(), self._finished)
                self._loop = loop
            self._running = loop.create_future()
            self._c.start()
            return self._running
        if self._next is None:
            self._next = self._running.get_loop().create_future()
        return self._next

    def _finished(self) -> None:
        outcome = self._c.finish()
        if outcome is False:
            return          # nothing finished (a spurious wake-up)
        if outcome is not True:
            errno, what = outcome
            if self.failed is None:
                log.error("WAL sync failed (%s: %s); later syncs go through RocksDB",
                          what, os.strerror(errno))
            self.failed = f"{what}: {os.strerror(errno)}"
        done, self._running = self._running, None
        if done is not None and not done.done():
            if self.failed is None:
                done.set_result(None)
            else:
                done.set_exception(OSError(f"WAL sync failed, {self.failed}"))
            if self.on_round_end is not None:
                self.on_round_end(done)
        waiting, self._next = self._next, None
        if waiting is not None and not waiting.done():
            if self.failed is not None:
                waiting.set_exception(OSError(f"WAL sync failed, {self.failed}"))
                return
            self._running = waiting
            self._c.start()

    def _unwatch(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._c.fileno())
        self._loop = None

    def close(self) -> None:
        """Stop the thread (after its round, if one runs) and close its files; a round still
        waited for fails: the database is closing."""
        self._unwatch()
        self._c.close()
        for done in (self._running, self._next):
            if done is not None and not done.done():
                done.set_exception(OSError("the database was closed during a WAL sync"))
        self._running = self._next = None


class GroupSync:
    """Rounds of syncs, each covering every seq written before it started. A caller waits on
    a future of its own, settled by the round that covers it; when a round ends and callers
    still wait, the next one starts then and there: no task per round, no hop through the
    event loop between one round and the next."""

    def __init__(self, latest_seq: Callable[[], int], sync: Callable[[], None],
                 native: Callable[[], NativeWalSync | None] | None = None) -> None:
        self._latest_seq = latest_seq
        self._sync = sync
        # The current database's native syncer, when there is one and it has not failed.
        self._native = native
        self.synced_seq = 0              # every seq up to this one is on disk
        self.syncs = 0
        self._target: int | None = None  # what the running round covers; None: none runs
        self._round: asyncio.Future[None] | None = None   # the running round
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []

    async def through(self, seq: int) -> None:
        """Return once ``seq`` is durable (raises what the sync raised, e.g. an I/O error)."""
        if self.synced_seq >= seq:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((seq, done))
        if self._target is None:
            self._start()
        await done

    def covered(self, seq: int) -> None:
        """Every seq through ``seq`` is on disk already, synced by the caller itself (a replica
        syncs each run it applies under ``storage.durability: fsync``)."""
        self.synced_seq = max(self.synced_seq, seq)

    def _start(self) -> None:
        self._target = self._latest_seq()   # read before the sync starts: it covers this much
        try:
            native = self._native() if self._native is not None else None
            if native is not None and native.failed is None:
                running = native.round()
                # The GroupSync that started the last round hears of its end first (another
                # sharing the store still hears through its future's callback).
                native.on_round_end = self._native_ended
            else:
                running = _SYNC_THREAD.run(self._sync)
        except Exception as exc:
            self._target = None
            self._settle(exc)
            return
        self._round = running
        running.add_done_callback(self._ended)

    def _native_ended(self, running: asyncio.Future[None]) -> None:
        # The native syncer reports in the turn it sees the round end: waiters are woken a
        # turn sooner than through the future's callback (which then finds nothing to do).
        if running is self._round:
            self._ended(running)

    def _ended(self, running: asyncio.Future[None]) -> None:
        if running is not self._round:
            return                      # already handled (_native_ended), or not ours
        self._round = None
        target, self._target = self._target, None
        error = (OSError("the WAL sync was cancelled") if running.cancelled()
                 else running.exception())
        if error is not None or target is None:
            self._settle(error or RuntimeError("a WAL sync round ended without a target"))
            return
        self.syncs += 1
        self.synced_seq = max(self.synced_seq, target)
        self._settle(None)
        if self._waiting:
            self._start()               # written while that round ran: the next one, now

    def _settle(self, error: BaseException | None) -> None:
        """Wake every caller the last round covered; on an error every caller (the next call
        starts a new round)."""
        keep = []
        for seq, done in self._waiting:
            if done.done():
                continue                # its caller gave up (cancelled)
            if error is not None:
                done.set_exception(error)
            elif seq <= self.synced_seq:
                done.set_result(None)
            else:
                keep.append((seq, done))
        self._waiting = keep

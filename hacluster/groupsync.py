"""Group commit: one WAL sync makes every write before it durable, however many wait for it.

Owns the durability of acknowledgements under ``storage.durability: fsync``. Writes go to
RocksDB without a sync (into the OS page cache); before a write is acknowledged — to a client
by the primary, or to the primary by a replica — its seq must be covered by a completed
``Store.sync_wal()`` (RocksDB's FlushWAL(sync): every live WAL file and its directory). A sync
covers every seq that was in the DB when it *started*; callers that arrive while one runs wait
for the next, which then covers them all: one sync per round of writers, not one per write.
The sync runs in a worker thread (RocksDB releases the GIL), so the event loop keeps taking
writes meanwhile: one long-lived thread per process that does nothing else (handing it a sync
is a queue put, where a thread-pool job costs twice the CPU on every round). It must never
report a seq synced that was written after its sync began.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

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


class GroupSync:
    def __init__(self, latest_seq: Callable[[], int], sync: Callable[[], None]) -> None:
        self._latest_seq = latest_seq
        self._sync = sync
        self.synced_seq = 0              # every seq up to this one is on disk
        self.syncs = 0
        self._running: asyncio.Future[None] | None = None

    async def through(self, seq: int) -> None:
        """Return once ``seq`` is durable (raises what the sync raised, e.g. an I/O error)."""
        while self.synced_seq < seq:
            if self._running is None:
                self._running = asyncio.ensure_future(self._one())
            running = self._running
            await asyncio.shield(running)

    def covered(self, seq: int) -> None:
        """Every seq through ``seq`` is on disk already, synced by the caller itself (a replica
        syncs each run it applies under ``storage.durability: fsync``)."""
        self.synced_seq = max(self.synced_seq, seq)

    async def _one(self) -> None:
        target = self._latest_seq()      # read before the sync starts: it covers this much
        try:
            await _SYNC_THREAD.run(self._sync)
            self.syncs += 1
            self.synced_seq = max(self.synced_seq, target)
        finally:
            self._running = None

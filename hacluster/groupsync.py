"""Group commit: one WAL sync makes every write before it durable, however many wait for it.

Owns the durability of acknowledgements under ``storage.durability: fsync``. Writes go to
RocksDB without a sync (into the OS page cache); before a write is acknowledged — to a client
by the primary, or to the primary by a replica — its seq must be covered by a completed
``Store.sync_wal()`` (RocksDB's FlushWAL(sync): every live WAL file and its directory). A sync
covers every seq that was in the DB when it *started*; callers that arrive while one runs wait
for the next, which then covers them all: one sync per round of writers, not one per write.
The sync runs in a worker thread (RocksDB releases the GIL), so the event loop keeps taking
writes meanwhile. It must never report a seq synced that was written after its sync began.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


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

    async def _one(self) -> None:
        target = self._latest_seq()      # read before the sync starts: it covers this much
        try:
            await asyncio.to_thread(self._sync)
            self.syncs += 1
            self.synced_seq = max(self.synced_seq, target)
        finally:
            self._running = None

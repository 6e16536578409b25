"""The primary's live WAL feed: one tail of RocksDB's WAL, decoded once, shared by every stream.

Owns a ring of recently encoded batch frames and the wake-up of streams waiting for new data.
Woken by the write path on every local write (so replicas see a batch one loop turn after it is
written, not after a poll interval; the WAL is read once per turn however many writes it had)
and by a slow safety poll. A stream that is caught up (a ``LiveStream`` at exactly the feed's
position, its task not writing) is sent the new frames by the read itself, in that turn,
without waking its task; any other stream is woken to look. It must never block the event
loop for long (reads are bounded per call), never reorder, repeat or drop a batch on a stream,
and never serve a stream from a position the ring does not hold: such streams catch up from
disk on their own.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hacluster.replication import frames
from hacluster.replication.positions import wait_listed
from hacluster.wal.errors import WalError, WalGone
from hacluster.wal.reader import WalReader

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
READ_BYTES_PER_TURN = 4 << 20
READ_BATCHES_PER_TURN = 1000
# While other writes wait for their acknowledgement, a write's read of the WAL waits this long
# (or until the loop's next turn after it): the writes of several turns then go out in one
# chunk per replica, which wakes it once and applies them as one run. Sending to the replicas
# is the largest cost of a write on the primary; measured with 32 clients: sync PUTs/s
# +8 % at 0.5 ms; 1 ms gained another ~4-7 % once the sync thread stopped preempting the loop
# (1.5 ms no more, 3 ms less). A lone writer is not delayed.
BUSY_READ_DELAY_S = 0.001


@dataclass(eq=False, slots=True)
class LiveStream:
    """A stream the feed writes new frames to itself, in the turn it reads them, while the
    stream is caught up: no wake-up of its task per batch. ``send`` writes a chunk if the
    link takes it now (False: too much unsent, or closing — the stream's task sends it)."""

    next_seq: int
    send: Callable[[bytes], bool]
    last_sent: float = 0.0
    busy: bool = False      # its task is writing: nothing may be sent around it meanwhile


@dataclass(slots=True)
class FeedState:
    """What a stream learns from one look at the feed."""

    data: bytes          # encoded frames to send (may be empty)
    next_seq: int        # the seq the stream needs next after sending ``data``
    behind: bool         # the stream's position is older than the ring: catch up from disk


class WalFeed:
    def __init__(self, db_dir: Path, start_seq: int, epoch: Callable[[], int],
                 ring_bytes: int = 64 << 20, poll_interval: float = POLL_INTERVAL) -> None:
        self._db_dir = db_dir
        # Managed mode polls often: another process writes the WAL and nothing notifies.
        self._poll_interval = poll_interval
        self._epoch = epoch
        self._ring_bytes = ring_bytes
        self._reader = WalReader(db_dir, start_seq, decode_ops=False)
        self._seqs: list[int] = []       # first seq of each frame in the ring
        self._frames: list[bytes] = []
        self._size = 0
        self._start = start_seq          # ring covers [first of _seqs or _start, next_seq)
        # Callers in ``wait``: their future, and the live stream waiting (None: any other).
        self._waiting: list[tuple[asyncio.Future[bool], LiveStream | None]] = []
        self._live: list[LiveStream] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirty = False              # written since the last read: read before a look
        self._stopped = False
        self.error: str | None = None

    @property
    def next_seq(self) -> int:
        return self._reader.next_seq

    @property
    def ring_first(self) -> int:
        return self._seqs[0] if self._seqs else self._reader.next_seq

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="wal-feed")

    async def stop(self) -> None:
        self._stopped = True
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._reader.close()
        self._signal()

    def notify(self, others_waiting: bool = False) -> None:
        """Called by the write path after a local write: new WAL records are on disk.

        Wakes the streams at once; the records are read on the next turn of the event loop —
        or, when ``others_waiting`` (writes before this one still wait for their
        acknowledgement), ``BUSY_READ_DELAY_S`` later — once for every write until then (by
        the first stream that looks, or by a callback scheduled here, whichever runs first),
        not once per write. Only a read that hit its bound leaves the rest to the feed task.
        """
        if self._dirty:
            return
        self._dirty = True
        # Live streams are not woken here: the read sends them what it finds, or wakes them.
        self._signal(wake_live=False)
        if self._loop is None:
            self._catch_up()
        elif others_waiting:
            self._loop.call_later(BUSY_READ_DELAY_S, self._catch_up)
        else:
            self._loop.call_soon(self._catch_up)

    def _catch_up(self) -> None:
        """Read what ``notify`` announced, unless a stream's look already did."""
        if self._dirty and not self._stopped:
            self._dirty = False
            if self.poll():
                self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            self._dirty = False
            while self.poll():
                await asyncio.sleep(0)  # more to read: let writes and streams run in between

    def fail(self, reason: str) -> None:
        """Stop for good: every stream ends with ``reason`` and nothing more is read (the
        first reason stays; the caller logs it)."""
        if self.error is None:
            self.error = reason
        self._signal()

    def poll(self) -> bool:
        """Read what the WAL has now into the ring; return True if the read hit a bound."""
        if self.error:
            return False
        try:
            batches = self._reader.read(max_batches=READ_BATCHES_PER_TURN,
                                        max_bytes=READ_BYTES_PER_TURN)
        except (WalError, WalGone) as exc:
            log.error("WAL feed stopped: %s", exc)
            self.fail(str(exc))
            return False
        if not batches:
            return False
        epoch = self._epoch()
        size = 0
        new: list[bytes] = []
        for b in batches:
            data = frames.encode_batch(epoch, b.seq, b.count, b.payload)
            self._seqs.append(b.seq)
            new.append(data)
            size += len(data)
        self._frames.extend(new)
        self._size += size
        self._trim()
        self._signal(self._push(batches[0].seq, new))
        return size >= READ_BYTES_PER_TURN or len(batches) >= READ_BATCHES_PER_TURN

    def _push(self, first: int, new: list[bytes]) -> list[LiveStream]:
        """Write the frames just read to every live stream that was waiting for exactly them;
        the streams pushed to."""
        pushed: list[LiveStream] = []
        chunk = b""
        for live in self._live:
            if live.next_seq != first or live.busy:
                continue
            chunk = chunk or b"".join(new)
            if live.send(chunk):
                live.next_seq = self._reader.next_seq
                pushed.append(live)
        return pushed

    def subscribe(self, live: LiveStream) -> None:
        self._live.append(live)

    def unsubscribe(self, live: LiveStream) -> None:
        try:
            self._live.remove(live)
        except ValueError:
            pass

    def _trim(self) -> None:
        if self._size <= self._ring_bytes:
            return
        drop, freed = 0, 0
        # Trim to 3/4 of the budget at once so trimming is amortised over many appends.
        while drop < len(self._frames) and self._size - freed > self._ring_bytes * 3 // 4:
            freed += len(self._frames[drop])
            drop += 1
        del self._seqs[:drop]
        del self._frames[:drop]
        self._size -= freed

    def _signal(self, pushed: list[LiveStream] | None = None, wake_live: bool = True) -> None:
        """Wake the callers in ``wait``; live streams only with ``wake_live``, and not those
        just sent what was read (``pushed``): they have nothing to do."""
        keep = []
        for entry in self._waiting:
            woken, live = entry
            if woken.done():
                continue
            if live is None or (wake_live and (pushed is None or live not in pushed)):
                woken.set_result(True)
            else:
                keep.append(entry)
        self._waiting = keep

    def look(self, next_seq: int, max_bytes: int = 1 << 20) -> FeedState:
        """Frames from ``next_seq`` on, as far as the ring holds them (bounded by max_bytes)."""
        if self._dirty:
            self._catch_up()
        if next_seq >= self._reader.next_seq:
            return FeedState(b"", next_seq, behind=False)
        if not self._seqs or next_seq < self._seqs[0]:
            return FeedState(b"", next_seq, behind=True)
        i = bisect.bisect_right(self._seqs, next_seq) - 1
        if self._seqs[i] != next_seq:
            # Inside a batch: only the disk reader can say so precisely (WalNotAtBoundary).
            return FeedState(b"", next_seq, behind=True)
        out: list[bytes] = []
        size = 0
        j = i
        while j < len(self._frames) and size < max_bytes:
            out.append(self._frames[j])
            size += len(self._frames[j])
            j += 1
        nxt = self._seqs[j] if j < len(self._seqs) else self._reader.next_seq
        return FeedState(b"".join(out), nxt, behind=False)

    async def wait(self, timeout: float, live: LiveStream | None = None) -> None:
        """Wait until the ring changes (or ``timeout`` passes); a live stream is not woken
        by a change the feed sent it itself."""
        woken: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await wait_listed(self._waiting, (woken, live), woken, timeout)

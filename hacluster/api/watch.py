"""Watches: ``GET /v1/watch`` streams every acknowledged change under a key prefix.

Owns one client's watch: reading the primary's WAL from the asked seq on (a private reader per
watch; the part older than the live feed's ring is read off the event loop), choosing the
changes under the prefix, one line per client write (a WAL record of a promoted replica holds
a run of the former primary's writes: ``key_seqs.writes_in`` finds each again), holding back what
is not yet acknowledged per the replication mode (``Node.acknowledged_through``), the progress
lines, and cutting a watcher that stops reading.
It must never deliver a change above ``acknowledged_through`` (in sync mode a failover could
take it back), never deliver a write twice, out of order or under another write's seq within
one stream, never hold more than one bounded read per watcher, and never make a write wait for
a watcher.

Query: ``prefix`` (or ``prefix_b64``), ``cf`` (default ``default``), ``since_seq`` (the first
seq wanted; default: the next change), ``epoch`` (optional: the epoch of the last line the
client saw, so a resume on another primary is checked against its history), ``progress_ms``
(100 to 60000, default 1000: the longest silence before a progress line).

The answer is a stream of lines, JSON (``application/x-ndjson``, keys and values as text or
``key_b64``/``value_b64``) or with ``Accept: application/cbor`` a sequence of CBOR maps (bytes
as bytes): ``{"seq", "epoch", "events": [{"type": "put", "key", "value"} | {"type": "delete",
"key"} | {"type": "delete_range", "start", "end"}]}`` for each write (``seq`` is the write's
last seq, the seq a read or compare-and-set sees for its keys); ``{"progress": S, "epoch"}``
after ``progress_ms`` without a change (everything up to S is delivered: resume from S +
1); a last ``{"error", "status"}`` before the server ends the stream (410: ``since_seq`` is no
longer in the WAL, re-read and resume; 409: the history differs; 503: this node stopped being
the primary).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cbor2
from aiohttp import web

from hacluster.api.common import error, to_primary
from hacluster.api.counters import WatchStats
from hacluster.key_seqs import writes_in
from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT, SINGLE_DELETE, Op, WalBatch
from hacluster.wal.errors import WalError, WalGone, WalNotAtBoundary
from hacluster.wal.reader import WalReader
from hacluster.writes import CBOR_TYPE, BadRequest, check_cf, parse_seq

if TYPE_CHECKING:
    from hacluster.api.port import ServedNode

log = logging.getLogger(__name__)

NDJSON_TYPE = "application/x-ndjson"
# One read of the WAL per turn: what a watcher holds at most, with the socket's buffer.
READ_BYTES = 1 << 20
READ_BATCHES = 1000
PROGRESS_INTERVAL_S = 1.0


class WatchEnded(Exception):
    """The stream ends with this line (an error the client can act on)."""

    def __init__(self, status: int, message: str, **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


def _prefix_of(query: Mapping[str, str]) -> bytes:
    if "prefix_b64" in query:
        try:
            return base64.b64decode(query["prefix_b64"], validate=True)
        except ValueError:
            raise BadRequest("prefix_b64: not valid base64") from None
    return query.get("prefix", "").encode("utf-8")


def select(ops: Sequence[Op], cf_id: int, prefix: bytes) -> list[tuple[int, bytes, bytes]]:
    """The ops in column family ``cf_id`` that touch keys under ``prefix``.

    A range delete is kept when its range meets the prefix's range.
    """
    out = []
    for kind, cf, key, value in ops:
        if cf != cf_id:
            continue
        if kind == DELETE_RANGE:
            if _range_meets_prefix(key, value, prefix):
                out.append((kind, key, value))
        elif key.startswith(prefix):
            out.append((DELETE if kind == SINGLE_DELETE else kind, key, value))
    return out


def _range_meets_prefix(start: bytes, end: bytes, prefix: bytes) -> bool:
    """Whether [start, end) shares a key with the keys under ``prefix``."""
    upper = prefix.rstrip(b"\xff")
    # Keys under the prefix are [prefix, upper with its last byte + 1); no upper: unbounded.
    above = upper[:-1] + bytes([upper[-1] + 1]) if upper else None
    return end > prefix and (above is None or start < above)


def _event(kind: int, key: bytes, value: bytes, binary: bool) -> dict[str, Any]:
    if kind == DELETE_RANGE:
        return {"type": "delete_range", **_field("start", key, binary),
                **_field("end", value, binary)}
    if kind == PUT:
        return {"type": "put", **_field("key", key, binary), **_field("value", value, binary)}
    return {"type": "delete", **_field("key", key, binary)}


def _field(name: str, data: bytes, binary: bool) -> dict[str, Any]:
    if binary:
        return {name: data}
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_b64": base64.b64encode(data).decode()}


class Watch:
    """One client's watch stream; ``run`` serves it until the client or the node ends it."""

    def __init__(self, node: ServedNode, stats: WatchStats, db_dir: Path, cf: str,
                 prefix: bytes, next_seq: int, binary: bool,
                 progress_s: float = PROGRESS_INTERVAL_S) -> None:
        self.progress_s = progress_s
        # A watcher whose socket takes no line for this long is cut: it stopped reading.
        self.send_timeout_s = node.cfg.limits.watch_send_timeout_s
        self.node = node
        self.db_dir = db_dir
        self.stats = stats
        self.cf = cf
        self.prefix = prefix
        self.next_seq = next_seq          # the first seq not yet delivered or skipped
        self.binary = binary
        self.reader: WalReader | None = None
        self.pending: list[WalBatch] = []
        self.delivered = 0

    def encode(self, doc: dict[str, Any]) -> bytes:
        if self.binary:
            return bytes(cbor2.dumps(doc))
        return (json.dumps(doc, separators=(",", ":")) + "\n").encode()

    async def send(self, resp: web.StreamResponse, *docs: dict[str, Any]) -> None:
        """Write ``docs`` as one chunk. Every line ready now goes in one write: a write per
        line would wait a turn of the event loop each, behind every request being served."""
        try:
            # A timeout scope, not wait_for: no task per write; it only fires while the
            # socket's buffer is full and the write waits for the client to read.
            async with asyncio.timeout(self.send_timeout_s):
                await resp.write(b"".join(self.encode(doc) for doc in docs))
        except TimeoutError:
            raise WatchEnded(0, f"the client took no data for {self.send_timeout_s:g} s "
                                "(it stopped reading)", reason="slow") from None

    def _reader_at(self, seq: int) -> WalReader:
        if self.reader is None:
            self.reader = WalReader(self.db_dir, seq, decode_ops=True)
        return self.reader

    def _read(self) -> list[WalBatch]:
        """Read on from ``next_seq`` (a batch boundary or inside one: the batch is re-read
        whole and what came before ``next_seq`` skipped)."""
        reader = self._reader_at(self.next_seq)
        try:
            return reader.read(max_batches=READ_BATCHES, max_bytes=READ_BYTES)
        except WalNotAtBoundary as exc:
            reader.close()
            self.reader = WalReader(self.db_dir, exc.batch_first,
                                    decode_ops=True)
            return self.reader.read(max_batches=READ_BATCHES, max_bytes=READ_BYTES)

    async def fill(self) -> int:
        """Read on into ``pending`` when it is empty; how many batches were read."""
        if self.pending:
            return 0
        source = self.node.source
        live = source is not None and self.next_seq >= source.feed.ring_first
        try:
            batches = self._read() if live else await asyncio.to_thread(self._read)
        except WalGone as exc:
            raise WatchEnded(410, f"seq {self.next_seq} is no longer in the primary's WAL: "
                             f"{exc}; read the current values and watch from the seq they "
                             "show", oldest_seq=exc.oldest_seq) from None
        except WalError as exc:
            raise WatchEnded(500, f"the WAL cannot be read at seq {self.next_seq}: {exc}") \
                from None
        self.pending = [b for b in batches if b.last_seq >= self.next_seq]
        if batches and not self.pending:
            self.next_seq = max(self.next_seq, batches[-1].last_seq + 1)
        return len(batches)

    def refusal(self) -> str | None:
        node = self.node
        if not node.is_primary:
            return f"{node.name} is no longer the primary"
        why = node.gate.refusal()
        return None if why is None else f"{node.name} cannot confirm changes now: {why}"

    async def run(self, resp: web.StreamResponse) -> None:
        node = self.node
        store = node.store
        if store is None:
            raise WatchEnded(503, "no database open")
        names = store.column_families
        cf_id = names.index(self.cf)
        seq_cf = store.seq_cf_id
        last_line = time.monotonic()
        while True:
            why = self.refusal()
            if why is not None:
                raise WatchEnded(503, why, leader=node.leader())
            read = await self.fill()
            top = node.acknowledged_through()
            ready = 0
            while ready < len(self.pending) and self.pending[ready].last_seq <= top:
                ready += 1
            if ready:
                batches, self.pending = self.pending[:ready], self.pending[ready:]
                lines = []
                for b in batches:
                    for w in writes_in(b, seq_cf):
                        if w.last_seq < self.next_seq:
                            continue        # delivered before: resumed inside this record
                        events = select(w.ops, cf_id, self.prefix)
                        if events:
                            lines.append({"seq": w.last_seq, "epoch": node.role.epoch,
                                          "events": [_event(k, key, v, self.binary)
                                                     for k, key, v in events]})
                if lines:
                    await self.send(resp, *lines)
                    self.delivered += len(lines)
                    last_line = time.monotonic()
                self.next_seq = batches[-1].last_seq + 1
                continue
            idle = time.monotonic() - last_line
            if idle >= self.progress_s:
                await self.send(resp, {"progress": self.next_seq - 1,
                                       "epoch": node.role.epoch})
                last_line = time.monotonic()
                continue
            wait = self.progress_s - idle
            if self.pending:
                # Written, not yet acknowledgeable: durable here first, then the replicas.
                first = self.pending[0].last_seq
                await node.make_durable(first)
                if node.acknowledged_through() < first:
                    await node.positions.changed(min(wait, 0.05))
            elif node.source is not None:
                if read and node.source.feed.next_seq > self.next_seq:
                    continue        # more was written while this watch read
                await node.source.feed.wait(wait)
            else:
                await asyncio.sleep(min(wait, 0.05))

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


def add_routes(app: web.Application, node: ServedNode, stats: WatchStats) -> None:

    async def watch(request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            cf = check_cf(q.get("cf", "default"), node.column_families, "cf")
            prefix = _prefix_of(q)
            since = None if "since_seq" not in q else parse_seq(q["since_seq"], "since_seq")
            label = None if "epoch" not in q else parse_seq(q["epoch"], "epoch")
            progress_ms = parse_seq(q.get("progress_ms", "1000"), "progress_ms")
            if not 100 <= progress_ms <= 60_000:
                raise BadRequest("progress_ms: must be from 100 to 60000")
        except BadRequest as exc:
            return error(400, str(exc))
        if not node.is_primary:
            return to_primary(node, request)
        store = node.store
        if store is None:
            return error(503, "no database open")
        if stats.open >= node.cfg.limits.max_watches:
            return error(503, f"{stats.open} watches are open on {node.name}, the most it "
                              "serves (limits.max_watches); retry later")
        latest = store.latest_seq()
        if since is None:
            since = node.acknowledged_through() + 1
        elif since == 0:
            return error(400, "since_seq: sequence numbers start at 1")
        elif since > latest + 1:
            return error(400, f"since_seq {since} is in the future: this primary is at seq "
                              f"{latest}", seq=latest)
        if (label is not None and since > 1
                and node.history_refusal(label, since - 1) is not None):
            return error(409, f"the history differs from the one watched: this primary's "
                              f"seqs up to {since - 1} are not those of epoch {label} "
                              "(a former primary's writes were not kept); read the current "
                              "values and watch again", seq=latest)
        binary = CBOR_TYPE in request.headers.get("Accept", "")
        w = Watch(node, stats, store.db_dir, cf, prefix, since, binary, progress_ms / 1000)
        # The position the watch starts at, so a client that gave none can resume there
        # even if the stream breaks before its first line.
        resp = web.StreamResponse(headers={"Content-Type": CBOR_TYPE if binary
                                           else NDJSON_TYPE, "Cache-Control": "no-store",
                                           "X-Hacluster-Since-Seq": str(since)})
        try:
            await w.fill()          # a position the WAL no longer holds is a plain 410
        except WatchEnded as exc:
            w.close()
            return error(exc.status, str(exc), **exc.extra)
        stats.open += 1
        who = request.remote
        log.info("watch from %s opened: cf %s, prefix %r, from seq %d", who, cf, prefix[:64],
                 since)
        try:
            await resp.prepare(request)
            await w.run(resp)
        except WatchEnded as exc:
            if exc.status == 0:
                stats.count_end("slow")
                log.warning("watch from %s cut at seq %d: %s", who, w.next_seq, exc)
                if request.transport is not None:
                    request.transport.abort()
            else:
                stats.count_end(str(exc.status))
                log.info("watch from %s ended at seq %d: %s", who, w.next_seq, exc)
                try:
                    async with asyncio.timeout(1.0):
                        await resp.write(w.encode(
                            {"error": str(exc), "status": exc.status, **exc.extra}))
                except (TimeoutError, ConnectionError):
                    pass
        except ConnectionError:
            log.info("watch from %s closed by the client at seq %d", who, w.next_seq)
        except asyncio.CancelledError:
            log.info("watch from %s closed at seq %d", who, w.next_seq)
            raise
        finally:
            stats.open -= 1
            w.close()
        return resp

    app.router.add_get("/v1/watch", watch)

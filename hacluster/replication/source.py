"""The primary's side of replication: the stream endpoint and the position acks.

Owns ``GET /v1/replication/stream`` (a long-lived response of CBOR frames after a replica's
position), ``GET /v1/replication/acks`` (a WebSocket on which a replica reports what it has
applied, one text message per ack) and ``POST /v1/replication/ack`` (the same report as one
request each, kept for replicas of older versions during a rolling upgrade). Serves from
the shared live feed and, for replicas older than the feed's ring, from a private WAL reader run
off the event loop. It must never send a batch out of order, never send anything after an
error frame, and never answer 200 to a position it cannot serve: 410 when the WAL no longer holds
it (the replica bootstraps), 409 when the replica claims more than the primary has. Only cluster
members (``is_member``) stream or ack: any other name is refused with 403 before it is recorded,
and an ack channel whose name stops being a member is closed before it records another ack.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.web_protocol import RequestPayloadError

from hacluster.replication import frames
from hacluster.replication.feed import LiveStream, WalFeed
from hacluster.replication.positions import PositionsFull, ReplicaPositions
from hacluster.security.access import PRINCIPAL
from hacluster.wal.errors import WalError, WalGone
from hacluster.wal.reader import WalReader

log = logging.getLogger(__name__)

CATCHUP_BYTES = 4 << 20
SEND_BYTES = 1 << 20
# An ack message is a decimal seq: 20 digits hold any int64. Anything longer is refused.
ACK_MESSAGE_MAX = 20


def _never(data: bytes) -> bool:
    return False


def _chunk_sender(live: LiveStream, transport: asyncio.Transport,
                  loop: asyncio.AbstractEventLoop) -> Callable[[bytes], bool]:
    """What the feed calls to send a caught-up stream the frames it just read, in that turn:
    one HTTP/1.1 chunk written to the connection — unless much is unsent already or the
    connection is closing, when the stream's task sends them (waiting for the link)."""

    def send(data: bytes) -> bool:
        if transport.is_closing() or transport.get_write_buffer_size() > SEND_BYTES:
            return False
        transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        live.last_sent = loop.time()
        return True

    return send


async def _write(resp: web.StreamResponse, live: LiveStream, data: bytes) -> None:
    """The stream's own write: the feed sends nothing to it until this one is out."""
    live.busy = True
    try:
        await resp.write(data)
    finally:
        live.busy = False


class ReplicationSource:
    def __init__(self, *, node_name: str, db_dir: Path, feed: WalFeed,
                 positions: ReplicaPositions, latest_seq: Callable[[], int],
                 column_families: Callable[[], list[str]], epoch: Callable[[], int],
                 heartbeat_interval: float,
                 is_member: Callable[[str], bool] | None = None,
                 history_refusal: Callable[[int, int], str | None] | None = None) -> None:
        self.node_name = node_name
        self.is_member = is_member
        # Rule 1: (replica's lineage label, its position) -> why our histories differ there.
        self.history_refusal = history_refusal
        self.db_dir = db_dir
        self.feed = feed
        self.positions = positions
        self.latest_seq = latest_seq
        self.column_families = column_families
        self.epoch = epoch
        self.heartbeat_interval = heartbeat_interval
        self.closing = asyncio.Event()

    def _params(self, request: web.Request) -> tuple[str, int]:
        replica = request.query.get("node", "")
        try:
            since = int(request.query.get("since", ""))
        except ValueError:
            raise web.HTTPBadRequest(
                text='{"error": "since must be an integer sequence number"}',
                content_type="application/json") from None
        if not replica or since < 0:
            raise web.HTTPBadRequest(text='{"error": "node and since >= 0 are required"}',
                                     content_type="application/json")
        return replica, since

    def _refuse_stranger(self, replica: str, request: web.Request) -> web.Response | None:
        """403 for a name that is not a cluster member: positions are kept per name, and a
        client must not grow that map (or show up as a lagging replica) with made-up names.
        With mutual TLS, 403 as well for a member whose certificate names another node."""
        shown = replica if len(replica) <= 64 else replica[:64] + "..."
        principal = request.get(PRINCIPAL)
        proven = principal.node if principal is not None else None
        if proven is not None and proven != replica:
            log.warning("replication request for %r refused: the certificate is %s's",
                        shown, proven)
            return web.json_response(
                {"error": f"the client certificate is {proven}'s, but the request claims to "
                 f"be replica {shown!r}"}, status=403)
        if self.is_member is None or self.is_member(replica):
            return None
        log.warning("replication request from %r refused: not a cluster member", shown)
        return web.json_response(
            {"error": "not a member", "reason": f"node {shown!r} is not a member of this "
             "cluster (neither in the config's nodes nor a Raft member)"}, status=403)

    async def handle_stream(self, request: web.Request) -> web.StreamResponse:
        replica, since = self._params(request)
        refusal = self._refuse_stranger(replica, request)
        if refusal is not None:
            return refusal
        latest = self.latest_seq()
        if since > latest:
            log.warning("%s asked for changes after seq %d but this primary is at %d",
                        replica, since, latest)
            return web.json_response(
                {"error": "ahead", "reason": f"replica position {since} is ahead of the "
                 f"primary's {latest}: its history has diverged", "primary_seq": latest},
                status=409)
        label = request.query.get("epoch")
        if label is not None and self.history_refusal is not None:
            if not (label.isascii() and label.isdigit() and len(label) <= 18):
                return web.json_response({"error": "epoch must be a non-negative integer"},
                                         status=400)
            differs = self.history_refusal(int(label), since)
            if differs is not None:
                log.warning("%s asked for changes after seq %d of epoch %s, which this "
                            "primary's history does not hold: %s", replica, since, label,
                            differs)
                return web.json_response(
                    {"error": "diverged", "reason": differs, "primary_seq": latest},
                    status=409)
        next_seq = since + 1
        private: WalReader | None = None
        first_chunk = b""
        if self.feed.look(next_seq).behind:
            # A replica on this primary's history is at the end of one of its writes. If a
            # record here straddles that position, this node wrote it as a replica (a run of
            # the former primary's writes applied as one): the stream starts with its rest.
            # Unchecked (no epoch, or no consensus history), a straddled position may be
            # another history's: 410 and a bootstrap, never half a write.
            private = WalReader(self.db_dir, next_seq, decode_ops=False,
                                cut_at_start=label is not None
                                and self.history_refusal is not None)
            try:
                first_chunk, next_seq = await asyncio.to_thread(
                    self._read_private, private, next_seq)
                if not first_chunk:
                    # The DB has these seqs, so its WAL had them once: no log with data left
                    # (e.g. only a fresh empty log after a restart) means they are gone.
                    raise WalGone(f"no retained log holds seq {next_seq}")
            except WalGone as exc:
                private.close()
                log.info("%s asked for seq %d, no longer retained (%s): bootstrap needed",
                         replica, since + 1, exc)
                return web.json_response(
                    {"error": "gone", "reason": f"seq {since + 1} is no longer in the "
                     f"primary's WAL: {exc}", "primary_seq": latest}, status=410)
            except WalError as exc:
                private.close()
                log.error("cannot serve %s from seq %d: %s", replica, since + 1, exc)
                return web.json_response({"error": "wal", "reason": str(exc)}, status=500)

        try:
            self.positions.stream_opened(replica, since)
        except PositionsFull as exc:
            if private:
                private.close()
            return web.json_response({"error": "busy", "reason": str(exc)}, status=503)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-hacluster-frames"})
        log.info("%s streaming from seq %d (primary at %d, %s)", replica, since + 1, latest,
                 "catching up from disk" if private else "live")
        try:
            await resp.prepare(request)
            await resp.write(frames.encode_hello(frames.Hello(
                self.epoch(), self.node_name, latest, tuple(self.column_families()))))
            if first_chunk:
                await resp.write(first_chunk)
            # The headers are out (with the first chunk): from here the feed may write chunks
            # to the connection itself, when the response is chunked (HTTP/1.1).
            chunked = resp.headers.get("Transfer-Encoding", "").lower() == "chunked"
            transport = request.transport
            await self._pump(resp, replica, next_seq, private,
                             transport if chunked and isinstance(transport, asyncio.Transport)
                             else None)
        except (ConnectionResetError, asyncio.CancelledError):
            log.info("%s stream closed", replica)
        finally:
            if private:
                private.close()
            self.positions.stream_closed(replica)
        return resp

    def _read_private(self, reader: WalReader, next_seq: int) -> tuple[bytes, int]:
        """Runs in a worker thread: read and encode a bounded chunk of old WAL."""
        epoch = self.epoch()
        out: list[bytes] = []
        for b in reader.read(max_bytes=CATCHUP_BYTES):
            out.append(frames.encode_batch(epoch, b.seq, b.count, b.payload))
            next_seq = b.last_seq + 1
        return b"".join(out), next_seq

    async def _pump(self, resp: web.StreamResponse, replica: str, next_seq: int,
                    private: WalReader | None, transport: asyncio.Transport | None) -> None:
        loop = asyncio.get_running_loop()
        live = LiveStream(next_seq, _never, loop.time())
        if transport is not None:
            live.send = _chunk_sender(live, transport, loop)
        self.feed.subscribe(live)
        try:
            await self._pump_live(resp, replica, live, private, loop)
        finally:
            self.feed.unsubscribe(live)

    async def _pump_live(self, resp: web.StreamResponse, replica: str, live: LiveStream,
                         private: WalReader | None, loop: asyncio.AbstractEventLoop) -> None:
        while not self.closing.is_set():
            if self.feed.error:
                await _write(resp, live, frames.encode_error(
                    f"primary WAL feed stopped: {self.feed.error}"))
                return
            next_seq = live.next_seq
            # A look may read the WAL (and so push): not to this stream, whose look returns
            # what was read.
            live.busy = True
            try:
                state = self.feed.look(next_seq, SEND_BYTES)
            finally:
                live.busy = False
            data = state.data
            if state.behind:
                if private is None:
                    private = WalReader(self.db_dir, next_seq, decode_ops=False)
                try:
                    data, state.next_seq = await asyncio.to_thread(
                        self._read_private, private, next_seq)
                    if not data and next_seq < self.feed.ring_first:
                        raise WalGone(f"no retained log holds seq {next_seq}")
                except (WalError, WalGone) as exc:
                    log.error("stream to %s stopped: %s", replica, exc)
                    await _write(resp, live, frames.encode_error(str(exc)))
                    return
            elif private is not None:
                private.close()
                private = None
            if data:
                live.next_seq = state.next_seq
                live.last_sent = loop.time()
                await _write(resp, live, data)
                continue
            if state.behind:
                # The ring moved on while we read; the next turn reads on from disk.
                await asyncio.sleep(0.01)
                continue
            wait = self.heartbeat_interval - (loop.time() - live.last_sent)
            if wait <= 0:
                await _write(resp, live, frames.encode_heartbeat(self.epoch(),
                                                                 self.latest_seq()))
                live.last_sent = loop.time()
                continue
            await self.feed.wait(wait, live)

    async def handle_ack(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            replica = str(body["node"])
            seq = int(body["seq"])
        except (ValueError, KeyError, TypeError, RecursionError, OverflowError,
                RequestPayloadError):
            return web.json_response({"error": "body must be JSON {node, seq}"}, status=400)
        refusal = self._refuse_stranger(replica, request)
        if refusal is not None:
            return refusal
        try:
            self.positions.ack(replica, seq)
        except PositionsFull as exc:
            return web.json_response({"error": "busy", "reason": str(exc)}, status=503)
        return web.json_response({"ok": True, "primary_seq": self.latest_seq()})

    async def handle_acks(self, request: web.Request) -> web.StreamResponse:
        """The ack channel: a WebSocket carrying one text message per ack, the replica's
        applied seq in decimal. Nothing is answered per message (the POST's ``primary_seq``
        was never used); a message that is not a seq closes the channel (1003), as does the
        name ceasing to be a member (1008) or a full table of positions (1013), and the
        primary stepping down (1001). One frame per ack instead of one HTTP request: no
        request parsing, middlewares or response per ack on either side."""
        replica = request.query.get("node", "")
        if not replica:
            return web.json_response({"error": "node is required"}, status=400)
        refusal = self._refuse_stranger(replica, request)
        if refusal is not None:
            return refusal
        ws = web.WebSocketResponse(max_msg_size=1024)
        await ws.prepare(request)
        # The primary stepping down ends the channel; the replica reconnects to whoever leads.
        closer = asyncio.ensure_future(self._close_when_closing(ws))
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"text seq only")
                    break
                data = msg.data
                if not (len(data) <= ACK_MESSAGE_MAX and data.isascii() and data.isdigit()):
                    await ws.close(code=WSCloseCode.UNSUPPORTED_DATA,
                                   message=b"an ack is a decimal seq")
                    break
                if self.closing.is_set():
                    break
                # As strict as one POST per ack: membership is checked for every one.
                if self.is_member is not None and not self.is_member(replica):
                    log.warning("ack channel of %r closed: no longer a cluster member",
                                replica[:64])
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"not a member")
                    break
                try:
                    self.positions.ack(replica, int(data))
                except PositionsFull:
                    await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"busy")
                    break
        finally:
            closer.cancel()
            if not ws.closed:
                await ws.close(code=WSCloseCode.GOING_AWAY)
        return ws

    async def _close_when_closing(self, ws: web.WebSocketResponse) -> None:
        await self.closing.wait()
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"not the primary any more")

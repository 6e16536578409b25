"""The replica's acknowledgements: its newest applied (and, with fsync, durable) seq, sent to
the primary.

Owns ``AckSender``: one in flight, coalesced (only the newest seq goes), over the ack channel
(a WebSocket) or, to a primary without one, one POST per ack. It must never send a seq that is
not applied here — nor, under ``storage.durability: fsync``, not yet on disk.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import aiohttp

from hacluster.config import ReplicationConfig
from hacluster.groupsync import GroupSync

log = logging.getLogger(__name__)

# After a failed ack (or a dropped ack channel): the pause before trying again.
ACK_RETRY_S = 0.2


class AckSource(Protocol):
    """What the sender needs of its follower."""

    node: str
    primary_url: str
    headers: dict[str, str]
    cfg: ReplicationConfig
    durable: bool
    wal_sync: GroupSync


class AckSender:
    """Sends the newest applied seq to the primary; coalesces, only the newest seq is sent.

    Over the ack channel (``GET /v1/replication/acks``, a WebSocket: one text frame per ack, no
    answer awaited) while the primary has one; a primary of an older version answers 404 or
    405 there, and then every ack is a ``POST /v1/replication/ack`` (one in flight) for the
    life of this sender, which is the life of following that primary. A channel that drops is
    opened again after ACK_RETRY_S and sends the newest seq at once: a frame lost with the
    connection is made good by the next one, since a position only moves forward.
    """

    def __init__(self, follower: AckSource) -> None:
        self.f = follower
        self.seq = -1
        self.sent = -1
        self.event = asyncio.Event()
        self.channel: aiohttp.ClientWebSocketResponse | None = None
        self._watcher: asyncio.Future[None] | None = None
        self.channel_opens = 0
        self.legacy = False           # the primary has no ack channel: POST each ack

    def update(self, seq: int) -> None:
        self.seq = seq
        self.event.set()

    async def run(self, session: aiohttp.ClientSession) -> None:
        try:
            while True:
                await self.event.wait()
                self.event.clear()
                if self.f.cfg.ack_interval:
                    await asyncio.sleep(self.f.cfg.ack_interval)
                seq = self.seq
                if seq == self.sent and self._open():
                    continue
                if self.f.durable:
                    # An acknowledgement counts toward a client's (rule 5): on disk first.
                    # The follower syncs each run it applies, so this rarely waits; a position
                    # not covered yet (a stream's start) gets one sync.
                    try:
                        await self.f.wal_sync.through(seq)
                    except Exception as exc:
                        log.error("%s: WAL sync failed, seq %d not acknowledged: %s",
                                  self.f.node, seq, exc)
                        await asyncio.sleep(ACK_RETRY_S)
                        self.event.set()
                        continue
                try:
                    await self._send(session, seq)
                    self.sent = seq
                except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
                    log.debug("ack of seq %d failed: %s", seq, exc)
                    await self._drop()
                    await asyncio.sleep(ACK_RETRY_S)
                    self.event.set()
        finally:
            await self._drop()

    def _open(self) -> bool:
        """Whether what was sent stands: POSTs were answered; a channel must still be open
        (else the newest seq goes again over a new one: the last frame may have been lost)."""
        return self.legacy or (self.channel is not None and not self.channel.closed)

    async def _send(self, session: aiohttp.ClientSession, seq: int) -> None:
        if not self.legacy and (self.channel is None or self.channel.closed):
            await self._connect(session)
        if self.channel is not None:
            await self.channel.send_str(str(seq))
            return
        async with session.post(f"{self.f.primary_url}/v1/replication/ack",
                                json={"node": self.f.node, "seq": seq},
                                headers=self.f.headers) as resp:
            await resp.read()

    async def _connect(self, session: aiohttp.ClientSession) -> None:
        await self._drop()
        try:
            # The ping (every `heartbeat`, a pong expected within half of it) finds a primary
            # that vanished without a reset: sends into a dead socket would not fail.
            channel = await session.ws_connect(
                f"{self.f.primary_url}/v1/replication/acks", params={"node": self.f.node},
                headers=self.f.headers, heartbeat=max(2.0, 4 * self.f.cfg.heartbeat_interval),
                autoclose=True, autoping=True, max_msg_size=1024,
                # Closing waits this long at most for the primary's close frame (a stopping
                # follower must not hang on a primary that went silent).
                timeout=aiohttp.ClientWSTimeout(ws_close=1.0))
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status in (404, 405):
                log.info("%s: %s has no ack channel (HTTP %d): acknowledging with one "
                         "request each", self.f.node, self.f.primary_url, exc.status)
                self.legacy = True
                return
            raise
        self.channel = channel
        self.channel_opens += 1
        # Nothing comes back on the channel but control frames and its close; reading them
        # is what notices a close, which wakes the sender to open a new channel.
        self._watcher = asyncio.ensure_future(self._watch(channel))

    async def _watch(self, channel: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for _ in channel:
                pass
        except Exception as exc:      # anything: the channel is done either way
            log.debug("ack channel ended: %s", exc)
        finally:
            if channel is self.channel:
                log.debug("%s: ack channel closed (%s)", self.f.node, channel.close_code)
                self.event.set()

    async def _drop(self) -> None:
        channel, self.channel = self.channel, None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
        if channel is not None and not channel.closed:
            try:
                await channel.close()
            except Exception:
                pass

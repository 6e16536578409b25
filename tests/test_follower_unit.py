"""The follower on its own: a real aiohttp server plays the primary, a real RocksDB is the replica.

No node processes. ``FakePrimary`` serves ``/v1/replication/stream`` from scripts written in
each test (one script per stream request, in order) with hand-built frames, and records every
request and every ack. The follower under test is the real ``Follower`` over a real ``Store``
in ``tmp_path``; assertions read the store's contents and ``latest_seq()`` and the follower's
``status``, never a mock of the follower.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hacluster.config import ReplicationConfig, StorageConfig
from hacluster.lineage.labels import Lineage
from hacluster.replication import frames
from hacluster.replication.follower import Follower
from hacluster.store import Store
from hacluster.wal import batch as wal
from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT, Op
from hacluster.wal.reader import WalReader

CFS = ["default", "users"]
TOKEN = "s3cret-token"
NAME = "r1"

# Fast reconnects unless a test wants to look at the backoff state.
FAST = ReplicationConfig(reconnect_backoff_min=0.01, reconnect_backoff_max=0.05,
                         heartbeat_interval=0.2)
SLOW = ReplicationConfig(reconnect_backoff_min=60.0, reconnect_backoff_max=60.0,
                         heartbeat_interval=0.2)


# -- frames ----------------------------------------------------------------------------------

def hello(epoch: int = 1, seq: int = 0, cfs: Sequence[str] = tuple(CFS),
          primary: str = "p1") -> bytes:
    return frames.encode_hello(frames.Hello(epoch, primary, seq, tuple(cfs)))


def batch(seq: int, ops: Sequence[Op], epoch: int = 1) -> bytes:
    """A batch frame covering [seq, seq + len(ops) - 1], as the primary's WAL would hold it."""
    return frames.encode_batch(epoch, seq, len(ops), wal.encode_batch(seq, list(ops)))


def puts(seq: int, *keys: str, cf: int = 0, epoch: int = 1) -> bytes:
    return batch(seq, [(PUT, cf, k.encode(), f"v-{k}".encode()) for k in keys], epoch)


# -- the fake primary ------------------------------------------------------------------------

Script = Callable[[web.Request], Awaitable[web.StreamResponse]]
Step = bytes | Callable[[], Awaitable[None]]


class FakePrimary:
    """``/v1/replication/stream``, ``/v1/replication/ack`` and, with ``channel``, the ack
    channel ``/v1/replication/acks`` of a primary, scripted. Without ``channel`` it is a
    primary of an older version: the channel's route answers 404."""

    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.streams: list[dict[str, Any]] = []   # query and Authorization of each request
        self.acks: list[dict[str, Any]] = []      # body and Authorization of each ack
        self.channel = False
        self.channels: list[web.WebSocketResponse] = []    # each ack channel opened
        self.on_ack: Callable[[dict[str, Any]], None] | None = None
        self.closing = asyncio.Event()
        self.server: TestServer | None = None
        self.checkpoint_requests = 0    # each answered 503, as by a node that is not primary

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/replication/stream", self._stream)
        app.router.add_post("/v1/replication/ack", self._ack)
        app.router.add_get("/v1/replication/acks", self._channel)
        app.router.add_post("/v1/replication/checkpoints", self._checkpoint)
        return app

    async def _checkpoint(self, request: web.Request) -> web.Response:
        self.checkpoint_requests += 1
        return web.json_response({"error": "n1 is not the primary", "primary": None},
                                 status=503)

    async def _channel(self, request: web.Request) -> web.StreamResponse:
        if not self.channel:
            raise web.HTTPNotFound()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        index = len(self.channels)
        self.channels.append(ws)
        async for msg in ws:
            record = {"node": request.query.get("node"), "seq": int(msg.data),
                      "auth": request.headers.get("Authorization"), "channel": index}
            if self.on_ack is not None:
                self.on_ack(record)
            self.acks.append(record)
        return ws

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        index = len(self.streams)
        self.streams.append({**request.query,
                             "auth": request.headers.get("Authorization")})
        if index < len(self.scripts):
            return await self.scripts[index](request)
        # Out of scripts: keep the request unanswered (the follower stays "connecting" with
        # its last error) until the test ends.
        await self.closing.wait()
        return web.Response(status=503)

    async def _ack(self, request: web.Request) -> web.Response:
        body = await request.json()
        record = {**body, "auth": request.headers.get("Authorization")}
        if self.on_ack is not None:
            self.on_ack(record)
        self.acks.append(record)
        return web.json_response({"ok": True})

    def acked(self) -> int:
        return max((a["seq"] for a in self.acks), default=-1)

    # -- script building blocks

    @staticmethod
    async def open(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-hacluster-frames"})
        await resp.prepare(request)
        return resp

    def send(self, *steps: Step, then: str = "end", hb: tuple[int, int] | None = None) -> Script:
        """A 200 stream that writes each bytes step (one write each) and awaits each callable
        step in order, then:

        - ``end``: ends the response cleanly;
        - ``drop``: cuts the TCP connection without ending the response;
        - ``hold``: keeps it open, with a heartbeat ``hb`` = (epoch, seq) every 0.2 s if
          given, until the test ends.
        """
        async def script(request: web.Request) -> web.StreamResponse:
            resp = await self.open(request)
            for step in steps:
                if isinstance(step, bytes):
                    await resp.write(step)
                else:
                    await step()
            if then == "drop":
                assert request.transport is not None
                request.transport.abort()
            elif then == "hold":
                while not self.closing.is_set():
                    try:
                        await asyncio.wait_for(self.closing.wait(), 0.2)
                    except TimeoutError:
                        if hb is not None:
                            await resp.write(frames.encode_heartbeat(*hb))
            return resp
        return script

    def answer(self, status: int, body: dict[str, Any]) -> Script:
        async def script(request: web.Request) -> web.StreamResponse:
            return web.json_response(body, status=status)
        return script


async def wait_until(what: Callable[[], bool], timeout: float = 5.0, why: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not what():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {why or what}")
        await asyncio.sleep(0.005)


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture
async def primary() -> AsyncIterator[FakePrimary]:
    fake = FakePrimary()
    fake.server = TestServer(fake.app())
    await fake.server.start_server()
    try:
        yield fake
    finally:
        fake.closing.set()
        await fake.server.close()


class Replica:
    """A follower over a real store in ``tmp_path/db``, run as a task."""

    def __init__(self, tmp_path: Path, primary: FakePrimary, *,
                 cfg: ReplicationConfig = FAST, known_epoch: int = 1,
                 cfs: Sequence[str] = tuple(CFS), lineage: bool = False,
                 space_low: Callable[[], str | None] = lambda: None,
                 durable: bool = False) -> None:
        self.db_dir = tmp_path / "db"
        self.cfs = list(cfs)
        Store(self.db_dir, self.cfs, StorageConfig()).close()   # a DB exists: no bootstrap
        self.lineage = Lineage(tmp_path) if lineage else None
        self.follower = Follower(
            node=NAME, data_dir=tmp_path, primary_url=primary.url + "/", token=TOKEN,
            cfg=cfg, open_store=self.open_store, known_epoch=known_epoch,
            lineage=self.lineage, space_low=space_low, durable=durable)
        self.task: asyncio.Task[None] | None = None

    def open_store(self) -> Store:
        return Store(self.db_dir, self.cfs, StorageConfig())

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.follower.run())

    @property
    def store(self) -> Store:
        assert self.follower.store is not None, "the follower has no store open"
        return self.follower.store

    def seq(self) -> int:
        """The store's latest seq (-1 before the follower has opened it)."""
        store = self.follower.store
        return -1 if store is None else store.latest_seq()

    def contents(self, cf: str = "default") -> dict[bytes, bytes]:
        return dict(self.store.items(cf))

    async def stop(self) -> None:
        self.follower.stop()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.task is not None:
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        store = self.follower.detach_store()
        if store is not None:
            store.close()

    def reopened_contents(self, cf: str = "default") -> tuple[int, dict[bytes, bytes]]:
        """After ``stop``: what is on disk, seen by a fresh open of the DB."""
        store = self.open_store()
        try:
            return store.latest_seq(), dict(store.items(cf))
        finally:
            store.close()


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for r in made:
        await r.stop()


async def until_backoff(tmp_path: Path, primary: FakePrimary,
                        replicas: list[Replica]) -> Replica:
    """A replica that reconnects only after a minute, run until it backs off (the first
    stream it got ended in an error)."""
    r = Replica(tmp_path, primary, cfg=SLOW)
    replicas.append(r)
    r.start()
    await wait_until(lambda: r.follower.status.state == "backoff")
    return r


def applied(r: Replica, batches: int) -> Callable[[], Awaitable[None]]:
    """A script step: wait until the follower has applied ``batches`` batches in all."""
    async def step() -> None:
        await wait_until(lambda: r.follower.status.batches_applied >= batches,
                         why=f"{batches} batches applied")
    return step


def values(*keys: str) -> dict[bytes, bytes]:
    return {k.encode(): f"v-{k}".encode() for k in keys}


# -- tests -----------------------------------------------------------------------------------

async def test_applies_a_stream_of_batches_and_acks_the_last_position(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.scripts = [primary.send(
        hello(seq=9),
        puts(1, "a"),
        puts(2, "b", "c") + puts(4, "d"),                         # two frames in one chunk
        batch(5, [(DELETE, 0, b"a", b""), (PUT, 1, b"u1", b"x" * 5000)]),
        batch(7, [(DELETE_RANGE, 0, b"c", b"d"), (PUT, 0, b"e", b"v-e")]),
        puts(9, "f", cf=1)[:10], puts(9, "f", cf=1)[10:],         # one frame in two chunks
        then="hold", hb=(1, 9))]
    r = Replica(tmp_path, primary)
    replicas.append(r)
    r.start()
    await wait_until(lambda: primary.acked() == 9, why="an ack of seq 9")

    assert r.seq() == 9
    assert r.contents() == {**values("b", "d"), b"e": b"v-e"}
    assert r.contents("users") == {b"u1": b"x" * 5000, **values("f")}
    st = r.follower.status
    assert (st.state, st.error, st.connects) == ("streaming", None, 1)
    assert (st.batches_applied, st.ops_applied, st.primary_seq) == (6, 9, 9)
    assert st.last_frame_at is not None
    # Acks only ever name applied positions, never more than the store holds, never backwards.
    seqs = [a["seq"] for a in primary.acks]
    assert seqs == sorted(seqs) and set(seqs) <= {1, 3, 4, 6, 8, 9}
    assert all(a["node"] == NAME for a in primary.acks)
    assert primary.streams[0]["since"] == "0" and primary.streams[0]["node"] == NAME

    await r.stop()
    assert r.reopened_contents("users") == (9, {b"u1": b"x" * 5000, **values("f")})


async def test_sends_the_bearer_token_on_the_stream_and_on_acks(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.scripts = [primary.send(hello(), puts(1, "a"), then="hold")]
    r = Replica(tmp_path, primary)
    replicas.append(r)
    r.start()
    await wait_until(lambda: primary.acked() == 1)
    assert primary.streams[0]["auth"] == f"Bearer {TOKEN}"
    assert primary.acks and {a["auth"] for a in primary.acks} == {f"Bearer {TOKEN}"}


async def test_acks_go_over_the_ack_channel_when_the_primary_has_one(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.channel = True
    primary.scripts = [primary.send(hello(seq=4), puts(1, "a"), applied(r := Replica(
        tmp_path, primary), 1), puts(2, "b", "c"), then="hold", hb=(1, 3))]
    replicas.append(r)
    r.start()
    await wait_until(lambda: primary.acked() == 3, why="an ack of seq 3")
    assert all("channel" in a for a in primary.acks)       # not one POST
    assert {a["channel"] for a in primary.acks} == {0}      # one channel, kept open
    assert {(a["node"], a["auth"]) for a in primary.acks} == {(NAME, f"Bearer {TOKEN}")}
    seqs = [a["seq"] for a in primary.acks]
    assert seqs == sorted(seqs) and set(seqs) <= {1, 3}
    assert not r.follower._acks.legacy


async def test_a_dropped_ack_channel_is_opened_again_and_sends_the_newest_seq(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.channel = True
    primary.scripts = [primary.send(hello(), puts(1, "a"), then="hold")]
    r = Replica(tmp_path, primary)
    replicas.append(r)
    r.start()
    await wait_until(lambda: primary.acked() == 1, why="an ack of seq 1")
    # The primary ends the channel (a frame sent meanwhile would be lost with it): the
    # replica opens another and sends what it holds, with no new batch to prompt it.
    await primary.channels[0].close()
    await wait_until(lambda: any(a["channel"] == 1 and a["seq"] == 1 for a in primary.acks),
                     why="seq 1 again over a second channel")
    assert r.follower._acks.channel_opens == 2


async def test_an_older_primary_without_the_ack_channel_gets_one_post_per_ack(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.scripts = [primary.send(hello(), puts(1, "a"), applied(r := Replica(
        tmp_path, primary), 1), puts(2, "b"), then="hold")]
    replicas.append(r)
    r.start()
    await wait_until(lambda: primary.acked() == 2, why="an ack of seq 2")
    assert primary.acks and not any("channel" in a for a in primary.acks)
    assert r.follower._acks.legacy and r.follower._acks.channel_opens == 0


async def test_resumes_after_the_stream_ends_from_the_seq_it_holds(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hacluster.replication.follower")
    r = Replica(tmp_path, primary)
    replicas.append(r)

    primary.scripts = [
        # The primary goes away after seq 3 (a clean end of the response).
        primary.send(hello(seq=3), puts(1, "a"), puts(2, "b", "c"), applied(r, 2)),
        # The next stream resends the batch the follower ended on (skipped, not re-applied),
        # then goes on.
        primary.send(hello(seq=6), puts(2, "b", "c"), puts(4, "d", "e", "f"), then="hold",
                     hb=(1, 6)),
    ]
    r.start()
    await wait_until(lambda: r.seq() == 6 and primary.acked() == 6)

    assert [s["since"] for s in primary.streams] == ["0", "3"]
    assert r.contents() == values("a", "b", "c", "d", "e", "f")
    st = r.follower.status
    assert (st.connects, st.batches_applied, st.ops_applied) == (2, 3, 6)
    assert (st.state, st.error) == ("streaming", None)   # the hello cleared the old error
    # A clean end (a primary stopping or stepping down) is a warning, never an error.
    ended = [rec for rec in caplog.records if "primary closed the stream" in rec.getMessage()]
    assert [rec.levelno for rec in ended] == [logging.WARNING], ended
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


async def test_a_checkpoint_refused_with_503_is_asked_again_and_warned_not_errored(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica],
        caplog: pytest.LogCaptureFixture) -> None:
    # A node that lost the primary role (or has not opened its sources yet) answers 503:
    # in a failover a bootstrapping replica meets it as a matter of course.
    caplog.set_level(logging.INFO, logger="hacluster.replication.follower")
    r = Replica(tmp_path, primary)
    shutil.rmtree(r.db_dir)                 # nothing to stream from: it must bootstrap
    replicas.append(r)
    r.start()
    await wait_until(lambda: primary.checkpoint_requests >= 3, why="three checkpoint requests")
    assert r.follower.status.state in ("backoff", "bootstrapping"), r.follower.status
    refused = [rec for rec in caplog.records if "HTTP 503" in rec.getMessage()]
    assert refused and {rec.levelno for rec in refused} == {logging.WARNING}, refused
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


async def test_resumes_after_the_connection_drops_mid_frame(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    r = Replica(tmp_path, primary)
    replicas.append(r)
    third = puts(4, "d")

    primary.scripts = [
        # Half of the third frame, then the TCP connection is cut.
        primary.send(hello(seq=4), puts(1, "a"), puts(2, "b", "c"), third[:len(third) // 2],
                     applied(r, 2), then="drop"),
        primary.send(hello(seq=4), third, then="hold", hb=(1, 4)),
    ]
    r.start()
    await wait_until(lambda: r.seq() == 4, why="seq 4 after the reconnect")

    assert [s["since"] for s in primary.streams] == ["0", "3"]
    assert r.contents() == values("a", "b", "c", "d")
    assert r.follower.status.connects == 2


async def test_a_corrupt_batch_stops_applying_keeps_the_data_and_says_where(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    good = [hello(seq=5), puts(1, "a"), puts(2, "b", "c")]
    bad = bytearray(puts(4, "d", "e"))
    bad[-12] ^= 0x01                        # one bit of a value inside the WriteBatch
    r = Replica(tmp_path, primary, cfg=SLOW)
    replicas.append(r)
    # The good batches are applied before the bad frame is sent (see the xfail test below for
    # good frames that share a chunk with a bad one).
    primary.scripts = [primary.send(*good, applied(r, 2), bytes(bad), puts(6, "f"),
                                    then="hold")]
    r.start()
    await wait_until(lambda: r.follower.status.state == "backoff")

    st = r.follower.status
    offset = sum(len(f) for f in good)
    assert st.error == (f"frame #4 at stream offset {offset}: checksum mismatch in batch at "
                        "seq 4 (epoch 1)")
    assert r.seq() == 3
    assert r.contents() == values("a", "b", "c")
    assert st.batches_applied == 2
    await r.stop()
    assert r.reopened_contents() == (3, values("a", "b", "c"))


async def test_a_batch_that_verifies_but_cannot_be_applied_applies_nothing_of_it(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    # Column family 7 is not in the hello: the first op of the batch must not land either.
    primary.scripts = [primary.send(
        hello(seq=4), puts(1, "a"),
        batch(2, [(PUT, 0, b"b", b"v-b"), (PUT, 1, b"u", b"1"), (PUT, 7, b"x", b"y")]),
        then="hold")]
    r = await until_backoff(tmp_path, primary, replicas)

    assert r.follower.status.error is not None
    assert r.follower.status.error.startswith("batch at seq 2 cannot be applied: ")
    assert r.follower.status.error.endswith("; nothing of it applied")
    assert (r.seq(), r.contents(), r.contents("users")) == (1, values("a"), {})


async def test_verified_frames_before_a_corrupt_one_in_the_same_chunk_are_applied(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    bad = bytearray(puts(3, "c"))
    bad[-12] ^= 0x01
    chunk = hello(seq=3) + puts(1, "a") + puts(2, "b") + bytes(bad)
    primary.scripts = [primary.send(chunk, then="hold")]          # one write, one chunk
    r = await until_backoff(tmp_path, primary, replicas)
    assert r.follower.status.error is not None
    assert "frame #4 at stream offset" in r.follower.status.error
    assert (r.seq(), r.contents()) == (2, values("a", "b"))


async def test_the_batches_of_one_read_are_one_write_here_with_the_same_seqs(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    # Eight frames in one chunk: one RocksDB write (one WAL record here) that ends at the
    # same seq as eight writes would, with every op where each frame put it.
    chunk = hello(seq=15) + b"".join(puts(1 + 2 * i, f"k{i}a", f"k{i}b") for i in range(8))
    primary.scripts = [primary.send(chunk, then="hold", hb=(1, 16))]
    r = Replica(tmp_path, primary)
    replicas.append(r)
    r.start()
    await wait_until(lambda: primary.acked() == 16, why="an ack of seq 16")
    assert r.contents() == values(*(f"k{i}{x}" for i in range(8) for x in "ab"))
    st = r.follower.status
    assert (st.batches_applied, st.runs_applied, st.ops_applied) == (8, 1, 16)
    records = [(b.seq, b.count) for b in WalReader(r.db_dir, 1).read()]
    assert records == [(1, 16)], records


async def test_a_run_cut_by_a_batch_that_cannot_be_applied_writes_the_batches_before_it(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    # In one chunk: two good batches, then one naming a column family that is not in the
    # hello. The good ones land (as they would one by one); nothing of the bad one does,
    # although the decoder had already taken its first op when it met the unknown family.
    bad = batch(5, [(PUT, 0, b"x", b"1"), (PUT, 7, b"y", b"2")])
    chunk = hello(seq=6) + puts(1, "a", "b") + puts(3, "c", "d") + bad
    primary.scripts = [primary.send(chunk, then="hold")]
    r = await until_backoff(tmp_path, primary, replicas)
    assert r.follower.status.error is not None
    assert r.follower.status.error.startswith("batch at seq 5 cannot be applied: ")
    assert (r.seq(), r.contents()) == (4, values("a", "b", "c", "d"))
    assert [(b.seq, b.count) for b in WalReader(r.db_dir, 1).read()] == [(1, 4)]


async def test_an_epoch_change_inside_one_read_is_recorded_before_its_first_batch(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    # Two runs from one chunk: the lineage gets epoch 3's first seq, and epoch 2's batches
    # and epoch 3's are separate writes (a run never spans two epochs).
    chunk = (hello(epoch=2, seq=4) + puts(1, "a", epoch=2) + puts(2, "b", epoch=2)
             + puts(3, "c", epoch=3) + puts(4, "d", epoch=3))
    primary.scripts = [primary.send(chunk, then="hold", hb=(3, 4))]
    r = Replica(tmp_path, primary, known_epoch=2, lineage=True)
    replicas.append(r)
    r.start()
    await wait_until(lambda: primary.acked() == 4, why="an ack of seq 4")
    assert r.lineage is not None
    assert Lineage(tmp_path).transitions == [(2, 1), (3, 3)]
    assert [(b.seq, b.count) for b in WalReader(r.db_dir, 1).read()] == [(1, 2), (3, 2)]
    assert r.contents() == values("a", "b", "c", "d")


async def test_a_truncated_stream_stops_applying_and_says_how_much_of_the_frame_came(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    good = [hello(seq=3), puts(1, "a"), puts(2, "b")]
    cut = puts(3, "c")[:-5]
    primary.scripts = [primary.send(*good, cut)]     # ends cleanly, inside the fourth frame
    r = await until_backoff(tmp_path, primary, replicas)

    offset = sum(len(f) for f in good)
    assert r.follower.status.error == (
        f"stream ended inside a frame (frame #4 at stream offset {offset}, "
        f"{len(cut)} bytes of it received)")
    assert (r.seq(), r.contents()) == (2, values("a", "b"))


async def test_a_frame_longer_than_the_limit_is_refused_before_it_is_read(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    cfg = ReplicationConfig(reconnect_backoff_min=60.0, reconnect_backoff_max=60.0,
                            max_frame_bytes=4096)
    big = batch(2, [(PUT, 0, b"big", b"x" * 5000)])
    r = Replica(tmp_path, primary, cfg=cfg)
    replicas.append(r)
    primary.scripts = [primary.send(hello(seq=2), puts(1, "a"), applied(r, 1), big,
                                    then="hold")]
    r.start()
    await wait_until(lambda: r.follower.status.state == "backoff")
    assert r.follower.status.error is not None
    assert f"frame length {len(big) - 4} outside 1..4096" in r.follower.status.error
    assert (r.seq(), r.contents()) == (1, values("a"))


@pytest.mark.parametrize("body", [
    {"error": "diverged", "reason": "seq 6 of epoch 1 is not on this primary's history"},
    {"error": "ahead", "reason": "replica position 6 is ahead of the primary's 1: its "
     "history has diverged", "primary_seq": 1},
])
async def test_a_409_puts_the_follower_in_the_diverged_state_for_good(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica],
        body: dict[str, Any]) -> None:
    r = Replica(tmp_path, primary, lineage=True)
    replicas.append(r)
    # The replica already holds seqs 1..6 (epoch 1, say the lineage): three ops, each with
    # its key's seq record.
    store = r.open_store()
    store.write([(PUT, "default", b"a", b"1"), (PUT, "default", b"b", b"2")])
    store.write([(PUT, "users", b"u", b"3")])
    store.close()
    assert r.lineage is not None
    r.lineage.record(1, 1)
    primary.scripts = [primary.answer(409, body)]
    r.start()
    assert r.task is not None
    await asyncio.wait_for(r.task, 5)           # it stops by itself: no reconnect

    st = r.follower.status
    assert (st.state, st.error) == ("diverged", body["reason"])
    assert len(primary.streams) == 1
    assert (primary.streams[0]["since"], primary.streams[0]["epoch"]) == ("6", "1")
    assert (r.seq(), r.contents(), r.contents("users")) == (6, {b"a": b"1", b"b": b"2"},
                                                            {b"u": b"3"})


async def test_a_batch_straddling_the_position_in_the_stream_means_diverged(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.scripts = [primary.send(hello(seq=4), puts(1, "a", "b"), puts(2, "x", "y", "z"),
                                    then="hold")]
    r = Replica(tmp_path, primary)
    replicas.append(r)
    r.start()
    assert r.task is not None
    await asyncio.wait_for(r.task, 5)
    st = r.follower.status
    assert st.state == "diverged"
    assert st.error == "batch [2, 4] straddles this node's position 2: histories differ"
    assert (r.seq(), r.contents()) == (2, values("a", "b"))


async def test_a_gap_in_the_stream_is_refused_and_the_follower_reconnects_from_its_seq(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.scripts = [
        primary.send(hello(seq=5), puts(1, "a"), puts(3, "c"), then="hold"),
        primary.send(hello(seq=5), puts(2, "b"), puts(3, "c"), then="hold"),
    ]
    r = Replica(tmp_path, primary)
    replicas.append(r)
    r.start()
    await wait_until(lambda: r.seq() == 3)
    assert [s["since"] for s in primary.streams] == ["0", "1"]
    assert r.contents() == values("a", "b", "c")


async def test_an_epoch_change_in_the_stream(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    r = Replica(tmp_path, primary, known_epoch=2, lineage=True)
    replicas.append(r)

    primary.scripts = [
        # Epoch 2, then the same primary carries on in epoch 3 (a new label on its batches).
        primary.send(hello(epoch=2, seq=3), puts(1, "a", epoch=2), puts(2, "b", epoch=2),
                     applied(r, 2)),
        primary.send(hello(epoch=2, seq=3), puts(3, "c", epoch=3), applied(r, 3)),
        # A new primary in epoch 4; in its stream a batch labelled with an older epoch.
        primary.send(hello(epoch=4, seq=6), puts(4, "d", epoch=4),
                     puts(5, "e", epoch=3)),
        # An old primary of epoch 3 still streaming: refused at its hello.
        primary.send(hello(epoch=3, seq=9), puts(5, "e", epoch=3)),
    ]
    r.start()
    await wait_until(lambda: len(primary.streams) == 5, why="the fifth stream request")

    assert r.lineage is not None
    assert r.lineage.transitions == [(2, 1), (3, 3), (4, 4)]
    assert Lineage(tmp_path).transitions == [(2, 1), (3, 3), (4, 4)]    # on disk too
    assert [(s["since"], s["epoch"]) for s in primary.streams] == [
        ("0", "0"), ("2", "2"), ("3", "3"), ("4", "4"), ("4", "4")]
    assert r.follower.known_epoch == 4
    # The last refusal is still reported while the follower tries again.
    st = r.follower.status
    assert st.state == "connecting"
    assert st.error == "p1 streams epoch 3, older than epoch 4 this node knows"
    assert (r.seq(), r.contents()) == (4, values("a", "b", "c", "d"))


async def test_a_stale_epoch_batch_is_refused_with_its_reason(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.scripts = [primary.send(hello(epoch=5, seq=2), puts(1, "a", epoch=5),
                                    puts(2, "b", epoch=4), then="hold")]
    r = Replica(tmp_path, primary, cfg=SLOW, known_epoch=5)
    replicas.append(r)
    r.start()
    await wait_until(lambda: r.follower.status.state == "backoff")
    assert r.follower.status.error == (
        "batch at seq 2 is from epoch 4, older than epoch 5 this node knows")
    assert (r.seq(), r.contents()) == (1, values("a"))


async def test_heartbeats_report_the_primary_position_and_an_old_epoch_one_is_refused(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.scripts = [primary.send(hello(epoch=2, seq=1), puts(1, "a", epoch=2),
                                    frames.encode_heartbeat(2, 40), then="hold", hb=(1, 50))]
    r = Replica(tmp_path, primary, cfg=SLOW, known_epoch=2)
    replicas.append(r)
    r.start()
    await wait_until(lambda: r.follower.status.primary_seq == 40)
    await wait_until(lambda: r.follower.status.state == "backoff")
    assert r.follower.status.error == (
        "heartbeat from epoch 1, older than epoch 2 this node knows")
    assert r.follower.status.primary_seq == 40
    assert r.seq() == 1


async def test_an_error_frame_from_the_primary_stops_the_stream(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.scripts = [primary.send(hello(seq=2), puts(1, "a"),
                                    frames.encode_error("corrupt WAL record at seq 2"),
                                    puts(2, "b"), then="hold")]
    r = await until_backoff(tmp_path, primary, replicas)
    assert r.follower.status.error == "primary reported: corrupt WAL record at seq 2"
    assert (r.seq(), r.contents()) == (1, values("a"))


async def test_a_refused_stream_request_is_reported_with_its_status(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.scripts = [primary.answer(500, {"error": "p1 broke"})]
    r = await until_backoff(tmp_path, primary, replicas)
    assert r.follower.status.error == 'stream request failed: HTTP 500: {"error": "p1 broke"}'
    assert r.seq() == 0


async def test_a_node_not_primary_yet_is_asked_again_soon_not_after_the_backoff(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    # In a failover a replica learns of the new lock holder as the Acquire commits, a moment
    # before that node serves the stream: its 503 is retried within tens of milliseconds,
    # not after reconnect_backoff_min (60 s here).
    primary.scripts = [primary.answer(503, {"error": "p1 is not the primary"}),
                       primary.send(hello(seq=1), puts(1, "a"), then="hold")]
    r = Replica(tmp_path, primary, cfg=SLOW)
    replicas.append(r)
    r.start()
    await wait_until(lambda: r.seq() == 1, timeout=10.0)
    assert r.follower.status.connects == 2
    assert r.follower.status.state == "streaming"


async def test_column_families_are_mapped_by_name_from_the_hello(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    # The primary's ids: default 0, a 1, b 2. The replica's own: default 0, b 1, a 2.
    primary.scripts = [primary.send(
        hello(seq=2, cfs=("default", "a", "b")),
        batch(1, [(PUT, 1, b"in-a", b"1"), (PUT, 2, b"in-b", b"2")]), then="hold")]
    r = Replica(tmp_path, primary, cfs=("default", "b", "a"))
    replicas.append(r)
    r.start()
    await wait_until(lambda: r.seq() == 2)
    assert (r.contents("a"), r.contents("b")) == ({b"in-a": b"1"}, {b"in-b": b"2"})


async def test_a_column_family_missing_here_is_refused_at_the_hello(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    primary.scripts = [primary.send(hello(seq=1, cfs=("default", "users", "orders")),
                                    puts(1, "a"), then="hold")]
    r = await until_backoff(tmp_path, primary, replicas)
    assert r.follower.status.error is not None
    assert "column families ['orders'] exist on the primary but not here" in \
        r.follower.status.error
    assert r.seq() == 0


async def test_low_disk_space_pauses_applying_and_it_resumes_where_it_stopped(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    low: list[str] = []
    r = Replica(tmp_path, primary, space_low=lambda: low[0] if low else None)
    replicas.append(r)

    async def fill_disk() -> None:
        await applied(r, 1)()
        low.append("only 3 MB free, 64 MB required")

    primary.scripts = [
        # The second batch arrives once space is low: it is not applied.
        primary.send(hello(seq=2), puts(1, "a"), fill_disk, puts(2, "b"), then="hold"),
        primary.send(hello(seq=2), puts(2, "b"), then="hold"),
    ]
    r.start()
    await wait_until(lambda: r.follower.status.state == "disk_full")
    assert r.follower.status.error == "only 3 MB free, 64 MB required"
    await asyncio.sleep(0.2)    # several rounds of backoff while low: no request, no apply
    assert len(primary.streams) == 1
    assert (r.seq(), r.contents()) == (1, values("a"))

    low.clear()
    await wait_until(lambda: r.seq() == 2)
    assert [s["since"] for s in primary.streams] == ["0", "1"]
    assert r.follower.status.state == "streaming"
    assert r.contents() == values("a", "b")


async def test_durable_acks_follow_the_sync_of_the_run_they_name(
        tmp_path: Path, primary: FakePrimary, replicas: list[Replica]) -> None:
    r = Replica(tmp_path, primary, durable=True)
    replicas.append(r)
    synced_at_ack: list[tuple[int, int]] = []
    primary.on_ack = lambda a: synced_at_ack.append((a["seq"], r.follower.wal_sync.synced_seq))
    primary.scripts = [primary.send(hello(seq=5), puts(1, "a"), puts(2, "b", "c"),
                                    puts(4, "d", "e"), then="hold")]
    r.start()
    await wait_until(lambda: primary.acked() == 5)
    assert synced_at_ack and all(synced >= seq for seq, synced in synced_at_ack)
    # Each run was synced right after its write, on the loop: no group-commit round was needed,
    # neither for the acks nor for the stream's start at seq 0.
    assert (r.follower.wal_sync.syncs, r.follower.wal_sync.synced_seq) == (0, 5)


def test_frames_built_here_are_what_the_decoder_accepts() -> None:
    """The hand-built frames are valid: a test failing above is not a malformed fixture."""
    decoder = frames.FrameDecoder(1 << 20)
    got = decoder.feed(hello(epoch=3, seq=7) + puts(5, "x", "y", cf=1, epoch=3))
    assert got[0] == frames.Hello(3, "p1", 7, tuple(CFS))
    assert isinstance(got[1], frames.BatchFrame)
    assert (got[1].epoch, got[1].seq, got[1].count, got[1].last_seq) == (3, 5, 2, 6)

"""The primary's ack channel (``GET /v1/replication/acks``, a WebSocket) against a real
``ReplicationSource`` and ``ReplicaPositions``: who may open one, what a message records, and
every way the primary ends it. The replica's side (``AckSender``: channel, reconnect, the POST
of older primaries) is in test_follower_unit.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from hacluster.replication.feed import WalFeed
from hacluster.replication.positions import ReplicaPositions
from hacluster.replication.source import ReplicationSource

MEMBERS = {"n2", "n3"}


class Primary:
    def __init__(self, tmp_path: Path) -> None:
        self.members = set(MEMBERS)
        self.positions = ReplicaPositions(max_replicas=2)
        self.source = ReplicationSource(
            node_name="n1", db_dir=tmp_path, feed=cast(WalFeed, None),
            positions=self.positions, latest_seq=lambda: 100, column_families=lambda: [],
            epoch=lambda: 1, heartbeat_interval=0.5, is_member=self.members.__contains__)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/replication/acks", self.source.handle_acks)
        return app


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Primary, TestClient[Any, Any]]]:
    primary = Primary(tmp_path)
    client: TestClient[Any, Any] = TestClient(TestServer(primary.app()))
    await client.start_server()
    try:
        yield primary, client
    finally:
        await client.close()


async def until(what: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not what():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_each_message_moves_the_replicas_position_forward_only(
        served: tuple[Primary, TestClient[Any, Any]]) -> None:
    primary, client = served
    ws = await client.ws_connect("/v1/replication/acks", params={"node": "n2"})
    for seq in ("5", "9", "7"):
        await ws.send_str(seq)
    await until(lambda: primary.positions.applied("n2") == 9)
    await ws.send_str("12")
    await until(lambda: primary.positions.applied("n2") == 12)
    assert primary.positions.applied("n3") == -1
    await ws.close()


@pytest.mark.parametrize("params, status", [({"node": "intruder"}, 403), ({}, 400)])
async def test_only_a_member_opens_a_channel(served: tuple[Primary, TestClient[Any, Any]],
                                             params: dict[str, str], status: int) -> None:
    primary, client = served
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect("/v1/replication/acks", params=params)
    assert refused.value.status == status
    assert not primary.positions.replicas          # nothing recorded for it


@pytest.mark.parametrize("message", ["-1", "1e3", "9" * 21, " 5", ""])
async def test_a_message_that_is_not_a_seq_ends_the_channel(
        served: tuple[Primary, TestClient[Any, Any]], message: str) -> None:
    primary, client = served
    ws = await client.ws_connect("/v1/replication/acks", params={"node": "n2"})
    await ws.send_str(message)
    msg = await ws.receive()
    assert msg.type is WSMsgType.CLOSE and msg.data == WSCloseCode.UNSUPPORTED_DATA
    assert primary.positions.applied("n2") == -1


async def test_a_binary_message_ends_the_channel(
        served: tuple[Primary, TestClient[Any, Any]]) -> None:
    _, client = served
    ws = await client.ws_connect("/v1/replication/acks", params={"node": "n2"})
    await ws.send_bytes(b"5")
    msg = await ws.receive()
    assert msg.type is WSMsgType.CLOSE and msg.data == WSCloseCode.UNSUPPORTED_DATA


async def test_a_name_that_stops_being_a_member_records_no_more_acks(
        served: tuple[Primary, TestClient[Any, Any]]) -> None:
    primary, client = served
    ws = await client.ws_connect("/v1/replication/acks", params={"node": "n3"})
    await ws.send_str("4")
    await until(lambda: primary.positions.applied("n3") == 4)
    primary.members.discard("n3")                  # removed from the cluster meanwhile
    await ws.send_str("8")
    msg = await ws.receive()
    assert msg.type is WSMsgType.CLOSE and msg.data == WSCloseCode.POLICY_VIOLATION
    assert primary.positions.applied("n3") == 4


async def test_a_full_table_of_positions_ends_the_channel(
        served: tuple[Primary, TestClient[Any, Any]]) -> None:
    primary, client = served
    primary.members.add("n4")
    for name in ("n2", "n3"):                      # max_replicas=2, each with a stream open
        primary.positions.stream_opened(name, 0)
    ws = await client.ws_connect("/v1/replication/acks", params={"node": "n4"})
    await ws.send_str("3")
    msg = await ws.receive()
    assert msg.type is WSMsgType.CLOSE and msg.data == WSCloseCode.TRY_AGAIN_LATER
    assert "n4" not in primary.positions.replicas


async def test_the_primary_stepping_down_ends_every_channel(
        served: tuple[Primary, TestClient[Any, Any]]) -> None:
    primary, client = served
    ws = await client.ws_connect("/v1/replication/acks", params={"node": "n2"})
    await ws.send_str("2")
    await until(lambda: primary.positions.applied("n2") == 2)
    primary.source.closing.set()
    msg = await ws.receive()
    assert msg.type is WSMsgType.CLOSE and msg.data == WSCloseCode.GOING_AWAY

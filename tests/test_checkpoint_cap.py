"""The primary's checkpoints are capped: idle ones make room, busy ones are never removed.

The service runs on a real aiohttp server on loopback over a real RocksDB store; a file being
sent is held open by a real socket that stops reading. The last test runs a real node process
with ``replication.max_checkpoints`` in its config.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hacluster.config import StorageConfig
from hacluster.replication.checkpoints import CheckpointService
from hacluster.store import Store
from hacluster.testing.harness import Cluster
from hacluster.wal.batch import PUT

GRACE = 0.3


class Primary:
    def __init__(self, service: CheckpointService, server: TestServer,
                 session: aiohttp.ClientSession) -> None:
        self.service = service
        self.server = server
        self.session = session

    async def create(self, node: str) -> tuple[int, dict[str, Any]]:
        async with self.session.post(self.server.make_url("/v1/replication/checkpoints"),
                                     json={"node": node}) as resp:
            return resp.status, await resp.json()

    async def fetch(self, cp_id: str, name: str) -> int:
        url = self.server.make_url(f"/v1/replication/checkpoints/{cp_id}/files/{name}")
        async with self.session.get(url) as resp:
            await resp.read()
            return resp.status


@pytest.fixture
async def primary(tmp_path: Path) -> AsyncIterator[Primary]:
    store = Store(tmp_path / "db", ["default"], StorageConfig())
    # One SST of ~24 MB of incompressible values: too big to fit in socket buffers, so a
    # client that stops reading keeps its transfer in flight.
    for i in range(24):
        store.write([(PUT, "default", f"k{i}".encode(), os.urandom(1 << 20))])
    store.flush()
    service = CheckpointService(
        tmp_path / "checkpoints", create=store.checkpoint, epoch=lambda: 1,
        column_families=lambda: store.column_families, ttl_seconds=3600,
        max_checkpoints=2, in_use_grace_s=GRACE)
    app = web.Application()
    app.router.add_post("/v1/replication/checkpoints", service.handle_create)
    app.router.add_get("/v1/replication/checkpoints/{id}/files/{name}", service.handle_file)
    app.router.add_delete("/v1/replication/checkpoints/{id}", service.handle_delete)
    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            yield Primary(service, server, session)
    finally:
        await server.close()
        store.close()


def largest_file(manifest: dict[str, Any]) -> dict[str, Any]:
    return max(manifest["files"], key=lambda f: f["size"])


async def test_an_idle_checkpoint_makes_room_and_a_busy_cap_answers_503(
        primary: Primary) -> None:
    status, a = await primary.create("r1")
    assert status == 200
    status, b = await primary.create("r2")
    assert status == 200
    # Both were just made: their replicas are about to download them.
    status, refused = await primary.create("r3")
    assert status == 503
    assert refused["error"] == "busy"
    assert "replication.max_checkpoints = 2" in refused["reason"]
    assert "'r1'" in refused["reason"] and "'r2'" in refused["reason"]
    assert primary.service.list_ids() == sorted([a["id"], b["id"]])
    await asyncio.sleep(GRACE + 0.1)
    assert await primary.fetch(b["id"], "CURRENT") == 200      # b was used since: a is older
    status, c = await primary.create("r3")
    assert status == 200
    assert primary.service.list_ids() == sorted([b["id"], c["id"]])
    assert await primary.fetch(a["id"], "CURRENT") == 404


async def test_a_checkpoint_being_sent_is_never_removed_to_make_room(primary: Primary) -> None:
    _, a = await primary.create("r1")
    _, b = await primary.create("r2")
    big = largest_file(a)
    assert big["size"] > 16 << 20
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (primary.server.host, primary.server.port))
    await loop.sock_sendall(sock, (
        f"GET /v1/replication/checkpoints/{a['id']}/files/{big['name']} HTTP/1.1\r\n"
        f"Host: x\r\n\r\n").encode())
    try:
        assert (await loop.sock_recv(sock, 64)).startswith(b"HTTP/1.1 200")
        # The client reads no more: the server is stuck sending `a`, long past the grace.
        await asyncio.sleep(GRACE + 0.3)
        assert primary.service.in_use(a["id"]) and not primary.service.in_use(b["id"])
        status, c = await primary.create("r3")
        assert status == 200
        assert primary.service.list_ids() == sorted([a["id"], c["id"]])   # b, idle, went
        status, refused = await primary.create("r4")
        assert status == 503 and refused["error"] == "busy"
        primary.service.expire()        # not even the TTL removes a file being sent
        assert a["id"] in primary.service.list_ids()
    finally:
        sock.close()
    # The transfer ends with the connection (counted as a use): after the grace, `a` is idle
    # again, and `c`, untouched since it was made, is the least recently used.
    await asyncio.sleep(GRACE + 0.3)
    assert not primary.service.in_use(a["id"])
    status, d = await primary.create("r4")
    assert status == 200
    assert primary.service.list_ids() == sorted([a["id"], d["id"]])


def test_a_node_refuses_checkpoints_over_its_configured_cap(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, replication={"max_checkpoints": 1})
    try:
        cluster.primary.start()
        n1 = cluster.primary
        first = n1.post("/v1/replication/checkpoints", {"node": "backup-1"})
        assert first.status == 200, first.body
        second = n1.post("/v1/replication/checkpoints", {"node": "backup-2"})
        assert second.status == 503
        body = json.loads(second.body)
        assert body["error"] == "busy" and "replication.max_checkpoints = 1" in body["reason"]
        assert second.headers.get("retry-after") == "30"
        assert len(list((n1.data_dir / "checkpoints").iterdir())) == 1
        # The same client asking again replaces its own checkpoint: that is not refused.
        again = n1.post("/v1/replication/checkpoints", {"node": "backup-1"})
        assert again.status == 200, again.body
        assert "checkpoint for backup-2 refused" in n1.log()
    finally:
        cluster.stop()

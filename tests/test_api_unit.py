"""The HTTP handlers of ``hacluster.api`` against a fake node: no processes, no consensus.

The app is the real one (``build_app``: auth, metrics middleware, every route), served by
aiohttp's ``TestServer``/``TestClient``; the node behind it is ``FakeNode`` below, over a real
``Store`` in ``tmp_path``. The tests check what reaches the client (status, body, headers) and
what reaches the store.

What the handlers use of ``Node`` (hacluster/api/*.py and the metrics collector that
``build_app`` registers), i.e. everything ``FakeNode`` has to provide:

- attributes: ``name``, ``role.primary``, ``role.epoch``, ``control`` (None: static mode;
  admin uses ``set_paused``, ``switchover``, ``request_failover``, ``add_member``,
  ``remove_member``, ``compact_raft_log``, ``raft_status``, ``raft_members``),
  ``source`` and ``checkpoints`` (replication routes), ``unknown_outcomes`` (incremented by
  the write handler), and for /metrics ``writes``, ``wal_sync.syncs``, ``gate.refusal()``,
  ``gate.closes``, ``positions.snapshot()``, ``follower``, ``data_dir``;
- config: ``cfg.token``, ``cfg.limits`` (all of it), ``cfg.nodes`` (name, api.url, tags,
  raft), ``cfg.source``, ``cfg.replication.max_frame_bytes``, ``.min_seq_wait_s``, ``.mode``;
- properties and methods: ``is_primary``, ``column_families``, ``store``,
  ``latest_seq()``, ``leader()``, ``api_url_of(name)``, ``view(now)`` (a
  ``probes.NodeView``), ``status()``, ``status_epoch()``, ``write(ops)``,
  ``await acknowledge(seq)``, ``begin_read()``, ``await finish_read(seq)``,
  ``await wait_applied(seq, timeout)``, ``await reinit()``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cbor2
import pytest
from aiohttp.test_utils import TestClient, TestServer

import hacluster.api as api_module
from hacluster.api import build_app
from hacluster.api.counters import WatchStats
from hacluster.api.probes import NodeView
from hacluster.config import (
    FRAME_OVERHEAD,
    Address,
    AuthConfig,
    LimitsConfig,
    NodeConfig,
    ReplicationConfig,
    StorageConfig,
    TlsConfig,
)
from hacluster.consensus.errors import NotCommitted, RequestRefused
from hacluster.groupsync import GroupSync
from hacluster.key_seqs import SEQ_CF
from hacluster.node_errors import DiskFull, NotWritable, OutcomeUnknown
from hacluster.replication.positions import ReplicaPositions
from hacluster.security.tokens import Role, new_token
from hacluster.store import NamedOp, Store, StoreError
from hacluster.wal.reader import WalReader
from hacluster.writes import CBOR_TYPE
from tests.replica_runs import apply_as_runs

TOKEN = "unit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CFS = ["default", "users"]
LIMITS = LimitsConfig(max_key_bytes=32, max_value_bytes=1000, max_body_bytes=8192,
                      max_batch_ops=4)
N1_URL, N2_URL = "http://10.0.0.1:8001", "http://10.0.0.2:8002"


# -- the fake node ---------------------------------------------------------------------------

@dataclass
class FakeRole:
    primary: str | None
    epoch: int


@dataclass
class FakeGate:
    """What the metrics collector reads of the write gate."""

    refusal_text: str | None = None
    closes: int = 0

    def refusal(self) -> str | None:
        return self.refusal_text


@dataclass
class FakeRaft:
    members: list[str] = field(default_factory=lambda: ["10.0.0.1:9001", "10.0.0.2:9002"])
    compactions: int = 0

    def compact_log(self) -> None:
        self.compactions += 1

    def raft_status(self) -> dict[str, Any]:
        return {"log_len": 7, "compactions": self.compactions}

    def raft_members(self) -> list[str]:
        return list(self.members)


@dataclass
class FakeControl:
    """The consensus loop's operator actions: each records its call and does what it is told."""

    raft: FakeRaft = field(default_factory=FakeRaft)
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    paused_result: bool | None = True
    fail: Exception | None = None        # raised by switchover, failover and membership

    async def set_paused(self, paused: bool) -> bool | None:
        self.calls.append(("set_paused", paused))
        return self.paused_result

    async def switchover(self, target: str | None) -> str:
        self.calls.append(("switchover", target))
        if self.fail:
            raise self.fail
        return target or "n2"

    async def request_failover(self, target: str, force: bool) -> int:
        self.calls.append(("failover", target, force))
        if self.fail:
            raise self.fail
        return 7

    async def add_member(self, name: str, address: str) -> None:
        self.calls.append(("add", name, address))
        if self.fail:
            raise self.fail
        self.raft.members.append(address)

    async def remove_member(self, name: str, address: str) -> None:
        self.calls.append(("remove", name, address))
        if self.fail:
            raise self.fail
        self.raft.members.remove(address)

    def compact_raft_log(self) -> None:
        self.raft.compact_log()

    def raft_status(self) -> dict[str, Any]:
        return self.raft.raft_status()

    def raft_members(self) -> list[str]:
        return self.raft.raft_members()


class FakeNode:
    """n1 of a two-node cluster (n1, n2); primary or replica per ``primary``.

    The write gate is ``refusal`` (None: open). ``write_error`` / ``ack_error`` are raised by
    ``write`` (before anything is written) and ``acknowledge`` (after); ``read_error`` by
    ``finish_read``.
    """

    def __init__(self, tmp_path: Path, primary: str | None = "n1", epoch: int = 3) -> None:
        self.name = "n1"
        self.role = FakeRole(primary, epoch)
        self.cfg = SimpleNamespace(
            token=TOKEN, limits=LIMITS, source=tmp_path / "cluster.yaml", auth=AuthConfig(),
            managed=None,
            tls=TlsConfig(),
            replication=ReplicationConfig(min_seq_wait_s=0.2, max_frame_bytes=16384),
            nodes=(NodeConfig("n1", Address("10.0.0.1", 8001), tmp_path / "n1",
                              raft=Address("10.0.0.1", 9001)),
                   NodeConfig("n2", Address("10.0.0.2", 8002), tmp_path / "n2",
                              raft=Address("10.0.0.2", 9002), tags=frozenset({"dc2"}))))
        self.data_dir = tmp_path / "n1"
        self.store: Store | None = Store(self.data_dir / "db", CFS, StorageConfig())
        self.control: FakeControl | None = None
        self.source = None
        self.checkpoints = None
        self.follower = None
        self.positions = ReplicaPositions()
        self.gate = FakeGate()
        self.writes = 0
        self.unknown_outcomes = 0
        self.wal_sync = GroupSync(lambda: 0, lambda: None)   # /metrics reads its rounds
        self.watches = WatchStats()
        self.service = None          # not managed mode
        self.unconfirmed_from: int | None = None
        self.refusal: str | None = None
        self.write_error: Exception | None = None
        self.ack_error: Exception | None = None
        self.read_error: Exception | None = None
        self.acknowledged: list[int] = []
        self.reads: list[tuple[str, int]] = []
        self.primary_seq: int | None = None        # replica: what its stream last said
        self.stream_state = "streaming"
        self.reinit_error: Exception | None = None

    @property
    def is_primary(self) -> bool:
        return self.role.primary == self.name

    @property
    def column_families(self) -> list[str]:
        names = self.store.column_families if self.store else list(CFS)
        return [n for n in names if n != SEQ_CF]

    def is_member(self, name: str) -> bool:
        return name in {n.name for n in self.cfg.nodes}

    def latest_seq(self) -> int:
        return self.store.latest_seq() if self.store else 0

    def api_url_of(self, name: str) -> str | None:
        return next((n.api.url for n in self.cfg.nodes if n.name == name), None)

    def leader(self) -> str | None:
        if self.is_primary:
            return self.name if self.refusal is None else None
        return self.role.primary

    def status_epoch(self) -> int:
        return self.role.epoch

    def write(self, ops: list[NamedOp]) -> Any:
        if not self.is_primary or self.refusal:
            raise NotWritable(self.refusal or "not the primary")
        if self.write_error:
            raise self.write_error
        assert self.store is not None
        applied = self.store.write(ops)
        self.writes += 1
        return applied

    async def acknowledge(self, seq: int) -> None:
        if self.ack_error:
            raise self.ack_error
        self.acknowledged.append(seq)

    def acknowledged_through(self) -> int:
        """Everything written counts as acknowledged, unless ``unconfirmed_from`` says from
        which seq on the synchronous set has not confirmed yet."""
        top = self.latest_seq()
        return top if self.unconfirmed_from is None else min(top, self.unconfirmed_from - 1)

    async def make_durable(self, seq: int) -> None:
        pass

    def history_refusal(self, label: int, seq: int) -> str | None:
        return None if label == self.role.epoch else f"epoch {label} is not in this history"

    def begin_read(self) -> int:
        if not self.is_primary or self.refusal:
            raise NotWritable(self.refusal or "not the primary")
        self.reads.append(("begin", self.latest_seq()))
        return self.latest_seq()

    async def finish_read(self, seq: int) -> None:
        self.reads.append(("finish", seq))
        if self.read_error:
            raise self.read_error

    async def wait_applied(self, seq: int, timeout: float) -> int | None:
        return self.latest_seq() if self.latest_seq() >= seq else None

    async def reinit(self) -> str:
        if self.reinit_error:
            raise self.reinit_error
        return self.role.primary or "?"

    def view(self, now: float) -> NodeView:
        leader = self.leader()
        replica = not self.is_primary
        return NodeView(
            name=self.name, is_primary=self.is_primary,
            writable=self.is_primary and self.refusal is None,
            write_refusal=self.refusal if self.is_primary else None,
            epoch=self.role.epoch, leader=leader,
            leader_url=self.api_url_of(leader) if leader else None,
            stream_state=self.stream_state if replica else None,
            applied_seq=self.latest_seq(), primary_seq=self.primary_seq if replica else None,
            last_frame_age_s=0.1 if replica else None, loop_age_s=None,
            lease_s=float("inf"), stream_timeout_s=2.0,
            max_lag=self.cfg.replication.max_replica_lag)

    def status(self) -> dict[str, Any]:
        return {"node": self.name, "role": "primary" if self.is_primary else "replica",
                "primary": self.role.primary, "epoch": self.role.epoch,
                "writable": self.is_primary and self.refusal is None,
                "applied_seq": self.latest_seq(), "column_families": self.column_families}

    def close(self) -> None:
        if self.store is not None:
            self.store.close()


# -- fixtures --------------------------------------------------------------------------------

Serve = Callable[[FakeNode], Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    started: list[tuple[TestClient[Any, Any], FakeNode]] = []

    async def start(node: FakeNode) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(node)))  # type: ignore[arg-type]
        await client.start_server()
        started.append((client, node))
        return client

    yield start
    for client, node in started:
        await client.close()
        node.close()


@pytest.fixture
def primary(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path / "primary", primary="n1")


@pytest.fixture
def replica(tmp_path: Path) -> FakeNode:
    return FakeNode(tmp_path / "replica", primary="n2")


def seq_of(node: FakeNode) -> int:
    assert node.store is not None
    return node.store.latest_seq()


# -- authentication --------------------------------------------------------------------------

async def test_no_token_is_401_with_a_bearer_challenge(primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    for method, path in (("PUT", "/v1/kv/a"), ("GET", "/v1/kv/a"), ("DELETE", "/v1/kv/a"),
                         ("GET", "/v1/kv"), ("POST", "/v1/batch"), ("POST", "/v1/admin/flush"),
                         ("GET", "/cluster"), ("GET", "/metrics"), ("GET", "/history"),
                         ("GET", "/v1/replication/stream"), ("GET", "/no/such/route")):
        resp = await client.request(method, path, data=b"v")
        assert resp.status == 401, (method, path)
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert await resp.json() == {"error": "missing Authorization: Bearer <token>"}
    assert seq_of(primary) == 0


@pytest.mark.parametrize("header", [
    f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer t\u00f6ken",
])
async def test_a_wrong_token_is_403(primary: FakeNode, serve: Serve, header: str) -> None:
    client = await serve(primary)
    resp = await client.put("/v1/kv/a", data=b"v", headers={"Authorization": header})
    assert resp.status == 403
    assert await resp.json() == {"error": "unknown token"}
    assert seq_of(primary) == 0


@pytest.mark.parametrize("header", [TOKEN, f"Basic {TOKEN}", "Bearer ", "Bearer"])
async def test_a_malformed_authorization_is_401(primary: FakeNode, serve: Serve,
                                                header: str) -> None:
    client = await serve(primary)
    resp = await client.put("/v1/kv/a", data=b"v", headers={"Authorization": header})
    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
    assert "Authorization" in (await resp.json())["error"]
    assert seq_of(primary) == 0


async def test_the_scheme_is_case_insensitive(primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)      # RFC 7235: "bearer" is "Bearer"
    resp = await client.put("/v1/kv/a", data=b"v", headers={"Authorization": f"bearer {TOKEN}"})
    assert resp.status == 200 and seq_of(primary) == 2     # the put and its key's seq record


async def test_an_accepted_token_stops_working_once_the_credentials_change(
        primary: FakeNode, serve: Serve) -> None:
    # The middleware remembers accepted verdicts; a reload (SIGHUP: a new auth section or
    # shared token) must end them at once, and the remembered ones must not widen a role.
    write_token, write_entry = new_token(Role.WRITE, "app")
    read_token, read_entry = new_token(Role.READ, "viewer")
    primary.cfg.auth = AuthConfig(tokens=(write_entry, read_entry))
    client = await serve(primary)
    as_writer = {"Authorization": f"Bearer {write_token}"}
    as_reader = {"Authorization": f"Bearer {read_token}"}
    for _ in range(2):                  # the second time from what the middleware remembers
        assert (await client.put("/v1/kv/a", data=b"v", headers=as_writer)).status == 200
        assert (await client.get("/v1/kv/a", headers=as_reader)).status == 200
        refused = await client.put("/v1/kv/a", data=b"w", headers=as_reader)
        assert refused.status == 403
        assert "needs the write role" in (await refused.json())["error"]
        assert (await client.post("/v1/admin/flush", headers=as_writer)).status == 403
        assert (await client.put("/v1/kv/a", data=b"v", headers={
            "Authorization": f"Bearer {TOKEN}"})).status == 200
    # A reload: the write token and the shared token are gone, the read token stays.
    primary.cfg.auth = AuthConfig(tokens=(read_entry,))
    primary.cfg.token = None
    resp = await client.put("/v1/kv/a", data=b"v", headers=as_writer)
    assert resp.status == 403 and await resp.json() == {"error": "unknown token"}
    resp = await client.put("/v1/kv/a", data=b"v", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 403 and await resp.json() == {"error": "unknown token"}
    assert (await client.get("/v1/kv/a", headers=as_reader)).status == 200


async def test_remembered_verdicts_are_bounded(primary: FakeNode, serve: Serve,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_module, "MAX_CACHED_VERDICTS", 4)
    client = await serve(primary)
    # Variants of one accepted header (the scheme's case) are distinct keys: past the bound
    # the memory starts over; every one is still judged right.
    variants = ["".join(c.upper() if (i >> j) & 1 else c for j, c in enumerate("bearer"))
                for i in range(12)]
    for _ in range(2):
        for scheme in variants:
            resp = await client.get("/v1/kv/a", headers={"Authorization": f"{scheme} {TOKEN}"})
            assert resp.status == 404, scheme        # authorized; the key does not exist
    resp = await client.get("/v1/kv/a", headers={"Authorization": f"Bearer {TOKEN}x"})
    assert resp.status == 403


async def test_health_checks_status_and_leader_answer_without_a_token(
        primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    for path in ("/health", "/liveness", "/readiness", "/leader", "/primary", "/replica",
                 "/read-only", "/status"):
        resp = await client.get(path)
        # A writable primary: every check passes but "am I a replica".
        assert resp.status == (503 if path == "/replica" else 200), path
        assert (await resp.json())["node"] == "n1"
    health = await (await client.get("/health")).json()
    assert (health["status"], health["node"]) == ("ok", "n1")


# -- key-value on a primary ------------------------------------------------------------------

async def test_put_get_delete_on_the_primary(primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    resp = await client.put("/v1/kv/greeting", data=b"hello", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {"seq": 2, "first_seq": 1, "epoch": 3, "node": "n1"}
    assert primary.acknowledged == [2]

    resp = await client.put("/v1/kv/u%2F1?cf=users", data=b"\x00\xff", headers=AUTH)
    assert (resp.status, (await resp.json())["seq"]) == (200, 4)
    assert primary.store is not None
    assert primary.store.get(b"u/1", "users") == b"\x00\xff"

    resp = await client.get("/v1/kv/greeting", headers=AUTH)
    assert (resp.status, await resp.read()) == (200, b"hello")
    assert resp.headers["X-Hacluster-Lag"] == "0"
    assert resp.content_type == "application/octet-stream"
    # Rule 8: the read was confirmed at the seq it saw before it was answered.
    assert primary.reads == [("begin", 4), ("finish", 4)]
    assert resp.headers["X-Hacluster-Key-Seq"] == "2"

    resp = await client.delete("/v1/kv/greeting", headers=AUTH)
    assert (resp.status, (await resp.json())["seq"]) == (200, 6)
    resp = await client.get("/v1/kv/greeting", headers=AUTH)
    assert resp.status == 404
    assert await resp.json() == {"error": "not found", "key": "greeting"}
    assert primary.acknowledged == [2, 4, 6]
    assert seq_of(primary) == 6


async def test_batch_and_scan_on_the_primary(primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    ops = [{"op": "put", "key": "k1", "value": "a"}, {"op": "put", "key": "k2", "value": "b"},
           {"op": "put", "key_b64": base64.b64encode(b"k3\xff").decode(), "value": "c"},
           {"op": "put", "cf": "users", "key": "k9", "value": "u"}]
    resp = await client.post("/v1/batch", json={"ops": ops}, headers=AUTH)
    assert resp.status == 200
    # Four ops and their keys' seq records: eight seqs.
    assert (await resp.json())["seq"] == 8 and (await resp.json())["first_seq"] == 1

    resp = await client.get("/v1/kv?prefix=k&limit=2", headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {"items": [{"key": "k1", "value": "a"},
                                           {"key": "k2", "value": "b"}],
                                 "more": True, "seq": 8}
    resp = await client.get("/v1/kv?prefix=k&limit=2&seqs=1", headers=AUTH)
    assert [i["seq"] for i in (await resp.json())["items"]] == [8, 8]
    resp = await client.get("/v1/kv?prefix=k&start_after=k2", headers=AUTH)
    assert (await resp.json())["items"] == [
        {"key_b64": base64.b64encode(b"k3\xff").decode(), "value": "c"}]
    resp = await client.get("/v1/kv?cf=users", headers={**AUTH, "Accept": CBOR_TYPE})
    assert resp.content_type == CBOR_TYPE
    assert cbor2.loads(await resp.read()) == {"items": [[b"k9", b"u"]], "more": False,
                                              "seq": 8}


@pytest.mark.parametrize(("method", "path", "body", "message"), [
    ("PUT", "/v1/kv/k?cf=nope", b"v", "cf: unknown column family 'nope'"),
    ("PUT", "/v1/kv/" + "k" * 33, b"v", "key: key of 33 bytes exceeds max_key_bytes (32)"),
    ("PUT", "/v1/kv/k", b"v" * 1001, "value: value of 1001 bytes exceeds max_value_bytes "
     "(1000)"),
    ("DELETE", "/v1/kv/k?cf=nope", b"", "cf: unknown column family 'nope'"),
    ("POST", "/v1/batch", b"{", None),
    ("POST", "/v1/batch", json.dumps([{"op": "put", "key": "k", "value": "v"}] * 5).encode(),
     "5 ops exceed max_batch_ops (4)"),
    ("GET", "/v1/kv?limit=0", b"", "limit: must be an integer from 1 to 10000"),
    ("GET", "/v1/kv?prefix_b64=%%%", b"", "prefix_b64: not valid base64"),
    ("GET", "/v1/kv/k?min_seq=-1", b"", "min_seq: must be a non-negative integer sequence "
     "number"),
])
async def test_bad_requests_are_400_and_write_nothing(
        primary: FakeNode, serve: Serve, method: str, path: str, body: bytes,
        message: str | None) -> None:
    client = await serve(primary)
    resp = await client.request(method, path, data=body, headers=AUTH)
    assert resp.status == 400
    got = (await resp.json())["error"]
    if message is not None:
        assert got == message
    assert seq_of(primary) == 0 and primary.acknowledged == []


async def test_a_body_over_the_limit_is_413_and_writes_nothing(
        primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    limit = primary.cfg.limits.max_body_bytes
    resp = await client.post("/v1/batch", data=b"[" + b" " * 9000 + b"]", headers=AUTH)
    assert resp.status == 413 and resp.content_type == "application/json"
    assert await resp.json() == {
        "error": f"request body is larger than limits.max_body_bytes ({limit} bytes)",
        "limit": limit}
    assert seq_of(primary) == 0


async def test_an_unknown_path_and_method_answer_json(primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    resp = await client.get("/no/such/route", headers=AUTH)
    assert (resp.status, resp.content_type) == (404, "application/json")
    assert await resp.json() == {"error": "no such path", "path": "/no/such/route"}
    resp = await client.patch("/v1/kv/a", data=b"x", headers=AUTH)
    assert (resp.status, resp.content_type) == (405, "application/json")
    body = await resp.json()
    assert body["error"] == "method PATCH is not allowed on this path"
    assert "PUT" in body["allowed"] and resp.headers["Allow"] == ",".join(body["allowed"])
    assert seq_of(primary) == 0


async def test_a_write_too_big_for_one_replication_frame_is_413(
        primary: FakeNode, serve: Serve) -> None:
    primary.cfg.replication = ReplicationConfig(max_frame_bytes=FRAME_OVERHEAD + 600)
    client = await serve(primary)
    ops = [{"op": "put", "key": f"k{i}", "value": "v" * 200} for i in range(3)]
    resp = await client.post("/v1/batch", json=ops, headers=AUTH)
    assert resp.status == 413
    assert "exceeds what one replication frame carries (600 bytes" in \
        (await resp.json())["error"]
    assert seq_of(primary) == 0


# -- the write gate --------------------------------------------------------------------------

async def test_a_shut_gate_refuses_writes_and_reads_with_503(
        primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    await client.put("/v1/kv/a", data=b"1", headers=AUTH)
    primary.refusal = "lease expired 0.210 s ago (no committed renewal)"
    resp = await client.put("/v1/kv/a", data=b"2", headers=AUTH)
    assert resp.status == 503
    assert await resp.json() == {"error": "not accepting writes: lease expired 0.210 s ago "
                                          "(no committed renewal)", "leader": None}
    resp = await client.get("/v1/kv/a", headers=AUTH)
    assert resp.status == 503
    assert await resp.json() == {"error": "not serving reads: lease expired 0.210 s ago (no "
                                          "committed renewal)", "leader": None}
    resp = await client.get("/v1/kv", headers=AUTH)
    assert resp.status == 503
    # A stale read is this node's own copy, gate or not.
    resp = await client.get("/v1/kv/a?stale=1", headers=AUTH)
    assert (resp.status, await resp.read()) == (200, b"1")
    assert primary.store is not None and primary.store.get(b"a") == b"1"


async def test_disk_full_is_507_and_nothing_is_written(primary: FakeNode, serve: Serve) -> None:
    primary.write_error = DiskFull("only 12 MB free, 64 MB required")
    client = await serve(primary)
    for resp in (await client.put("/v1/kv/a", data=b"1", headers=AUTH),
                 await client.delete("/v1/kv/a", headers=AUTH),
                 await client.post("/v1/batch", json=[{"op": "delete", "key": "a"}],
                                   headers=AUTH)):
        assert resp.status == 507
        assert await resp.json() == {
            "error": "disk full, write refused: only 12 MB free, 64 MB required"}
    assert seq_of(primary) == 0 and primary.acknowledged == []


async def test_an_unconfirmed_write_is_503_outcome_unknown_and_counted(
        primary: FakeNode, serve: Serve) -> None:
    primary.ack_error = OutcomeUnknown("written locally at seq 1 but not confirmed by the "
                                       "synchronous set ['n2'] within 5.0 s")
    client = await serve(primary)
    resp = await client.put("/v1/kv/a", data=b"1", headers=AUTH)
    assert resp.status == 503
    assert await resp.json() == {"error": "written locally at seq 1 but not confirmed by the "
                                          "synchronous set ['n2'] within 5.0 s",
                                 "outcome": "unknown"}
    assert primary.unknown_outcomes == 1
    assert seq_of(primary) == 2          # it is in the local store, only not acknowledged


@pytest.mark.parametrize(("exc", "status", "message"), [
    (StoreError("unknown column family 'x'"), 400, "unknown column family 'x'"),
    (Exception("IO error: /data/db/000012.log: Input/output error"), 500,
     "write failed: IO error: /data/db/000012.log: Input/output error"),
])
async def test_store_and_io_errors_of_a_write(primary: FakeNode, serve: Serve,
                                              exc: Exception, status: int,
                                              message: str) -> None:
    primary.write_error = exc
    client = await serve(primary)
    resp = await client.put("/v1/kv/a", data=b"1", headers=AUTH)
    assert (resp.status, await resp.json()) == (status, {"error": message})


async def test_a_read_the_primary_cannot_confirm_is_503(primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    await client.put("/v1/kv/a", data=b"1", headers=AUTH)
    primary.read_error = NotWritable("lease expired 0.010 s ago (no committed renewal)")
    resp = await client.get("/v1/kv/a", headers=AUTH)
    assert resp.status == 503
    assert await resp.json() == {"error": "read at seq 2 not confirmed: lease expired 0.010 s "
                                          "ago (no committed renewal)", "leader": None}
    resp = await client.get("/v1/kv/missing", headers=AUTH)     # a 404 is held back too
    assert resp.status == 503


# -- a replica -------------------------------------------------------------------------------

async def test_a_replica_redirects_writes_and_reads_to_the_primary_with_307(
        replica: FakeNode, serve: Serve) -> None:
    client = await serve(replica)
    for method, path in (("PUT", "/v1/kv/a?cf=users"), ("DELETE", "/v1/kv/a"),
                         ("GET", "/v1/kv/a"), ("GET", "/v1/kv?prefix=p&limit=5"),
                         ("POST", "/v1/batch")):
        resp = await client.request(method, path, data=b"x", headers=AUTH,
                                    allow_redirects=False)
        assert resp.status == 307, (method, path)
        assert resp.headers["Location"] == f"{N2_URL}{path}"
        assert resp.content_type == "application/json"
        assert await resp.json() == {"error": "not the primary", "primary": "n2",
                                     "location": f"{N2_URL}{path}"}
    assert seq_of(replica) == 0


async def test_a_replica_with_no_primary_known_answers_503(
        tmp_path: Path, serve: Serve) -> None:
    node = FakeNode(tmp_path, primary=None)
    client = await serve(node)
    resp = await client.put("/v1/kv/a", data=b"x", headers=AUTH, allow_redirects=False)
    assert (resp.status, await resp.json()) == (503, {"error": "no primary is known",
                                                      "leader": None})


async def test_a_replica_serves_stale_and_min_seq_reads_from_its_own_store(
        replica: FakeNode, serve: Serve) -> None:
    assert replica.store is not None
    replica.store.write([(1, "default", b"a", b"1"), (1, "default", b"b", b"2")])
    replica.primary_seq = 10
    client = await serve(replica)
    resp = await client.get("/v1/kv/a?stale=1", headers=AUTH)
    assert (resp.status, await resp.read()) == (200, b"1")
    assert (resp.headers["X-Hacluster-Lag"], resp.headers["X-Hacluster-Seq"]) == ("6", "4")
    resp = await client.get("/v1/kv?stale=true", headers=AUTH)
    assert (await resp.json())["items"] == [{"key": "a", "value": "1"},
                                            {"key": "b", "value": "2"}]
    resp = await client.get("/v1/kv/b?min_seq=4", headers=AUTH)
    assert (resp.status, await resp.read()) == (200, b"2")
    resp = await client.get("/v1/kv/b?min_seq=5", headers=AUTH)
    assert resp.status == 503
    assert await resp.json() == {"error": "n1 has not reached seq 5 within 0.2 s (it is at "
                                          "seq 4)", "seq": 4, "min_seq": 5}
    replica.primary_seq = None
    resp = await client.get("/v1/kv/a?stale=1", headers=AUTH)
    assert resp.headers["X-Hacluster-Lag"] == "unknown"


async def test_replication_routes_are_refused_on_a_replica(
        replica: FakeNode, serve: Serve) -> None:
    client = await serve(replica)
    for method, path in (("GET", "/v1/replication/stream?node=n3&since=0"),
                         ("POST", "/v1/replication/ack"),
                         ("POST", "/v1/replication/checkpoints"),
                         ("GET", "/v1/replication/checkpoints/x/files/CURRENT"),
                         ("DELETE", "/v1/replication/checkpoints/x")):
        resp = await client.request(method, path, headers=AUTH)
        assert resp.status == 503, path
        assert await resp.json() == {"error": "n1 is not the primary", "primary": "n2"}


# -- info routes -----------------------------------------------------------------------------

async def test_leader_names_the_primary_or_answers_503(primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    resp = await client.get("/leader")
    assert (resp.status, await resp.json()) == (200, {"leader": "n1", "url": N1_URL,
                                                      "epoch": 3, "node": "n1"})
    primary.refusal = "lease expired"
    resp = await client.get("/leader")
    assert (resp.status, await resp.json()) == (503, {"error": "no valid primary is known",
                                                      "node": "n1", "leader": None,
                                                      "epoch": 3})


async def test_leader_on_a_replica_points_at_the_primary(
        replica: FakeNode, serve: Serve) -> None:
    client = await serve(replica)
    resp = await client.get("/leader")
    assert (resp.status, await resp.json()) == (200, {"leader": "n2", "url": N2_URL,
                                                      "epoch": 3, "node": "n1"})


async def test_status_serves_the_node_status_as_json(primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    await client.put("/v1/kv/a", data=b"1", headers=AUTH)
    resp = await client.get("/status")
    assert resp.status == 200 and resp.content_type == "application/json"
    assert await resp.json() == {"node": "n1", "role": "primary", "primary": "n1", "epoch": 3,
                                 "writable": True, "applied_seq": 2,
                                 "column_families": ["default", "users"]}


async def test_probes_follow_the_node_view(primary: FakeNode, replica: FakeNode,
                                           serve: Serve) -> None:
    p = await serve(primary)
    assert (await p.get("/primary")).status == 200
    assert (await p.get("/replica")).status == 503
    assert (await p.get("/readiness")).status == 200
    primary.refusal = "disk full"
    resp = await p.get("/primary")
    assert resp.status == 503 and (await resp.json())["reason"] == "disk full"

    r = await serve(replica)
    replica.primary_seq = 50
    assert (await r.get("/primary")).status == 503
    resp = await r.get("/replica?lag=60")
    assert resp.status == 200 and (await resp.json())["lag"] == 50
    resp = await r.get("/replica?lag=10")
    assert resp.status == 503 and (await resp.json())["reason"] == \
        "50 behind, over the allowed 10"
    resp = await r.get("/read-only?lag=x")
    assert resp.status == 400
    assert await resp.json() == {"error": "lag must be a non-negative integer"}


async def test_cluster_and_history_in_static_mode(primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    cluster = await (await client.get("/cluster", headers=AUTH)).json()
    assert (cluster["leader"], cluster["epoch"], cluster["paused"]) == ("n1", 3, False)
    assert [(m["name"], m["url"], m["role"], m["state"], m["applied_seq"], m["tags"])
            for m in cluster["members"]] == [
        ("n1", N1_URL, "primary", "running", 0, []),
        ("n2", N2_URL, "replica", "unknown", None, ["dc2"])]
    history = await (await client.get("/history", headers=AUTH)).json()
    assert history == [{"kind": "epoch", "epoch": 3, "primary": "n1", "first_seq": None,
                        "start_time": None, "reason": "configured"}]


async def test_metrics_show_role_seq_and_request_latency(primary: FakeNode,
                                                         serve: Serve) -> None:
    client = await serve(primary)
    await client.put("/v1/kv/a", data=b"1", headers=AUTH)
    resp = await client.get("/metrics", headers=AUTH)
    assert resp.status == 200
    text = await resp.text()
    assert 'hacluster_role{role="primary"} 1.0' in text
    assert "hacluster_applied_seq 2.0" in text
    assert "hacluster_epoch 3.0" in text
    assert ('hacluster_http_request_duration_seconds_count{method="PUT",route="/v1/kv/{key}",'
            'status="200"} 1.0') in text


# -- admin -----------------------------------------------------------------------------------

async def test_flush_compact_and_hash(primary: FakeNode, serve: Serve) -> None:
    client = await serve(primary)
    await client.put("/v1/kv/a", data=b"1", headers=AUTH)
    for path, key in (("/v1/admin/flush", "flushed"), ("/v1/admin/compact", "compacted")):
        resp = await client.post(path, headers=AUTH)
        assert (resp.status, await resp.json()) == (200, {key: [*CFS, SEQ_CF], "seq": 2})
    resp = await client.get("/v1/admin/hash", headers=AUTH)
    assert primary.store is not None
    assert (resp.status, await resp.json()) == (200, primary.store.content_hash())
    assert (await resp.json())["column_families"]["default"]["keys"] == 1


async def test_store_actions_without_a_database_are_503(primary: FakeNode,
                                                        serve: Serve) -> None:
    client = await serve(primary)
    assert primary.store is not None
    primary.store.close()
    primary.store = None
    for method, path in (("POST", "/v1/admin/flush"), ("POST", "/v1/admin/compact"),
                         ("GET", "/v1/admin/hash"), ("GET", "/v1/kv/a?stale=1")):
        resp = await client.request(method, path, headers=AUTH)
        assert (resp.status, await resp.json()) == (503, {"error": "no database open"}), path


async def test_consensus_actions_in_static_mode_are_409(primary: FakeNode,
                                                        serve: Serve) -> None:
    client = await serve(primary)
    static = "no consensus in this cluster (static primary)"
    for path, what in (("/v1/admin/pause", "nothing to pause"),
                       ("/v1/admin/resume", "nothing to pause"),
                       ("/v1/admin/raft/compact", "no Raft log"),
                       ("/v1/admin/switchover", "no switchover"),
                       ("/v1/admin/failover", "no failover"),
                       ("/v1/admin/members", "no Raft membership")):
        resp = await client.post(path, json={"to": "n2"}, headers=AUTH)
        assert (resp.status, await resp.json()) == (409, {"error": f"{static}: {what}"}), path


async def test_pause_and_resume(primary: FakeNode, serve: Serve) -> None:
    primary.control = control = FakeControl()
    client = await serve(primary)
    resp = await client.post("/v1/admin/pause", headers=AUTH)
    assert (resp.status, await resp.json()) == (200, {"paused": True})
    resp = await client.post("/v1/admin/resume", headers=AUTH)
    assert (resp.status, await resp.json()) == (200, {"paused": False})
    control.paused_result = None
    resp = await client.post("/v1/admin/pause", headers=AUTH)
    assert (resp.status, await resp.json()) == (
        503, {"error": "not committed: no Raft quorum reachable"})
    assert control.calls == [("set_paused", True), ("set_paused", False), ("set_paused", True)]


async def test_switchover(primary: FakeNode, serve: Serve) -> None:
    primary.control = control = FakeControl()
    client = await serve(primary)
    resp = await client.post("/v1/admin/switchover", json={"to": "n2"}, headers=AUTH)
    assert (resp.status, await resp.json()) == (200, {"switched_over_to": "n2", "from": "n1"})
    resp = await client.post("/v1/admin/switchover", headers=AUTH)       # no body: any
    assert resp.status == 200
    assert control.calls == [("switchover", "n2"), ("switchover", None)]

    control.fail = RequestRefused("n2 is 1200 behind (maximum_lag_on_failover 1000)")
    resp = await client.post("/v1/admin/switchover", json={"to": "n2"}, headers=AUTH)
    assert (resp.status, await resp.json()) == (
        409, {"error": "n2 is 1200 behind (maximum_lag_on_failover 1000)"})

    for body, message in ((b"{not json", 'body must be JSON {"to": NAME} or empty'),
                          (b'{"to": 5}', "'to' must be a node name")):
        resp = await client.post("/v1/admin/switchover", data=body, headers=AUTH)
        assert (resp.status, await resp.json()) == (400, {"error": message})
    assert len(control.calls) == 3


async def test_switchover_on_a_replica_is_sent_to_the_primary(replica: FakeNode,
                                                               serve: Serve) -> None:
    replica.control = control = FakeControl()
    client = await serve(replica)
    resp = await client.post("/v1/admin/switchover", json={"to": "n1"}, headers=AUTH,
                             allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (307, f"{N2_URL}/v1/admin/switchover")
    assert control.calls == []


async def test_failover(replica: FakeNode, serve: Serve) -> None:
    replica.control = control = FakeControl()
    client = await serve(replica)
    resp = await client.post("/v1/admin/failover", json={"to": "n1", "force": True},
                             headers=AUTH)
    assert (resp.status, await resp.json()) == (202, {"failover_to": "n1", "after_epoch": 7,
                                                      "force": True})
    for body in ({}, {"to": "n1", "force": "yes"}, {"to": 1}):
        resp = await client.post("/v1/admin/failover", json=body, headers=AUTH)
        assert resp.status == 400, body
    control.fail = RequestRefused("n2 still holds a valid lease; use force")
    resp = await client.post("/v1/admin/failover", json={"to": "n1"}, headers=AUTH)
    assert (resp.status, await resp.json()) == (
        409, {"error": "n2 still holds a valid lease; use force"})
    assert control.calls == [("failover", "n1", True), ("failover", "n1", False)]


async def test_members(primary: FakeNode, serve: Serve) -> None:
    primary.control = control = FakeControl()
    client = await serve(primary)
    resp = await client.post("/v1/admin/members", json={"name": "n3", "raft": "10.0.0.3:9003"},
                             headers=AUTH)
    assert (resp.status, await resp.json()) == (200, {
        "added": "n3", "raft": "10.0.0.3:9003",
        "raft_members": ["10.0.0.1:9001", "10.0.0.2:9002", "10.0.0.3:9003"]})
    # Removing a configured node: its Raft address comes from the config.
    resp = await client.delete("/v1/admin/members/n2", headers=AUTH)
    assert (resp.status, (await resp.json())["removed"]) == (200, "n2")
    assert control.calls == [("add", "n3", "10.0.0.3:9003"), ("remove", "n2", "10.0.0.2:9002")]

    resp = await client.post("/v1/admin/members", json={"name": "n4", "raft": "nope"},
                             headers=AUTH)
    assert resp.status == 400 and "expected host:port" in (await resp.json())["error"]
    resp = await client.post("/v1/admin/members", json={"name": "n4"}, headers=AUTH)
    assert (resp.status, await resp.json()) == (
        400, {"error": "'name' and 'raft' (host:port) are required"})

    control.fail = NotCommitted("membership change not committed within 10.0 s")
    resp = await client.post("/v1/admin/members", json={"name": "n4", "raft": "10.0.0.4:1"},
                             headers=AUTH)
    assert (resp.status, await resp.json()) == (
        503, {"error": "membership change not committed within 10.0 s", "outcome": "unknown"})
    control.fail = RequestRefused("n1 is the primary: switch over first")
    resp = await client.delete("/v1/admin/members/n1", headers=AUTH)
    assert (resp.status, await resp.json()) == (
        409, {"error": "n1 is the primary: switch over first"})


async def test_raft_compact(primary: FakeNode, serve: Serve) -> None:
    primary.control = control = FakeControl()
    client = await serve(primary)
    resp = await client.post("/v1/admin/raft/compact", headers=AUTH)
    assert (resp.status, await resp.json()) == (202, {"compacting": True,
                                                      "raft": {"log_len": 7,
                                                               "compactions": 1}})
    assert control.raft.compactions == 1


async def test_reinit(replica: FakeNode, serve: Serve) -> None:
    client = await serve(replica)
    resp = await client.post("/v1/admin/reinit", headers=AUTH)
    assert (resp.status, await resp.json()) == (202, {"reinit": "n1", "from": "n2"})
    replica.reinit_error = NotWritable("n1 is the primary; switch over first")
    resp = await client.post("/v1/admin/reinit", headers=AUTH)
    assert (resp.status, await resp.json()) == (
        409, {"error": "reinit refused: n1 is the primary; switch over first"})


# -- compare-and-set, transactions and watches -------------------------------------------------

async def test_a_conditional_put_writes_only_at_the_seq_it_names(primary: FakeNode,
                                                                 serve: Serve) -> None:
    client = await serve(primary)
    resp = await client.put("/v1/kv/c?if_seq=0", data=b"1", headers=AUTH)
    assert resp.status == 200
    first = (await resp.json())["seq"]
    resp = await client.put("/v1/kv/c?if_seq=0", data=b"x", headers=AUTH)
    assert resp.status == 412
    assert await resp.json() == {"error": f"precondition failed: the key was last written at "
                                          f"seq {first}, not 0", "seq": first, "key": "c"}
    # A refused condition is a read: answered once what it saw is confirmed (rule 8).
    assert primary.reads[-2:] == [("begin", first), ("finish", first)]
    resp = await client.put(f"/v1/kv/c?if_seq={first}", data=b"2", headers=AUTH)
    assert resp.status == 200
    assert primary.store is not None and primary.store.get(b"c") == b"2"
    resp = await client.delete(f"/v1/kv/c?if_seq={first}", headers=AUTH)
    assert resp.status == 412 and primary.store.get(b"c") == b"2"
    for bad in ("abc", "-1", "1.5", "99999999999999999999", "²"):
        resp = await client.put(f"/v1/kv/c?if_seq={bad}", data=b"3", headers=AUTH)
        assert resp.status == 400, bad
        assert "if_seq" in (await resp.json())["error"]
    assert primary.store.get(b"c") == b"2"


async def test_a_transaction_runs_then_or_else_atomically(primary: FakeNode,
                                                          serve: Serve) -> None:
    client = await serve(primary)
    await client.put("/v1/kv/a", data=b"10", headers=AUTH)
    body = {"compare": [{"key": "a", "value": "10"}],    # max_batch_ops is 4 here
            "then": [{"op": "put", "key": "a", "value": "9"},
                     {"op": "put", "key": "b", "value": "1"}],
            "else": [{"op": "put", "key": "failed", "value": "1"}]}
    resp = await client.post("/v1/txn", json=body, headers=AUTH)
    doc = await resp.json()
    assert resp.status == 200 and doc["succeeded"] is True
    assert [c["seq"] for c in doc["compared"]] == [2]
    assert doc["seq"] == 6 and doc["first_seq"] == 3
    assert primary.store is not None
    assert (primary.store.get(b"a"), primary.store.get(b"b")) == (b"9", b"1")
    # The same again: the compares fail, so the else ops run.
    resp = await client.post("/v1/txn", json=body, headers=AUTH)
    doc = await resp.json()
    assert doc["succeeded"] is False and [c["seq"] for c in doc["compared"]] == [6]
    assert primary.store.get(b"failed") == b"1" and primary.store.get(b"a") == b"9"
    # No ops in the chosen branch: a read, confirmed before it is answered.
    resp = await client.post("/v1/txn", json={"compare": [{"key": "a", "seq": 6},
                                                          {"key": "zz", "exists": False}]},
                             headers=AUTH)
    doc = await resp.json()
    assert doc["succeeded"] is True and doc["first_seq"] is None
    assert [c["seq"] for c in doc["compared"]] == [6, 0]
    assert primary.reads[-1] == ("finish", doc["seq"])


@pytest.mark.parametrize("body, fragment", [
    ({"compare": [{"key": "a", "seq": {"nested": [1]}}]}, "compare[0].seq"),
    ({"compare": [{"key": "a", "seq": -1}]}, "compare[0].seq"),
    ({"compare": [{"key": "a", "seq": True}]}, "compare[0].seq"),
    ({"compare": [{"key": "a", "seq": 1, "value": "x"}]}, "exactly one"),
    ({"compare": [{"key": "a"}]}, "exactly one"),
    ({"compare": [{"key": "a", "exists": "yes"}]}, "compare[0].exists"),
    ({"compare": [{"key": "a", "exists": True, "why": 1}]}, "unknown fields"),
    ({"compare": "a"}, "compare: expected a list"),
    ({"then": [[["put"]]]}, "then[0]: expected a map"),
    ({"then": [{"op": "put", "key": "k"}], "else": {"op": "put"}}, "else: expected a list"),
    ({"then": [{"op": "merge", "key": "k"}]}, "then[0].op"),
    ({"compare": [], "then": [], "else": []}, "empty transaction"),
    ({"ops": []}, "unknown transaction fields"),
    ([1, 2], "must be a map"),
    ({"compare": [{"key": "a", "exists": True}],
      "then": [{"op": "put", "key": f"k{i}", "value": "v"} for i in range(2)],
      "else": [{"op": "put", "key": f"k{i}", "value": "v"} for i in range(2)]},
     "5 compares and ops exceed max_batch_ops (4)"),
])
async def test_a_malformed_transaction_is_refused_whole(primary: FakeNode, serve: Serve,
                                                        body: Any, fragment: str) -> None:
    client = await serve(primary)
    resp = await client.post("/v1/txn", json=body, headers=AUTH)
    assert resp.status == 400
    assert fragment in (await resp.json())["error"]
    assert seq_of(primary) == 0


async def read_lines(resp: Any, count: int) -> list[dict[str, Any]]:
    out = []
    while len(out) < count:
        line = await resp.content.readline()
        assert line, f"the stream ended after {out}"
        out.append(json.loads(line))
    return out


async def test_a_watch_delivers_changes_under_its_prefix_from_a_seq(primary: FakeNode,
                                                                   serve: Serve) -> None:
    assert primary.store is not None
    primary.store.write([(1, "default", b"w/a", b"1"), (1, "default", b"x/b", b"2")])
    primary.store.write([(2, "default", b"w/a", b""), (1, "users", b"w/u", b"3")])
    primary.store.write([(4, "default", b"w/", b"w0")])        # delete_range
    client = await serve(primary)
    resp = await client.get("/v1/watch?prefix=w/&since_seq=1&progress_ms=100", headers=AUTH)
    assert resp.status == 200 and resp.content_type == "application/x-ndjson"
    lines = await read_lines(resp, 4)
    assert lines[:3] == [
        {"seq": 4, "epoch": 3, "events": [{"type": "put", "key": "w/a", "value": "1"}]},
        {"seq": 8, "epoch": 3, "events": [{"type": "delete", "key": "w/a"}]},
        {"seq": 10, "epoch": 3, "events": [{"type": "delete_range", "start": "w/",
                                             "end": "w0"}]}]
    assert lines[3] == {"progress": 10, "epoch": 3}
    # A write not yet confirmed is held back until it is.
    primary.unconfirmed_from = 11
    primary.store.write([(1, "default", b"w/late", b"4")])
    assert (await read_lines(resp, 1))[0] == {"progress": 10, "epoch": 3}
    primary.unconfirmed_from = None
    assert (await read_lines(resp, 1))[0]["seq"] == 12
    resp.close()
    # Resumed inside a batch: the batch is delivered whole, nothing before it.
    resp = await client.get("/v1/watch?prefix=w/&since_seq=6", headers=AUTH)
    assert (await read_lines(resp, 1))[0]["seq"] == 8
    resp.close()
    # CBOR with bytes as bytes; a prefix given in base64.
    resp = await client.get("/v1/watch?prefix_b64=dy9s&since_seq=1",
                            headers={**AUTH, "Accept": CBOR_TYPE})
    assert resp.status == 200, await resp.text()
    buf = b""
    items: list[Any] = []
    while len(items) < 2:
        buf += await resp.content.readany()
        stream = io.BytesIO(buf)
        items = []
        try:
            while stream.tell() < len(buf):
                items.append(cbor2.CBORDecoder(stream).decode())
        except cbor2.CBORDecodeEOF:
            pass
    # The range delete [w/, w0) covers w/l... too.
    assert items == [{"seq": 10, "epoch": 3, "events": [{"type": "delete_range",
                                                         "start": b"w/", "end": b"w0"}]},
                     {"seq": 12, "epoch": 3,
                      "events": [{"type": "put", "key": b"w/late", "value": b"4"}]}]
    resp.close()


async def test_a_watch_on_a_promoted_replica_gives_each_write_of_a_run_its_own_line(
        primary: FakeNode, serve: Serve, tmp_path: Path) -> None:
    """A replica writes a run of the primary's writes as one WAL record; once it is the
    primary, a watch still sees each write once, under the seq its writer was answered."""
    origin = Store(tmp_path / "origin", CFS, StorageConfig())
    writes: list[list[NamedOp]] = [
        [(1, "default", b"w/a", b"1"), (1, "users", b"w/u", b"2")],
        [(1, "default", b"x/other", b"3")], [(2, "default", b"w/a", b"")],
        [(4, "default", b"w/", b"w0")]]
    answered = [origin.write(ops).last_seq for ops in writes]
    store = primary.store
    assert store is not None
    apply_as_runs(origin, store)
    origin.close()
    with WalReader(store.db_dir, 1) as reader:
        assert len(reader.read()) == 1             # one record holds all four writes
    client = await serve(primary)
    resp = await client.get("/v1/watch?prefix=w/&since_seq=1", headers=AUTH)
    assert await read_lines(resp, 3) == [
        {"seq": answered[0], "epoch": 3, "events": [{"type": "put", "key": "w/a",
                                                     "value": "1"}]},
        {"seq": answered[2], "epoch": 3, "events": [{"type": "delete", "key": "w/a"}]},
        {"seq": answered[3], "epoch": 3, "events": [{"type": "delete_range", "start": "w/",
                                                     "end": "w0"}]}]
    resp.close()
    # Resumed after the first write (inside the record): nothing of it again.
    resp = await client.get(f"/v1/watch?prefix=w/&since_seq={answered[0] + 1}", headers=AUTH)
    assert [line["seq"] for line in await read_lines(resp, 2)] == answered[2:]
    resp.close()


@pytest.mark.parametrize("query, status, fragment", [
    ("since_seq=-1", 400, "since_seq"),
    ("since_seq=abc", 400, "since_seq"),
    ("since_seq=0", 400, "start at 1"),
    ("since_seq=100", 400, "in the future"),
    ("since_seq=1&cf=nope", 400, "unknown column family"),
    ("since_seq=1&cf=_hacluster.key_seq", 400, "unknown column family"),
    ("since_seq=1&progress_ms=5", 400, "progress_ms"),
    ("prefix_b64=***", 400, "prefix_b64"),
    ("since_seq=2&epoch=2", 409, "history differs"),
])
async def test_a_watch_with_bad_parameters_is_refused(primary: FakeNode, serve: Serve,
                                                      query: str, status: int,
                                                      fragment: str) -> None:
    assert primary.store is not None
    primary.store.write([(1, "default", b"a", b"1")])
    client = await serve(primary)
    resp = await client.get(f"/v1/watch?{query}", headers=AUTH)
    assert resp.status == status
    assert fragment in (await resp.json())["error"]


async def test_a_watch_from_a_seq_the_wal_no_longer_holds_is_410(primary: FakeNode,
                                                                serve: Serve) -> None:
    store = primary.store
    assert store is not None
    store.write([(1, "default", b"a", b"1")])
    store.flush()                           # a new WAL; the old one is archived
    store.write([(1, "default", b"b", b"2")])
    for log_file in [*store.db_dir.glob("*.log"), *(store.db_dir / "archive").glob("*.log")]:
        if log_file.stat().st_size and log_file != max(store.db_dir.glob("*.log")):
            log_file.unlink()               # what RocksDB's retention does later
    client = await serve(primary)
    resp = await client.get("/v1/watch?since_seq=1", headers=AUTH)
    assert resp.status == 410
    assert "no longer in the primary's WAL" in (await resp.json())["error"]
    resp = await client.get("/v1/watch?since_seq=3", headers=AUTH)
    assert resp.status == 200
    assert (await read_lines(resp, 1))[0]["seq"] == 4
    resp.close()


async def test_a_watch_on_a_replica_is_sent_to_the_primary(replica: FakeNode,
                                                           serve: Serve) -> None:
    client = await serve(replica)
    resp = await client.get("/v1/watch?since_seq=1", headers=AUTH, allow_redirects=False)
    assert resp.status == 307


async def test_watches_over_the_limit_are_503(primary: FakeNode, serve: Serve) -> None:
    primary.cfg.limits = dataclasses.replace(LIMITS, max_watches=1)
    client = await serve(primary)
    first = await client.get("/v1/watch", headers=AUTH)
    assert first.status == 200
    resp = await client.get("/v1/watch", headers=AUTH)
    assert resp.status == 503 and "limits.max_watches" in (await resp.json())["error"]
    assert primary.watches.open == 1
    text = await (await client.get("/metrics", headers=AUTH)).text()
    assert "hacluster_watches_open 1.0" in text
    first.close()

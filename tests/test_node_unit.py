"""``Node`` in-process: its control-loop port, its write path and what it says of itself.

Real ``Node`` objects over real RocksDB directories in ``tmp_path``, with no node process and
no consensus loop: either a static config (the configured primary serves epoch 1, opened the
way ``Node.start`` opens it, minus the HTTP site and the process-wide GC settings), or a
consensus config whose node has ``control`` None, driven through the ``NodePort`` methods the
loop would call (``become_primary``, ``become_replica``, ``close_gate``, ``tend_fencing``, ...).
A watchdog "device" is a plain file: arming writes a NUL, every feed another, a deliberate
close a ``V``. The tests assert on the store's contents and latest seq, the gate's refusal,
``lineage.json``, the stand-in device and the node's own answers (``LocalState``, ``NodeView``,
``/status``, ``/metrics``, ``/primary``).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from hacluster.api import build_app, probes
from hacluster.config import ClusterConfig, load_config
from hacluster.node import Node
from hacluster.node_errors import DiskFull, NotWritable
from hacluster.replication.follower import Follower
from hacluster.role import Role
from hacluster.store import Store
from hacluster.testing.harness import TOKEN, Cluster
from hacluster.wal.batch import DELETE, PUT

LEASE_S = 2.0                    # consensus configs: long enough for a test's few writes
HOLDER_LEASE = LEASE_S * 0.95    # the holder's side of it (default drift 0.05)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOBODY = Role(None, 0)          # a consensus node before the loop decides anything

MakeNode = Callable[..., Node]


def load(tmp_path: Path, *, consensus: bool = False,
         watchdog: dict[str, Any] | None = None) -> ClusterConfig:
    """The config node n1 would load (nodes n1..n3), with n1's data dir created."""
    cluster = Cluster(tmp_path / "cluster", consensus=consensus,
                      consensus_timing={"lease_s": LEASE_S} if consensus else None)
    doc = cluster.config_doc()
    if watchdog is not None:
        doc["watchdog"] = watchdog
    path = tmp_path / "n1.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    cfg = load_config(path)
    cfg.node("n1").data_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
async def make_node() -> AsyncIterator[MakeNode]:
    made: list[Node] = []

    def make(cfg: ClusterConfig, name: str = "n1", role: Role = NOBODY) -> Node:
        node = Node(cfg, name, role)
        made.append(node)
        return node

    yield make
    for node in made:
        await node.stop()


def static_primary(make_node: MakeNode, tmp_path: Path) -> Node:
    """n1 as ``Node.start`` opens the configured primary in static mode."""
    node = make_node(load(tmp_path), "n1", Role("n1", 1))
    node._start_primary(node.open_store())
    node.gate.open(1)
    return node


def lineage_file(node: Node) -> list[list[int]]:
    result: list[list[int]] = json.loads((node.data_dir / "lineage.json").read_text())
    return result


def seed(db_dir: Path, cfg: ClusterConfig, writes: int) -> int:
    """A database with ``writes`` one-op batches, closed again; its latest seq."""
    store = Store(db_dir, cfg.column_families, cfg.storage)
    try:
        for i in range(writes):
            store.write([(PUT, "default", f"seed{i}".encode(), b"s")])
        return store.latest_seq()
    finally:
        store.close()


async def write_acked(node: Node, key: bytes, value: bytes) -> int:
    applied = node.write([(PUT, "default", key, value)])
    await node.acknowledge(applied.last_seq)
    return applied.last_seq


def follower_of(node: Node, primary: str, epoch: int) -> Follower:
    """A follower as ``Node._start_replica`` builds it, not running (no primary to stream)."""
    url = node.api_url_of(primary)
    assert url is not None
    follower = Follower(node=node.name, data_dir=node.data_dir, primary_url=url,
                        token=node.cfg.token, cfg=node.cfg.replication,
                        open_store=node._replica_store, known_epoch=epoch,
                        lineage=node.lineage, slot=node._slot)
    node.follower = follower
    return follower


# -- local_state ------------------------------------------------------------------------------

async def test_local_state_of_a_fresh_node_then_with_its_store_open(
        tmp_path: Path, make_node: MakeNode) -> None:
    cfg = load(tmp_path, consensus=True)
    node = make_node(cfg)
    fresh = node.local_state()
    assert (fresh.seq, fresh.has_database, fresh.is_primary, fresh.gate_open) == (
        None, False, False, False)
    assert (fresh.acked_seq, fresh.unfit, fresh.disk_full, fresh.space_low,
            fresh.renewal_proposed_at, fresh.replicas) == (0, None, None, None, None, ())
    assert await node.stop_following() == 0 and node.store is None   # nothing to open

    seq = seed(node.db_dir, cfg, 3)          # a database on disk, not open yet
    on_disk = node.local_state()
    assert (on_disk.seq, on_disk.has_database) == (None, True)
    assert await node.stop_following() == seq == 2 * 3   # each op and its key's seq record
    assert node.store is not None and node.store.get(b"seed2") == b"s"
    opened = node.local_state()
    assert (opened.seq, opened.has_database, opened.is_primary, opened.gate_open) == (
        seq, True, False, False)


async def test_unfit_names_replication_diverged(tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(load(tmp_path), "n1", Role("n2", 1))
    follower = follower_of(node, "n2", 1)
    follower.status.state = "streaming"
    assert node.local_state().unfit is None
    follower.status.state = "diverged"
    assert node.local_state().unfit == "replication diverged"
    assert node.view(time.monotonic()).stream_state == "diverged"
    assert node.status()["replication"]["state"] == "diverged"


async def test_unfit_names_a_required_watchdog_whose_device_is_not_writable(
        tmp_path: Path, make_node: MakeNode) -> None:
    device = tmp_path / "wd"                 # missing: not writable (even for root)
    node = make_node(load(tmp_path, consensus=True,
                          watchdog={"mode": "required", "device": str(device)}))
    assert node.local_state().unfit == f"watchdog required but {device} is not writable"
    device.touch()
    assert node.local_state().unfit is None
    assert device.read_bytes() == b""        # asking never arms it


async def test_automatic_watchdog_without_a_device_leaves_the_node_fit(
        tmp_path: Path, make_node: MakeNode) -> None:
    device = tmp_path / "wd"
    node = make_node(load(tmp_path, consensus=True,
                          watchdog={"mode": "automatic", "device": str(device)}))
    assert node.local_state().unfit is None
    await node.become_primary(2, time.monotonic())
    assert node.is_primary and node.gate.refusal() is None
    assert not node.watchdog.armed and not device.exists()


# -- become_primary ---------------------------------------------------------------------------

async def test_become_primary_opens_the_gate_records_lineage_and_arms_the_watchdog(
        tmp_path: Path, make_node: MakeNode) -> None:
    device = tmp_path / "wd"
    device.touch()
    cfg = load(tmp_path, consensus=True, watchdog={"mode": "automatic", "device": str(device)})
    node = make_node(cfg)
    seq = seed(node.db_dir, cfg, 4)
    assert node.gate.refusal() == "not the primary"

    proposed_at = time.monotonic()
    await node.become_primary(7, proposed_at)
    assert node.role == Role("n1", 7) and node.is_primary
    assert node.gate.epoch == 7 and node.gate.refusal() is None
    assert 0 < node.lease_left() <= HOLDER_LEASE
    assert node.lease_left() == pytest.approx(proposed_at + HOLDER_LEASE - time.monotonic(),
                                              abs=0.05)
    assert lineage_file(node) == [[7, seq + 1]]
    assert node.lineage_label(seq + 1) == 7 and node.lineage_label(seq) == 0
    assert node.watchdog.armed and device.read_bytes() == b"\0"   # armed: one feed
    assert node.feed is not None and node.source is not None and node.checkpoints is not None
    state = node.local_state()
    assert (state.seq, state.is_primary, state.gate_open, state.renewal_proposed_at) == (
        seq, True, True, proposed_at)
    assert node.status()["watchdog"]["armed"] is True

    # A renewal of the same epoch moves the lease on; nothing else changes.
    later = proposed_at + 0.5
    await node.become_primary(7, later)
    assert node.gate.renewal_proposed_at == later and node.gate.epoch == 7
    assert lineage_file(node) == [[7, seq + 1]] and device.read_bytes() == b"\0"

    # The first write of the epoch lands where the lineage said it would: it starts at
    # seq + 1 and ends at seq + 2 (the op and its key's seq record).
    assert node.store is not None
    assert await write_acked(node, b"k", b"v") == seq + 2
    assert node.store.key_seq(b"k") == seq + 2
    assert node.store is not None and node.store.get(b"k") == b"v"


async def test_the_gate_shuts_when_the_lease_from_proposed_at_ends(
        tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(load(tmp_path, consensus=True))
    await node.become_primary(2, time.monotonic() - HOLDER_LEASE + 0.5)
    assert node.gate.refusal() is None
    assert await write_acked(node, b"before", b"1") == 2  # the op and its key's seq record
    deadline = time.monotonic() + 3.0
    while node.gate.refusal() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    refusal = node.gate.refusal()
    assert refusal is not None and refusal.startswith("lease expired")
    assert node.lease_left() <= 0
    with pytest.raises(NotWritable, match="lease expired"):
        node.write([(PUT, "default", b"after", b"2")])
    assert node.store is not None and node.store.latest_seq() == 2
    assert node.store.get(b"after") is None
    assert not node.local_state().gate_open and node.leader() is None
    assert node.status()["writable"] is False


async def test_a_stale_epoch_does_not_move_the_lineage_back(
        tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(load(tmp_path, consensus=True))
    await node.become_primary(3, time.monotonic())
    await write_acked(node, b"k", b"v")
    await node.become_primary(2, time.monotonic())
    assert lineage_file(node) == [[3, 1]]
    assert node.lineage_label(1) == 3


async def test_a_stale_epoch_is_ignored(tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(load(tmp_path, consensus=True))
    await node.become_primary(3, time.monotonic())
    seq = await write_acked(node, b"k", b"v")
    await node.become_primary(2, time.monotonic())
    assert node.role == Role("n1", 3)
    assert node.gate.epoch == 3
    assert node.acked_seq == seq


async def test_a_required_watchdog_that_cannot_be_armed_keeps_the_gate_shut(
        tmp_path: Path, make_node: MakeNode) -> None:
    device = tmp_path / "wd"                 # missing
    cfg = load(tmp_path, consensus=True, watchdog={"mode": "required", "device": str(device)})
    node = make_node(cfg)
    seed(node.db_dir, cfg, 2)
    await node.become_primary(2, time.monotonic())
    assert not node.is_primary and node.role == Role(None, 0)
    assert node.gate.refusal() == "not the primary" and node.gate.epoch is None
    assert node.store is None and node.feed is None and node.source is None
    assert not (node.data_dir / "lineage.json").exists()
    assert not device.exists() and not node.watchdog.armed
    assert str(node.watchdog.snapshot()["error"]).startswith(f"cannot open {device}")
    with pytest.raises(NotWritable, match="n1 is not the primary"):
        node.write([(PUT, "default", b"k", b"v")])
    state = node.local_state()
    assert (state.is_primary, state.gate_open, state.seq, state.has_database) == (
        False, False, None, True)
    assert state.unfit == f"watchdog required but {device} is not writable"


# -- acked_seq --------------------------------------------------------------------------------

async def test_acked_seq_grows_with_acks_and_restarts_in_a_new_epoch(
        tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(load(tmp_path, consensus=True))
    await node.become_primary(2, time.monotonic())
    assert node.acked_seq == 0
    # Each one-op write takes two seqs: the op and its key's seq record.
    for i in range(1, 4):
        assert await write_acked(node, f"k{i}".encode(), b"v") == 2 * i
        assert node.acked_seq == 2 * i and node.local_state().acked_seq == 2 * i
    applied = node.write([(PUT, "default", b"unacked", b"v")])       # written, not yet acked
    assert applied.last_seq == 8
    assert node.acked_seq == 6
    await node.acknowledge(applied.last_seq)
    assert node.acked_seq == 8
    await node.acknowledge(2)                 # an older ack never lowers it
    assert node.acked_seq == 8

    await node.become_primary(2, time.monotonic())        # a renewal: same epoch
    assert node.acked_seq == 8

    await node.become_primary(3, time.monotonic())        # still primary, a new epoch
    assert node.role == Role("n1", 3) and node.gate.epoch == 3
    assert node.acked_seq == 0 and node.local_state().acked_seq == 0
    assert lineage_file(node) == [[2, 1], [3, 9]]
    assert node.store is not None and node.store.get(b"k1") == b"v"
    assert await write_acked(node, b"k5", b"v") == 10
    assert node.acked_seq == 10

    await node.become_replica(None, 4)                    # demoted, then promoted again
    assert not node.is_primary and node.gate.refusal() == "no primary"
    await node.become_primary(5, time.monotonic())
    assert node.acked_seq == 0
    assert lineage_file(node) == [[2, 1], [3, 9], [5, 11]]


# -- close_gate and tend_fencing --------------------------------------------------------------

async def test_close_gate_refuses_writes_and_reads_with_its_reason(
        tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(load(tmp_path, consensus=True))
    await node.become_primary(2, time.monotonic())
    seq = await write_acked(node, b"k", b"v")
    closes = node.gate.closes
    node.close_gate("switchover to n2")
    assert node.gate.refusal() == "switchover to n2" and node.gate.closes == closes + 1
    assert node.lease_left() == 0.0
    with pytest.raises(NotWritable, match=r"^switchover to n2$"):
        node.write([(PUT, "default", b"k", b"v2")])
    with pytest.raises(NotWritable, match=r"^switchover to n2$"):
        node.begin_read()
    assert node.store is not None and node.store.latest_seq() == seq
    assert node.store.get(b"k") == b"v"
    state = node.local_state()
    assert (state.is_primary, state.gate_open, state.renewal_proposed_at) == (True, False, None)
    assert node.leader() is None
    assert node.view(time.monotonic()).write_refusal == "switchover to n2"


async def test_tend_fencing_arms_once_per_writable_spell_and_disarms_otherwise(
        tmp_path: Path, make_node: MakeNode) -> None:
    device = tmp_path / "wd"                 # missing at first
    node = make_node(load(tmp_path, consensus=True,
                          watchdog={"mode": "automatic", "device": str(device)}))
    await node.become_primary(2, time.monotonic())      # automatic: carries on unarmed
    assert node.gate.refusal() is None and not node.watchdog.armed

    assert node.tend_fencing(False) is None             # this spell's one attempt: fails
    device.touch()
    assert node.tend_fencing(False) is None             # no second attempt this spell
    assert not node.watchdog.armed and device.read_bytes() == b""

    node.close_gate("no quorum")                        # the spell ends ...
    assert node.tend_fencing(False) is None and not node.watchdog.armed
    await node.become_primary(2, time.monotonic())      # ... a new one begins
    assert node.gate.refusal() is None
    assert node.tend_fencing(False) is None
    assert node.watchdog.armed and device.read_bytes() == b"\0\0"    # armed, fed
    assert node.tend_fencing(False) is None
    assert device.read_bytes() == b"\0\0\0"                          # fed again

    assert node.tend_fencing(True) is None                           # maintenance mode
    assert not node.watchdog.armed and device.read_bytes() == b"\0\0\0V"
    device.write_bytes(b"")
    assert node.tend_fencing(False) is None                          # re-armed after pause
    assert node.watchdog.armed and device.read_bytes() == b"\0\0"

    node.close_gate("demoted")
    assert node.tend_fencing(False) is None
    assert not node.watchdog.armed and device.read_bytes() == b"\0\0V"
    assert node.tend_fencing(False) is None and device.read_bytes() == b"\0\0V"


async def test_tend_fencing_shuts_the_gate_when_a_required_device_cannot_be_armed(
        tmp_path: Path, make_node: MakeNode) -> None:
    device = tmp_path / "wd"
    device.touch()
    node = make_node(load(tmp_path, consensus=True,
                          watchdog={"mode": "required", "device": str(device)}))
    await node.become_primary(2, time.monotonic())
    assert node.watchdog.armed and device.read_bytes() == b"\0"
    seq = await write_acked(node, b"k", b"v")
    assert node.tend_fencing(True) is None                          # paused: disarmed
    assert not node.watchdog.armed and device.read_bytes() == b"\0V"
    device.unlink()                                                 # the device goes away

    why = node.tend_fencing(False)
    assert why is not None and "watchdog required but cannot open" in why
    assert node.gate.refusal() == why and not node.watchdog.armed
    with pytest.raises(NotWritable) as refused:
        node.write([(PUT, "default", b"k", b"v2")])
    assert str(refused.value) == why
    assert node.store is not None and node.store.latest_seq() == seq
    state = node.local_state()
    assert not state.gate_open
    assert state.unfit == f"watchdog required but {device} is not writable"
    assert node.tend_fencing(False) is None                         # shut: nothing to arm
    assert not device.exists()


# -- the write and read paths -----------------------------------------------------------------

async def test_a_static_primary_writes_acknowledges_and_reads(
        tmp_path: Path, make_node: MakeNode) -> None:
    node = static_primary(make_node, tmp_path)
    assert node.cfg.uses_consensus is False and node.lease_left() == 0.0
    applied = node.write([(PUT, "default", b"k1", b"v1"), (PUT, "users", b"u1", b"x"),
                          (DELETE, "default", b"gone", b"")])
    # three ops, each with its key's seq record
    assert (applied.first_seq, applied.last_seq) == (1, 2 * 3)
    await node.acknowledge(applied.last_seq)
    assert node.acked_seq == 6 and node.writes == 1
    store = node.store
    assert store is not None and store.latest_seq() == 6 == node.latest_seq()
    assert store.get(b"k1") == b"v1" and store.get(b"u1", "users") == b"x"
    assert store.get(b"gone") is None

    seq = node.begin_read()
    assert seq == 6
    await node.finish_read(seq)
    assert await node.wait_applied(6, 0.1) == 6
    assert await node.wait_applied(7, 0.05) is None

    status = node.status()
    assert (status["node"], status["role"], status["primary"], status["epoch"],
            status["writable"], status["applied_seq"], status["writes"]) == (
        "n1", "primary", "n1", 1, True, 6, 1)
    assert status["disk_full"] is None and "consensus" not in status
    assert "watchdog" not in status
    state = node.local_state()
    assert (state.seq, state.is_primary, state.gate_open, state.acked_seq) == (6, True, True, 6)


async def test_a_replica_refuses_writes_and_primary_reads(
        tmp_path: Path, make_node: MakeNode) -> None:
    cfg = load(tmp_path)
    node = make_node(cfg, "n1", Role("n2", 1))
    node.store = node.open_store()
    with pytest.raises(NotWritable, match=r"^n1 is not the primary$"):
        node.write([(PUT, "default", b"k", b"v")])
    with pytest.raises(NotWritable, match=r"^n1 is not primary$"):
        node.begin_read()
    assert node.store.latest_seq() == 0 and node.store.get(b"k") is None
    assert node.writes == 0
    status = node.status()
    assert (status["role"], status["primary"], status["writable"], status["applied_seq"]) == (
        "replica", "n2", False, 0)
    view = node.view(time.monotonic())
    assert (view.is_primary, view.writable, view.write_refusal) == (False, False, None)


async def test_a_primary_without_a_store_refuses_writes(
        tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(load(tmp_path), "n1", Role("n1", 1))
    node.gate.open(1)                        # gate open, but no database open
    with pytest.raises(NotWritable, match=r"^no database open$"):
        node.write([(PUT, "default", b"k", b"v")])
    assert not node.db_dir.exists()


# -- "writable" is one thing ------------------------------------------------------------------

async def scrape_writable(client: TestClient[Any, Any]) -> float:
    resp = await client.get("/metrics", headers=AUTH)
    assert resp.status == 200
    text = await resp.text()
    match = re.search(r"^hacluster_writable ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


async def writable_everywhere(node: Node, client: TestClient[Any, Any]) -> tuple[Any, ...]:
    """(status, view, metric, /status, /primary) as each answers "writable"."""
    status_resp = await client.get("/status", headers=AUTH)
    assert status_resp.status == 200
    primary_resp = await client.get("/primary")
    return (node.status()["writable"], node.view(time.monotonic()).writable,
            await scrape_writable(client), (await status_resp.json())["writable"],
            primary_resp.status)


async def test_writable_agrees_in_status_view_and_metrics(
        tmp_path: Path, make_node: MakeNode) -> None:
    node = static_primary(make_node, tmp_path)
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(node)))
    await client.start_server()
    try:
        assert await writable_everywhere(node, client) == (True, True, 1.0, True, 200)

        # A primary whose disk is full is writable nowhere, though its gate is open.
        node.disk_full = "RocksDB ran out of space: test"
        assert node.gate.refusal() is None
        assert await writable_everywhere(node, client) == (False, False, 0.0, False, 503)
        view = node.view(time.monotonic())
        assert view.write_refusal == node.disk_full
        assert probes.primary(view).body["reason"] == node.disk_full
        assert (await (await client.get("/primary")).json())["reason"] == node.disk_full
        assert node.status()["disk_full"] == node.disk_full
        with pytest.raises(DiskFull, match="ran out of space"):
            node.write([(PUT, "default", b"k", b"v")])
        assert node.store is not None and node.store.latest_seq() == 0
        state = node.local_state()
        # The loop's LocalState keeps the gate's answer in ``writable`` and says why apart.
        assert (state.gate_open, state.disk_full) == (True, node.disk_full)

        # Space again: the same store accepts writes (static mode: nothing reopens it).
        node.disk_full = None
        assert node.space.tend() is None
        assert await writable_everywhere(node, client) == (True, True, 1.0, True, 200)
        applied = node.write([(PUT, "default", b"k", b"v")])
        await node.acknowledge(applied.last_seq)
        assert node.store.get(b"k") == b"v"

        node.close_gate("switchover to n2")
        assert await writable_everywhere(node, client) == (False, False, 0.0, False, 503)
    finally:
        await client.close()


async def test_a_replica_is_writable_nowhere(tmp_path: Path, make_node: MakeNode) -> None:
    node = make_node(load(tmp_path), "n1", Role("n2", 1))
    node.gate.open(1)                        # even an open gate makes no replica writable
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(node)))
    await client.start_server()
    try:
        assert await writable_everywhere(node, client) == (False, False, 0.0, False, 503)
    finally:
        await client.close()


# -- recover_disk -----------------------------------------------------------------------------

async def test_recover_disk_reopens_the_store_once_there_is_room(
        tmp_path: Path, make_node: MakeNode) -> None:
    cfg = load(tmp_path, consensus=True)
    node = make_node(cfg)
    assert await node.recover_disk() is True                 # nothing to recover
    seq = seed(node.db_dir, cfg, 3)
    assert await node.stop_following() == seq
    old = node.store
    node.disk_full = "RocksDB ran out of space: test"
    state = node.local_state()
    assert state.disk_full == node.disk_full and state.space_low == node.disk_full
    assert await node.recover_disk() is True
    assert node.disk_full is None and node.store is not None and node.store is not old
    assert node.store.latest_seq() == seq and node.store.get(b"seed0") == b"s"
    state = node.local_state()
    assert (state.disk_full, state.space_low, state.seq) == (None, None, seq)


# -- leader, status_epoch, api_url_of, view ---------------------------------------------------

async def test_leader_status_epoch_and_urls(tmp_path: Path, make_node: MakeNode) -> None:
    primary = static_primary(make_node, tmp_path / "p")
    cfg = primary.cfg
    assert primary.leader() == "n1" and primary.status_epoch() == 1
    assert primary.api_url_of("n2") == cfg.node("n2").api.url
    assert primary.api_url_of("n9") is None                  # no control loop to ask
    assert primary.primary_url() == cfg.node("n1").api.url
    view = primary.view(time.monotonic())
    assert (view.leader, view.leader_url, view.epoch) == ("n1", cfg.node("n1").api.url, 1)
    assert (view.loop_age_s, view.lease_s) == (None, float("inf"))
    primary.close_gate("stopping")
    assert primary.leader() is None
    assert primary.view(time.monotonic()).leader_url is None

    replica = make_node(load(tmp_path / "r"), "n1", Role("n2", 4))
    assert replica.leader() == "n2" and replica.status_epoch() == 4
    assert replica.primary_url() == replica.cfg.node("n2").api.url
    follower_of(replica, "n2", 6)            # the stream told it of a newer epoch
    assert replica.status_epoch() == 6 and replica.status()["epoch"] == 6

    nobody = make_node(load(tmp_path / "x", consensus=True))
    assert nobody.leader() is None and nobody.primary_url() is None
    assert nobody.status_epoch() == 0


async def test_a_replicas_view_and_status_agree_on_its_lag(
        tmp_path: Path, make_node: MakeNode) -> None:
    cfg = load(tmp_path)
    node = make_node(cfg, "n1", Role("n2", 1))
    seed(node.db_dir, cfg, 5)                 # seq 10: each op and its key's seq record
    follower = follower_of(node, "n2", 1)
    follower.store = node.open_store()
    follower.status.state = "streaming"
    follower.status.primary_seq = 17
    follower.status.last_frame_at = time.monotonic()
    view = node.view(time.monotonic())
    assert (view.applied_seq, view.primary_seq, view.stream_state) == (10, 17, "streaming")
    assert probes.lag(view) == 7
    status = node.status()
    assert status["applied_seq"] == 10 and status["replication"]["lag"] == 7
    assert node.latest_seq() == 10 and node.local_state().seq == 10
    assert probes.replica(view).status == 200
    assert probes.replica(view, max_lag=6).status == 503

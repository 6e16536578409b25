"""Quorum under consensus, with real processes and a client-side history of every write.

Five nodes lose their primary and then its successor (three of five still decide); three
nodes lose both replicas (the primary must stop acknowledging once its lease runs out, and
resume once a quorum is back); three nodes lose their synchronous replica (the synchronous set
moves, the primary and its epoch stay). A Writer keeps writing unique keys throughout; the
history checker then judges what clients were told against the final primary's database.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from hacluster.config import load_config
from hacluster.testing.harness import Cluster, NodeProc, read_db, wait_for
from hacluster.testing.history import Writer, check_all, divergent_tail_keys


def sigkill(*nodes: NodeProc) -> float:
    """Kill ``nodes`` and wait until they are gone; return the time they certainly were."""
    for node in nodes:
        node.signal(signal.SIGKILL)
    for node in nodes:
        node.proc.wait(10)  # type: ignore[union-attr]
    return time.monotonic()


def final_keys(node: NodeProc) -> dict[bytes, bytes]:
    """The default column family of a stopped node's database."""
    _, contents = read_db(node.data_dir / "db")
    return contents["default"]


def sync_set(node: NodeProc) -> list[str]:
    result: list[str] = node.status()["consensus"]["sync_set"]
    return result


def test_five_nodes_survive_losing_the_primary_and_then_its_successor(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, [f"n{i}" for i in range(1, 6)], consensus=True)
    nodes = list(cluster.nodes.values())
    writer = Writer(nodes, prefix="f")
    try:
        cluster.start()
        first = cluster.wait_primary(30)
        wait_for(lambda: sync_set(first), 15, "a synchronous standby")
        writer.start()
        writer.wait_acked(50, 20, node=first.name)
        sigkill(first)
        second = cluster.wait_primary(30, among=[n for n in nodes if n.running])
        writer.wait_acked(20, 20, node=second.name)
        wait_for(lambda: sync_set(second), 15, f"a synchronous standby of {second.name}")
        sigkill(second)                                  # three of five left: still a quorum
        third = cluster.wait_primary(30, among=[n for n in nodes if n.running])
        writer.wait_acked(20, 20, node=third.name)
        history = writer.stop()
        history.save(tmp_path / "history.json")          # for a post-mortem
        first.start()
        second.start()
        cluster.wait_converged(timeout=60)
        assert (first.status()["primary"], second.status()["primary"]) == (third.name,) * 2
    finally:
        writer.stop()
        cluster.stop()
    verdict = check_all(history, final_keys(third))
    assert verdict.ok, str(verdict)
    assert verdict.epochs == [1, 2, 3], str(verdict)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_primary_without_quorum_stops_acknowledging_and_resumes_with_one(
        tmp_path: Path, mode: str) -> None:
    cluster = Cluster(tmp_path, consensus=True, replication={"mode": mode})
    lease_s = load_config(cluster.primary.config).consensus.lease_s
    nodes = list(cluster.nodes.values())
    writer = Writer(nodes, prefix="q")
    try:
        cluster.start()
        primary = cluster.wait_primary(30)
        if mode == "sync":
            wait_for(lambda: sync_set(primary), 15, "a synchronous standby")
        writer.start()
        writer.wait_acked(50, 20, node=primary.name)
        replicas = [n for n in nodes if n is not primary]
        dead_at = sigkill(*replicas)
        # No renewal proposed after dead_at can commit (it needs a replica), so the primary's
        # lease ends before dead_at + lease_s * (1 - drift) (0.57 s by default); an ack whose
        # request started later is certainly too late. The bound adds 0.4 s on top of the
        # lease: slack, not needed for soundness, because acked_after only counts requests
        # that started after it.
        fence = dead_at + lease_s + 0.4
        (tmp_path / "times.json").write_text(f'{{"dead_at": {dead_at}, "fence": {fence}}}')
        demoted = f"{primary.name}: demoted, no quorum"
        wait_for(lambda: primary.status()["consensus"]["decision"].startswith(demoted), 10,
                 f"the decision {demoted!r}")
        time.sleep(max(0.0, dead_at + 2.0 - time.monotonic()))
        assert cluster.writable_primary() is None
        assert primary.status()["consensus"]["decision"].startswith(demoted)
        # The writer keeps asking the primary (sync mode: an attempt in flight at the kill
        # may hang until its client timeout), so the fence check below is not vacuous.
        wait_for(lambda: sum(op.node == primary.name and op.start > fence
                             for op in writer.history) >= 3, 10,
                 "attempts on the primary after its lease ran out")
        restart_at = time.monotonic()
        for node in replicas:
            node.start()
        new = cluster.wait_primary(30)
        writer.wait_acked(20, 30, since=restart_at)
        history = writer.stop()
        history.save(tmp_path / "history.json")          # for a post-mortem
        cluster.wait_converged(timeout=60)
    finally:
        writer.stop()
        cluster.stop()
    assert demoted in primary.log()
    tails = divergent_tail_keys(n.data_dir for n in nodes) if mode == "async" else None
    verdict = check_all(history, final_keys(new), tail_keys=tails,
                        fences=[(primary.name, fence, restart_at)])
    assert verdict.ok, str(verdict)


def test_killing_the_synchronous_replica_moves_the_synchronous_set(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, consensus=True)
    writer = Writer(list(cluster.nodes.values()), prefix="r")
    try:
        cluster.start()
        primary = cluster.wait_primary(30)
        standby = wait_for(lambda: sync_set(primary), 15, "a synchronous standby")
        assert len(standby) == 1
        victim = cluster.nodes[standby[0]]
        other = next(n for n in cluster.replicas if n is not victim)
        epoch = primary.status()["epoch"]
        writer.start()
        writer.wait_acked(50, 20, node=primary.name)
        killed_at = sigkill(victim)
        wait_for(lambda: sync_set(primary) == [other.name], 15,
                 f"the synchronous set to move to {other.name}")
        writer.wait_acked(50, 20, node=primary.name, since=killed_at)
        status = primary.status()
        assert (status["role"], status["epoch"], status["writable"]) == ("primary", epoch, True)
        seq = status["applied_seq"]
        victim.start()
        wait_for(lambda: victim.status()["applied_seq"] >= seq, 30,
                 f"{victim.name} to catch up to seq {seq}")
        history = writer.stop()
        history.save(tmp_path / "history.json")          # for a post-mortem
        cluster.wait_converged(timeout=30)
        assert cluster.writable_primary() is primary
    finally:
        writer.stop()
        cluster.stop()
    verdict = check_all(history, final_keys(primary))
    assert verdict.ok, str(verdict)
    assert verdict.epochs == [epoch], str(verdict)
    assert {op.node for op in history.acked()} == {primary.name}

"""A full disk, for real: each node's data dir is a small tmpfs, filled with a ballast file.

A primary below ``storage.min_free_mb`` refuses writes with 507 and stays consistent, and takes
them again once space returns. A primary whose RocksDB itself hits ENOSPC (no free-space floor)
gives the lock up, so a node with room takes over, and rejoins once space returns. A synchronous
replica whose disk fills stops applying, says so, is replaced in the synchronous set (writes go
on), and catches up afterwards. Nothing acknowledged is lost. Needs root (mount); skips
otherwise.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacluster.testing.harness import Cluster, FaultyProxy, NodeProc, read_db, wait_for
from hacluster.testing.history import Endpoint, Writer, check_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

SIZE_MB = 64


def fill(node: NodeProc, leave_mb: int = 0) -> Path:
    """Fill the node's disk with a ballast file, to the last byte or until ``leave_mb`` are
    left. Low (not full) stays low even when the node releases its reserve while this writes:
    the reserve would otherwise go to the ballast too, and the node's Raft journal then finds
    the disk full — another test's case."""
    ballast = node.data_dir / "ballast"
    chunk = b"\0" * (1 << 20)
    try:
        with open(ballast, "wb") as f:
            while not leave_mb or shutil.disk_usage(node.data_dir).free > (leave_mb + 1) << 20:
                f.write(chunk)
                f.flush()
    except OSError:
        pass
    return ballast


@pytest.fixture
def small_disks(tmp_path: Path) -> Iterator[list[Path]]:
    mounted: list[Path] = []
    for name in ("n1", "n2", "n3"):
        d = tmp_path / "data" / name
        d.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(d)],
                       check=True)
        mounted.append(d)
    yield mounted
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def cluster_on(tmp_path: Path, min_free_mb: int) -> Cluster:
    return Cluster(tmp_path, consensus=True, replication={"mode": "sync"},
                   storage={"min_free_mb": min_free_mb, "write_buffer_size_mb": 1,
                            "wal_size_limit_mb": 16})


def writer_for(cluster: Cluster) -> Writer:
    return Writer([Endpoint(n.name, n.host, n.port) for n in cluster.nodes.values()],
                  timeout=3.0, pause=0.01)


def final_keys(cluster: Cluster, primary: NodeProc) -> set[bytes]:
    cluster.stop()
    return set(read_db(primary.data_dir / "db")[1]["default"])


def test_primary_low_on_space_hands_over_and_rejoins_when_space_returns(
        tmp_path: Path, small_disks: list[Path]) -> None:
    cluster = cluster_on(tmp_path, min_free_mb=8)
    cluster.start()
    writer = None
    try:
        old = cluster.wait_primary()
        writer = writer_for(cluster).start()
        writer.wait_acked(100, 20)
        ballast = fill(old, leave_mb=4)
        others = [n for n in cluster.nodes.values() if n is not old]
        new = cluster.wait_primary(30, among=others)
        assert "handing the primary role over" in old.log()
        assert new.status()["consensus"]["history"][-1]["reason"] == "switchover"
        assert "below storage.min_free_mb" in str(old.status()["disk_full"])
        count = len(writer.acked())
        writer.wait_acked(count + 100, 30)                   # the cluster writes on
        ballast.unlink()
        wait_for(lambda: old.status()["disk_full"] is None, 30, "space to count as back")
        history = writer.stop()
        writer = None
        cluster.wait_converged(60)
        verdict = check_all(history, final_keys(cluster, new))
        assert verdict.ok, str(verdict)
    finally:
        if writer is not None:
            writer.stop()
        cluster.stop()


def test_a_lone_primary_low_on_space_refuses_with_507_then_recovers(
        tmp_path: Path, small_disks: list[Path]) -> None:
    cluster = cluster_on(tmp_path, min_free_mb=8)
    only_n1 = {"n2": ["nofailover"], "n3": ["nofailover"]}
    for name in cluster.nodes:
        cluster.write_config(name, tags=only_n1)
    cluster.start()
    try:
        primary = cluster.wait_primary()
        assert primary.name == "n1"
        assert primary.put("before", b"v").status == 200
        ballast = fill(primary)
        refused = primary.put("during", b"v")
        assert refused.status == 507, refused.body
        assert "below storage.min_free_mb (8 MB)" in refused.json()["error"]
        assert "released the 32 MB reserve" in primary.log()
        status = primary.status()
        assert (status["role"], status["writable"]) == ("primary", False)
        assert "below storage.min_free_mb" in status["disk_full"]
        probe = primary.get("/primary", token=None)             # load balancers see it too
        assert probe.status == 503 and "below storage.min_free_mb" in probe.json()["reason"]
        assert cluster.writable_primary() is None               # nobody else may take over
        ballast.unlink()
        wait_for(lambda: primary.put("after", b"v").status == 200, 10, "writes again")
        cluster.wait_converged()
        keys = final_keys(cluster, primary)
        assert {b"before", b"after"} <= keys and b"during" not in keys
    finally:
        cluster.stop()


def test_primary_whose_rocksdb_runs_out_gives_the_lock_up_and_reopens(
        tmp_path: Path, small_disks: list[Path]) -> None:
    cluster = Cluster(tmp_path, consensus=True, replication={"mode": "sync"},
                      storage={"min_free_mb": 0, "reserve_mb": 0, "write_buffer_size_mb": 1,
                               "wal_size_limit_mb": 16})
    cluster.start()
    try:
        old = cluster.wait_primary()
        for i in range(20):
            assert old.put(f"k{i}", b"v").status == 200
        cluster.wait_converged()
        # 1-2 MB left, never none: a disk full for a moment (filled, then a part given back)
        # is seen by the node's own check, which then hands the role over before the write.
        ballast = fill(old, leave_mb=1)
        big = old.put("big", b"x" * (3 << 20))            # RocksDB's own WAL append fails
        assert big.status == 507, big.body
        assert "RocksDB ran out of space" in big.json()["error"]
        others = [n for n in cluster.nodes.values() if n is not old]
        new = cluster.wait_primary(30, among=others)
        assert new.put("after", b"v").status == 200
        ballast.unlink()
        wait_for(lambda: old.status()["disk_full"] is None, 30, "the old primary to reopen")
        assert "database reopened" in old.log()
        cluster.wait_converged(60)
        keys = final_keys(cluster, new)
        assert {b"k0", b"k19", b"after"} <= keys and b"big" not in keys
    finally:
        cluster.stop()


def test_full_sync_replica_is_replaced_and_catches_up(
        tmp_path: Path, small_disks: list[Path]) -> None:
    cluster = cluster_on(tmp_path, min_free_mb=8)
    cluster.start()
    writer = None
    try:
        primary = cluster.wait_primary()
        member = wait_for(lambda: primary.status()["consensus"]["sync_set"], 10,
                          "a synchronous standby")[0]
        standby = cluster.nodes[member]
        writer = writer_for(cluster).start()
        writer.wait_acked(100, 20)
        ballast = fill(standby)
        # Writes go on: the synchronous set moves to the other replica.
        wait_for(lambda: primary.status()["consensus"]["sync_set"] not in ([member], []), 30,
                 "the synchronous set to move")
        count = len(writer.acked())
        writer.wait_acked(count + 300, 30)
        wait_for(lambda: standby.status()["replication"]["state"] in ("disk_full", "backoff"),
                 30, "the full replica to stop applying")
        ballast.unlink()
        history = writer.stop()
        writer = None
        cluster.wait_converged(60)                          # it catches up afterwards
        verdict = check_all(history, final_keys(cluster, primary))
        assert verdict.ok, str(verdict)
    finally:
        if writer is not None:
            writer.stop()
        cluster.stop()


def test_rule_2_a_release_after_disk_full_never_promotes_a_lagging_node(
        tmp_path: Path, small_disks: list[Path]) -> None:
    """n1's RocksDB runs out and it releases the lock while its synchronous standby n2 is
    stopped; the only other candidate, n3, is in the Raft quorum but gets no data (its stream
    from n1 goes through a proxy that drops it), so it lacks acknowledged writes. The
    acknowledged floor keeps n3 from taking over until n2 is back."""
    cluster = Cluster(tmp_path, consensus=True, replication={"mode": "sync"},
                      storage={"min_free_mb": 0, "write_buffer_size_mb": 1,
                               "wal_size_limit_mb": 16})
    n1, n2, n3 = (cluster.nodes[n] for n in ("n1", "n2", "n3"))
    proxy = FaultyProxy(cluster.addresses["n1"])
    only_n1 = {"n2": ["nofailover"], "n3": ["nofailover"]}
    via_proxy = dict(cluster.addresses, n1=proxy.port)
    for name in ("n1", "n2"):
        cluster.write_config(name, tags=only_n1)
    cluster.write_config("n3", addresses=via_proxy, tags=only_n1)
    stopped = None
    try:
        cluster.start()
        assert cluster.wait_primary() is n1
        for i in range(10):
            assert n1.put(f"k{i}", b"v").status == 200
        cluster.wait_converged()
        proxy.mode = "drop"                 # n3 stays in the Raft quorum, gets no data
        wait_for(lambda: n1.status()["consensus"]["sync_set"] == ["n2"], 20,
                 "n2 alone in the synchronous set")
        acked = []
        for i in range(10, 30):
            resp = n1.put(f"k{i}", b"v")
            assert resp.status == 200, resp.body
            acked.append(f"k{i}".encode())
        n2.signal(signal.SIGSTOP)
        stopped = n2
        ballast = fill(n1)
        with open(ballast, "r+b") as f:                   # leave 2 MB: the floor is off
            f.truncate(ballast.stat().st_size - (2 << 20))
        assert n1.put("big", b"x" * (3 << 20)).status == 507
        wait_for(lambda: n3.status()["consensus"]["lock"]["released"], 20, "n1's release")
        n3.stop()
        cluster.write_config("n3", addresses=via_proxy)       # n3 may now be promoted
        n3.start()
        # 30 acknowledged puts, each with its key's seq record: seq 60
        wait_for(lambda: f"below seq {2 * 30} acknowledged" in (
            n3.status()["consensus"]["decision"] or ""), 30,
            "n3 to see it is below the acknowledged floor")
        time.sleep(2.0)
        assert cluster.writable_primary([n1, n3]) is None, \
            "a node lacking acknowledged writes took over"
        n2.signal(signal.SIGCONT)
        stopped = None
        n2.stop()
        cluster.write_config("n2")                            # n2 may now be promoted
        n2.start()
        assert cluster.wait_primary(30, among=[n2, n3]) is n2
        proxy.mode = "pass"
        ballast.unlink()
        assert n2.put("after", b"v").status == 200
        cluster.wait_converged(60, nodes=[n3])
    finally:
        if stopped is not None:
            stopped.signal(signal.SIGCONT)
        proxy.close()
        cluster.stop()
    contents = read_db(n3.data_dir / "db")[1]["default"]
    assert set(acked) | {b"after"} <= set(contents)

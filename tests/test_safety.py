"""The safety rules of docs/architecture.md, with real node processes on loopback.

Each test is named after the rule it proves (rule 3: a restarted holder takes a new epoch;
rule 1: the stream refuses a position off the primary's history; rule 7: switchovers under
load; rule 8: primary reads are linearizable and replicas read their own writes).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from hacluster.testing.harness import Cluster, read_db, request, wait_for
from hacluster.testing.history import Writer, check_all


def test_rule_3_a_restarted_lock_holder_takes_a_new_epoch(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, consensus=True, replication={"mode": "sync"})
    try:
        cluster.start()
        old = cluster.wait_primary()
        wait_for(lambda: old.status()["consensus"]["sync_set"], 10, "a synchronous standby")
        for i in range(20):
            assert old.put(f"k{i}", b"v").status == 200
        # Maintenance mode: no one else may take over, so the holder's own return decides.
        assert old.post("/v1/admin/pause").status == 200
        old.signal(signal.SIGKILL)
        old.proc.wait(10)  # type: ignore[union-attr]
        old.start()
        wait_for(lambda: old.status().get("writable"), 30, "the holder to serve again")
        status = old.status()
        history = status["consensus"]["history"]
        assert [(h["epoch"], h["primary"], h["reason"]) for h in history] == [
            (1, old.name, "bootstrap"), (2, old.name, "restart")]
        assert history[1]["start_seq"] == 2 * 20 + 1   # each put and its key's seq record
        assert "a new epoch, never its old one" in old.log()
        resp = old.put("after", b"v")
        assert resp.status == 200 and resp.json()["epoch"] == 2, resp.body
        cluster.wait_converged()
    finally:
        cluster.stop()


def test_rule_1_the_stream_refuses_a_position_off_the_primary_history(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, consensus=True, replication={"mode": "sync"})
    try:
        cluster.start()
        primary = cluster.wait_primary()
        for i in range(5):
            assert primary.put(f"k{i}", b"v").status == 200
        replica = next(n for n in cluster.nodes.values() if n is not primary)
        # Epoch 1 took over at seq 1: data up to seq 3 labelled epoch 0 (written before any
        # epoch, or by no one we know) is not on this primary's history.
        resp = request(primary.port, "GET",
                       f"/v1/replication/stream?node={replica.name}&since=3&epoch=0")
        assert resp.status == 409, resp.body
        assert resp.json()["error"] == "diverged"
        assert "divergent tail" in resp.json()["reason"]
        bad = request(primary.port, "GET",
                      f"/v1/replication/stream?node={replica.name}&since=3&epoch=x")
        assert bad.status == 400
    finally:
        cluster.stop()


def test_rule_8_a_primary_never_shows_a_write_the_sync_set_has_not_confirmed(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, consensus=True,
                      replication={"mode": "sync", "sync_replicas": 2, "sync_timeout_s": 1.0})
    stopped = None
    try:
        cluster.start()
        primary = cluster.wait_primary()
        wait_for(lambda: len(primary.status()["consensus"]["sync_set"]) == 2, 15,
                 "both replicas in the synchronous set")
        assert primary.put("key", b"old").status == 200
        assert primary.get("/v1/kv/key").body == b"old"
        stopped = next(n for n in cluster.nodes.values() if n is not primary)
        stopped.signal(signal.SIGSTOP)
        resp = primary.put("key", b"dirty")
        assert resp.status == 503 and resp.json()["outcome"] == "unknown", resp.body
        # The primary holds "dirty", unconfirmed: a read must not return it (a failover to
        # the stopped replica would take it back), nor the old value (that could be stale).
        read = primary.get("/v1/kv/key")
        assert read.status == 503, (read.status, read.body)
        assert "not confirmed" in read.json()["error"]
        stopped.signal(signal.SIGCONT)
        stopped = None
        wait_for(lambda: primary.get("/v1/kv/key").status == 200, 20, "the read to confirm")
        assert primary.get("/v1/kv/key").body == b"dirty"
    finally:
        if stopped is not None:
            stopped.signal(signal.SIGCONT)
        cluster.stop()


def test_rule_8_a_replica_reads_its_writes_with_min_seq(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, consensus=True,
                      replication={"mode": "async", "min_seq_wait_s": 0.5})
    try:
        cluster.start()
        primary = cluster.wait_primary()
        replica = next(n for n in cluster.nodes.values() if n is not primary)
        for i in range(30):
            resp = primary.put(f"k{i}", b"v%d" % i)
            assert resp.status == 200
            seq = resp.json()["seq"]
            read = replica.get(f"/v1/kv/k{i}?min_seq={seq}")
            assert (read.status, read.body) == (200, b"v%d" % i)
        started = time.monotonic()
        far = replica.get(f"/v1/kv/k0?min_seq={seq + 1000}")
        assert far.status == 503 and far.json()["min_seq"] == seq + 1000, far.body
        assert far.json()["seq"] >= seq
        assert time.monotonic() - started >= 0.4
        assert replica.get("/v1/kv/k0?min_seq=-1").status == 400
    finally:
        cluster.stop()


def test_rule_7_switchovers_under_load_lose_nothing_and_never_overlap(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, consensus=True, replication={"mode": "sync"})
    writer = Writer(list(cluster.nodes.values()), prefix="w")
    try:
        cluster.start()
        primary = cluster.wait_primary()
        wait_for(lambda: primary.status()["consensus"]["sync_set"], 10,
                 "a synchronous standby")
        writer.start()
        writer.wait_acked(100, 20)
        for _ in range(5):
            primary = cluster.wait_primary()
            asked = time.monotonic()
            resp = primary.post("/v1/admin/switchover", {})
            assert resp.status == 200, resp.body
            new = cluster.wait_primary(among=[n for n in cluster.nodes.values()
                                              if n is not primary])
            writer.wait_acked(30, 20, node=new.name, since=asked)
            wait_for(lambda new=new: new.status()["consensus"]["sync_set"], 10,
                     "a synchronous standby")
        history = writer.stop()
        final = cluster.wait_primary()
        epochs = final.status()["consensus"]["history"]
        cluster.wait_converged()
    finally:
        writer.stop()
        cluster.stop()
    _, contents = read_db(final.data_dir / "db")
    verdict = check_all(history, contents["default"])
    assert verdict.ok, str(verdict)
    # Every epoch acknowledged writes (waited for above), and no epoch came from anything but
    # a switchover: a late renewal never reopened a handed-over gate.
    assert verdict.epochs == [1, 2, 3, 4, 5, 6], str(verdict)
    assert [h["reason"] for h in epochs] == ["bootstrap"] + ["switchover"] * 5, epochs


def test_rule_6_sync_set_churn_while_the_raft_leader_is_lost(tmp_path: Path) -> None:
    """The synchronous standby (or the Raft leader) is killed again and again under a writer,
    so the primary changes its synchronous set while Raft may have no leader and proposals
    end without a known outcome; then the primary itself is killed. No acknowledged write
    may be lost: a write is confirmed by every set that might be committed."""
    cluster = Cluster(tmp_path, consensus=True,
                      replication={"mode": "sync", "sync_timeout_s": 2.0})
    writer = Writer(list(cluster.nodes.values()), prefix="w")
    by_raft = {f"127.0.0.1:{port}": name for name, port in cluster.raft_ports.items()}
    try:
        cluster.start()
        primary = cluster.wait_primary()
        wait_for(lambda: primary.status()["consensus"]["sync_set"], 10, "a synchronous standby")
        writer.start()
        writer.wait_acked(50, 20)
        for _ in range(4):
            status = primary.status()["consensus"]
            leader = by_raft.get(status["raft"]["leader"] or "")
            victim = cluster.nodes[leader] if leader and leader != primary.name else \
                cluster.nodes[status["sync_set"][0]]
            victim.signal(signal.SIGKILL)
            victim.proc.wait(10)  # type: ignore[union-attr]
            since = time.monotonic()
            time.sleep(1.0)
            victim.start()
            primary = cluster.wait_primary(30)
            writer.wait_acked(20, 30, node=primary.name, since=since)
            wait_for(lambda p=primary: p.status()["consensus"]["sync_set"], 20,
                     "a synchronous standby again")
        primary.signal(signal.SIGKILL)
        primary.proc.wait(10)  # type: ignore[union-attr]
        survivors = [n for n in cluster.nodes.values() if n is not primary]
        new = cluster.wait_primary(30, among=survivors)
        writer.wait_acked(20, 30, node=new.name, since=time.monotonic() - 1)
        history = writer.stop()
        primary.start()
        cluster.wait_converged(60)
    finally:
        writer.stop()
        cluster.stop()
    _, contents = read_db(new.data_dir / "db")
    verdict = check_all(history, contents["default"])
    assert verdict.ok, str(verdict)


def test_a_primary_stops_promptly_with_a_write_its_standby_cannot_confirm(
        tmp_path: Path) -> None:
    """SIGTERM during a write the synchronous set cannot confirm: the node answers it 503
    (outcome unknown) and exits, rather than hold its shutdown for sync_timeout_s."""
    import threading

    # Both replicas in the set: the stopped one cannot be replaced by the other.
    cluster = Cluster(tmp_path, consensus=True,
                      replication={"mode": "sync", "sync_replicas": 2, "sync_timeout_s": 60.0})
    stopped = None
    try:
        cluster.start()
        primary = cluster.wait_primary()
        wait_for(lambda: len(primary.status()["consensus"]["sync_set"]) == 2, 15,
                 "both replicas in the synchronous set")
        standby = cluster.nodes[primary.status()["consensus"]["sync_set"][0]]
        standby.signal(signal.SIGSTOP)
        stopped = standby
        answers: list[int] = []
        pending = threading.Thread(
            target=lambda: answers.append(primary.put("in-flight", b"v", timeout=90).status))
        pending.start()
        time.sleep(1.0)                   # the write waits for the stopped standby
        started = time.monotonic()
        primary.stop()
        took = time.monotonic() - started
        pending.join(90)
        assert took < 15, f"shutdown took {took:.1f} s with sync_timeout_s 60"
        assert answers == [503], answers
    finally:
        if stopped is not None:
            stopped.signal(signal.SIGCONT)
        cluster.stop()

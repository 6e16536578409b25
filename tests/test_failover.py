"""Automatic failover with real processes: Raft elects, leases fence, replicas follow.

Three node processes with raft addresses on loopback (pysyncobj with a password, journals in
their data dirs). These tests use real signals; network partitions (which need namespaces and
root) come with the fault-injection suite.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from hacluster.key_seqs import SEQ_CF
from hacluster.testing.harness import Cluster, FaultyProxy, NodeProc, wait_for
from hacluster.wal.errors import WalNotAtBoundary
from hacluster.wal.reader import WalReader


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, consensus=True)
    c.start()
    yield c
    c.stop()


def put(node: NodeProc, key: str, value: bytes = b"v") -> int:
    resp = node.put(key, value)
    assert resp.status == 200, (node.name, resp.status, resp.body)
    seq: int = resp.json()["seq"]
    return seq


def test_a_primary_is_elected_and_replicas_follow_it(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    for i in range(20):
        put(primary, f"k{i}")
    cluster.wait_converged()
    status = primary.status()
    assert status["consensus"]["lock"] == {"holder": primary.name, "epoch": 1,
                                           "released": False,
                                           "renewals": status["consensus"]["lock"]["renewals"]}
    assert status["consensus"]["decision"].startswith(f"{primary.name}: primary, epoch 1")
    for node in cluster.replicas:
        s = node.status()
        assert s["role"] == "replica" and s["primary"] == primary.name
        assert s["consensus"]["decision"] == f"{node.name}: following {primary.name} (epoch 1)"
        # A replica refuses writes: it redirects to the primary.
        assert node.put("x", b"y").status == 307


def test_sigkill_of_the_primary_elects_a_new_one(cluster: Cluster) -> None:
    old = cluster.wait_primary()
    for i in range(50):
        put(old, f"before-{i}")
    cluster.wait_converged()
    old.signal(signal.SIGKILL)
    old.proc.wait(10)  # type: ignore[union-attr]
    killed_at = time.monotonic()
    survivors = [n for n in cluster.nodes.values() if n is not old]
    new = cluster.wait_primary(timeout=20, among=survivors)
    elapsed = time.monotonic() - killed_at
    assert elapsed < 15, f"failover took {elapsed:.1f} s"
    status = new.status()
    assert status["epoch"] == 2
    sentences = new.log()
    # 50 puts, each op and its key's seq record: seqs 1..100, so epoch 2 starts at 101
    assert f"{new.name}: promoting, epoch 2 from seq 101; {old.name}'s lease expired" in sentences
    history = status["consensus"]["history"]
    assert [(h["epoch"], h["primary"], h["reason"]) for h in history] == [
        (1, old.name, "bootstrap"), (2, new.name, "failover")]
    for i in range(50):
        put(new, f"after-{i}")
    cluster.wait_converged(nodes=[n for n in survivors if n is not new])
    # The old primary comes back as a replica of the new one and catches up.
    old.start()
    cluster.wait_converged()
    s = old.status()
    assert (s["role"], s["primary"], s["epoch"]) == ("replica", new.name, 2)


def test_sigstopped_primary_does_not_acknowledge_after_it_resumes(cluster: Cluster) -> None:
    old = cluster.wait_primary()
    put(old, "before")
    cluster.wait_converged()
    old.signal(signal.SIGSTOP)
    try:
        survivors = [n for n in cluster.nodes.values() if n is not old]
        new = cluster.wait_primary(timeout=20, among=survivors)
        put(new, "during")
    finally:
        old.signal(signal.SIGCONT)
    # Resumed, the old primary's lease is long gone: it must refuse or redirect, never ack.
    resp = old.put("stale-write", b"x")
    assert resp.status != 200, resp.body
    wait_for(lambda: old.status()["primary"] == new.name, 15, "the old primary to follow")
    cluster.wait_converged()
    assert new.hash() == old.hash()


def test_full_cluster_restart_keeps_the_epoch_history(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    put(primary, "a")
    cluster.wait_converged()
    cluster.stop()
    cluster.start()
    again = cluster.wait_primary(timeout=30)
    history = again.status()["consensus"]["history"]
    assert history[0]["epoch"] == 1 and history[-1]["primary"] == again.name
    put(again, "b")
    cluster.wait_converged()


def test_async_writes_lost_on_failover_are_kept_in_a_divergent_tail_file(tmp_path: Path) -> None:
    """n1 acknowledges writes n2 never receives; n2 takes over; n1 rejoins and keeps them."""
    cluster = Cluster(tmp_path, consensus=True, replication={"mode": "async"})
    n1, n2, n3 = (cluster.nodes[n] for n in ("n1", "n2", "n3"))
    proxy = FaultyProxy(cluster.addresses["n1"])
    try:
        only_n1 = {"n2": ["nofailover"], "n3": ["nofailover"]}
        via_proxy = dict(cluster.addresses, n1=proxy.port)
        cluster.write_config("n2", addresses=via_proxy, tags=only_n1)
        cluster.write_config("n3", tags=only_n1)
        cluster.write_config("n1", tags=only_n1)
        cluster.start()
        assert cluster.wait_primary() is n1
        for i in range(20):
            put(n1, f"shared-{i}")
        cluster.wait_converged()
        n3.stop()
        proxy.mode = "drop"                      # n2 stays in the Raft quorum, gets no data
        lost = [f"lost-{i}" for i in range(15)]
        for key in lost:
            put(n1, key)                         # acknowledged: async replication
        n2.stop()
        cluster.write_config("n2", addresses=via_proxy)   # n2 may now be promoted
        n2.start()
        cluster.wait_primary(among=[n1])         # quorum again; n1 still primary
        n1.signal(signal.SIGKILL)
        n1.proc.wait(10)  # type: ignore[union-attr]
        n3.start()
        assert cluster.wait_primary(among=[n2, n3]) is n2
        for i in range(30):
            put(n2, f"new-{i}")                  # reuses the seqs n1 gave the lost writes
        n1.start()
        wait_for(lambda: n1.status()["divergent_tails"], 20, "n1 to save its divergent tail")
        tail = n1.status()["divergent_tails"][0]
        # Each put takes two seqs, the op and its key's seq record (the tail keeps the puts):
        # the 20 shared puts are seqs 1..40, the 15 lost ones 41..70.
        assert (tail["epoch"], tail["ops"], tail["complete"]) == (1, 15, True)
        assert tail["first_seq"] == 41
        with open(tail["file"], "rb") as f:
            doc = cbor2.load(f)
        saved = [op[2].decode() for b in doc["batches"] for op in b["ops"]]
        assert all(op[1] != SEQ_CF for b in doc["batches"] for op in b["ops"])
        assert saved == lost
        assert "divergent tail: seqs 41..70 were written in epoch 1" in n1.log()
        proxy.mode = "pass"
        cluster.wait_converged()
    finally:
        proxy.close()
        cluster.stop()


def test_pause_holds_back_failover_and_hooks_report_role_changes(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, consensus=True)
    events = tmp_path / "hooks.log"
    for name in cluster.nodes:
        doc = cluster.config_doc()
        doc["hooks"] = {"on_role_change": f"echo $HACLUSTER_NODE $HACLUSTER_EVENT "
                                          f"$HACLUSTER_EPOCH >> {events}",
                        "on_promote": "exit 3", "timeout_s": 5}
        (tmp_path / f"{name}.yaml").write_text(__import__("yaml").safe_dump(doc))
    cluster.start()
    try:
        old = cluster.wait_primary()
        wait_for(lambda: events.exists() and f"{old.name} promote 1" in events.read_text(), 10,
                 "the promote hook")
        # A failing hook is only logged (the two hooks run side by side: either ends first).
        wait_for(lambda: "promote hook 'exit 3' exited 3" in old.log(), 10, "the failed hook")
        put(old, "k")
        cluster.wait_converged()   # replicas have a database: they can be promoted later
        assert old.post("/v1/admin/pause").json() == {"paused": True}
        survivors = [n for n in cluster.nodes.values() if n is not old]
        wait_for(lambda: all(n.status()["consensus"]["paused"] for n in survivors), 10,
                 "the pause to reach every node")
        old.signal(signal.SIGKILL)
        old.proc.wait(10)  # type: ignore[union-attr]
        time.sleep(3)   # several leases: nobody may take over while paused
        assert cluster.writable_primary(survivors) is None
        decision = survivors[0].status()["consensus"]["decision"]
        assert decision.startswith(f"PAUSE: {survivors[0].name}: {old.name}'s lease expired")
        assert decision.endswith("no automatic failover in maintenance mode")
        assert survivors[0].post("/v1/admin/resume").json() == {"paused": False}
        new = cluster.wait_primary(among=survivors)
        wait_for(lambda: f"{new.name} promote 2" in events.read_text(), 10, "the new hook")
    finally:
        cluster.stop()


def test_lock_holder_back_with_an_empty_database_hands_the_lock_over(cluster: Cluster) -> None:
    old = cluster.wait_primary()
    for i in range(30):
        put(old, f"k{i}")
    cluster.wait_converged()
    assert old.post("/v1/admin/pause").status == 200   # nobody takes over meanwhile
    old.stop()
    import shutil
    shutil.rmtree(old.data_dir / "db")                  # its Raft journal survives
    old.start()
    wait_for(lambda: "releasing the lock" in old.log(), 15, "the holder to release the lock")
    assert cluster.writable_primary() is None
    others = [n for n in cluster.nodes.values() if n is not old]
    assert others[0].post("/v1/admin/resume").status == 200
    new = cluster.wait_primary(among=others)
    assert new.hash()["column_families"]["default"]["keys"] == 30
    cluster.wait_converged()                            # the wiped node bootstraps


def test_switchover_to_a_named_replica_loses_nothing(cluster: Cluster) -> None:
    old = cluster.wait_primary()
    target = next(n for n in cluster.nodes.values() if n is not old)
    for i in range(200):
        put(old, f"k{i}")
    old_raft = f"127.0.0.1:{cluster.raft_ports[old.name]}"
    was_raft_leader = old.status()["consensus"]["raft"]["leader"] == old_raft
    resp = old.post("/v1/admin/switchover", {"to": target.name})
    assert resp.status == 200, resp.body
    assert resp.json() == {"switched_over_to": target.name, "from": old.name}
    assert cluster.wait_primary() is target
    status = target.status()
    history = status["consensus"]["history"]
    # 200 puts before it, each op and its key's seq record: seqs 1..400
    assert (history[-1]["epoch"], history[-1]["primary"], history[-1]["reason"],
            history[-1]["start_seq"]) == (2, target.name, "switchover", 2 * 200 + 1)
    assert f"{old.name} handed over to {target.name}" in target.log()
    # The Raft leadership leaves the old primary too, so restarting it costs no election.
    wait_for(lambda: target.status()["consensus"]["raft"]["leader"] != old_raft, 15,
             "the Raft leadership to move")
    if was_raft_leader:
        assert "Raft leadership transfer to" in old.log()
        assert "did not happen within" not in old.log()
    put(target, "after")
    wait_for(lambda: old.status()["primary"] == target.name, 10, "the old primary to follow")
    cluster.wait_converged()
    assert target.hash()["column_families"]["default"]["keys"] == 201
    assert old.status()["divergent_tails"] == []
    # Nobody to hand over to: refused, and the primary keeps serving.
    assert target.post("/v1/admin/switchover", {"to": "nobody"}).status == 409
    put(target, "still-primary")


def test_sync_mode_loses_no_acknowledged_write_when_the_primary_is_killed(
        tmp_path: Path) -> None:
    from hacluster.testing.harness import read_db
    from hacluster.testing.history import Writer, check_all
    cluster = Cluster(tmp_path, consensus=True, replication={"mode": "sync"})
    writer = Writer(list(cluster.nodes.values()), prefix="w")
    try:
        cluster.start()
        old = cluster.wait_primary()
        wait_for(lambda: old.status()["consensus"]["sync_set"], 10, "a synchronous standby")
        writer.start()
        writer.wait_acked(200, 20)
        old.signal(signal.SIGKILL)
        old.proc.wait(10)  # type: ignore[union-attr]
        survivors = [n for n in cluster.nodes.values() if n is not old]
        new = cluster.wait_primary(among=survivors)
        writer.wait_acked(50, 20, node=new.name)
        history = writer.stop()
        assert new.status()["epoch"] == 2
    finally:
        writer.stop()
        cluster.stop()
    _, contents = read_db(new.data_dir / "db")
    verdict = check_all(history, contents["default"])   # no acknowledged write lost, no overlap
    assert verdict.ok, str(verdict)
    assert verdict.epochs == [1, 2], str(verdict)


def test_a_switchover_to_a_configured_node_not_heard_from_yet_waits_for_it(
        tmp_path: Path) -> None:
    # n3 is in the configuration but has not started: no report of it in Raft. A switchover
    # naming it is not refused as a stranger at once (right after a start or an election a
    # member's report may be a moment away); it waits for it, as for an unnamed successor,
    # and only then says no one qualifies. A name nobody configured is refused at once.
    cluster = Cluster(tmp_path, consensus=True, replication={"mode": "async"})
    try:
        for name in ("n1", "n2"):
            cluster.nodes[name].start()
        old = cluster.wait_primary()
        started = time.monotonic()
        resp = old.post("/v1/admin/switchover", {"to": "n3"})
        waited = time.monotonic() - started
        assert resp.status == 409, resp.body
        assert "no healthy replica named n3 qualifies as successor" in resp.json()["error"]
        assert waited >= 4.0, waited
        started = time.monotonic()
        resp = old.post("/v1/admin/switchover", {"to": "n9"})
        assert resp.status == 409 and "'n9' is not a member" in resp.json()["error"]
        assert time.monotonic() - started < 4.0
        put(old, "still-primary")
    finally:
        cluster.stop()


def archived_through(node: NodeProc) -> int:
    return int((node.status().get("backup") or {}).get("archived_seq") or 0)


def test_a_replica_and_the_archive_behind_inside_a_run_of_the_new_primary_go_on_from_there(
        tmp_path: Path) -> None:
    """The new primary applied the old one's writes as a replica, several in one WAL record;
    the other replica, and the archive, had only the first of them. After the failover both
    go on from their position inside that record: the replica gets the record's rest (no 410,
    no checkpoint copy) and so does the archive (no gap, no new base backup)."""
    archive = tmp_path / "archive"
    # Heartbeats far apart: none comes between the runner's frames while it is stopped (a
    # replica's run ends at any frame but a batch).
    cluster = Cluster(tmp_path, consensus=True,
                      replication={"mode": "async", "heartbeat_interval": 5.0},
                      extra={"backup": {"url": f"file://{archive}", "archive_interval_s": 2.0,
                                        "base_backup_interval_s": 0}})
    n3 = cluster.nodes["n3"]
    proxies = {n: FaultyProxy(cluster.addresses[n]) for n in ("n1", "n2")}
    try:
        tags = {"n3": ["nofailover"]}            # the first and the next primary: n1 or n2
        for name in cluster.nodes:
            cluster.write_config(name, tags=tags, **({"addresses": dict(
                cluster.addresses, **{n: p.port for n, p in proxies.items()})}
                if name == "n3" else {}))
        cluster.start()
        old = cluster.wait_primary()
        runner = next(n for n in cluster.nodes.values() if n not in (old, n3))
        for i in range(10):
            put(old, f"warm-{i}")
        warm = old.status()["applied_seq"]
        wait_for(lambda: all(n.status()["applied_seq"] == warm and n.status()["replication"]
                             ["state"] == "streaming" for n in (runner, n3)), 20,
                 "both replicas streaming")
        runner.signal(signal.SIGSTOP)            # it will take what follows in one read
        try:
            for i in range(10):
                put(old, f"a-{i}")
            behind = old.status()["applied_seq"]
            wait_for(lambda: n3.status()["applied_seq"] == behind, 20, "n3 to apply a-*")
            wait_for(lambda: archived_through(old) == behind, 20, "the archive to hold a-*")
            # The next segment is two seconds away: what follows stays out of the archive.
            proxies[old.name].mode = "drop"      # n3 stays in Raft's quorum, gets no data
            for i in range(10):
                put(old, f"b-{i}")
        finally:
            runner.signal(signal.SIGCONT)
        top = old.status()["applied_seq"]
        wait_for(lambda: runner.status()["applied_seq"] == top, 20, "the runner to catch up")
        # What the test is about: n3's position is inside one of the runner's records.
        with pytest.raises(WalNotAtBoundary), \
                WalReader(runner.data_dir / "db", behind + 1, decode_ops=False) as reader:
            reader.read()
        seen = len(n3.log())
        assert archived_through(old) == behind, "slower than archive_interval_s: b-* archived"
        old.signal(signal.SIGKILL)
        old.proc.wait(10)  # type: ignore[union-attr]
        assert archived_through(runner) == 0 and len(list(archive.glob("base/*"))) == 1
        assert cluster.wait_primary(among=[runner, n3]) is runner
        put(runner, "after")
        top = runner.status()["applied_seq"]
        wait_for(lambda: n3.status()["applied_seq"] == top, 30, "n3 to follow the new primary")
        assert n3.hash() == runner.hash()
        assert f"n3 streaming from seq {behind + 1}" in runner.log()
        assert "bootstrap" not in n3.log()[seen:] and "bootstrap needed" not in runner.log()
        wait_for(lambda: archived_through(runner) == top, 30, "the archive to go on")
        assert f"continues at seq {behind + 1}" in runner.log()
        assert "the archive has a gap" not in runner.log()
        assert len(list(archive.glob("base/*"))) == 1
    finally:
        for p in proxies.values():
            p.close()
        cluster.stop()

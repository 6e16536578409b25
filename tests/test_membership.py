"""Raft membership changes with real processes: add a fourth node, then retire one.

The three first nodes run with a config that lists only themselves; the new node's config lists
all four. ``hacluster member add n4`` commits the change in Raft before n4 starts; n4 then
bootstraps from the primary. ``hacluster member remove n2`` takes n2 out: the membership is
three again, so losing one more node still leaves a quorum (with four members it would not).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from hacluster.testing.harness import Cluster, wait_for
from hacluster.testing.history import Endpoint, Writer, check_all


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hacluster", *args], capture_output=True,
                          text=True, timeout=120)


def test_add_a_node_then_remove_one_and_quorum_follows(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, ["n1", "n2", "n3", "n4"], consensus=True)
    first = {n: cluster.addresses[n] for n in ("n1", "n2", "n3")}
    for name in first:
        cluster.write_config(name, addresses=first)
    n1, n2, n3, n4 = (cluster.nodes[n] for n in ("n1", "n2", "n3", "n4"))
    try:
        for node in (n1, n2, n3):
            node.start()
        primary = cluster.wait_primary(among=[n1, n2, n3])
        for i in range(100):
            assert primary.put(f"k{i}", b"v").status == 200
        full = str(cluster.root / "n4.yaml")          # lists all four nodes
        old_config = str(cluster.root / "n1.yaml")     # does not list n4 yet
        unknown = cli("member", "add", "n4", "--config", old_config)
        assert unknown.returncode == 2 and "--raft HOST:PORT" in unknown.stderr
        raft = f"127.0.0.1:{cluster.raft_ports['n4']}"
        added = cli("member", "add", "n4", "--config", old_config, "--raft", raft)
        assert added.returncode == 0, added.stderr
        wait_for(lambda: len(primary.status()["consensus"]["raft"]["members"]) == 4, 10,
                 "the membership to reach four")
        again = cli("member", "add", "n4", "--config", full)
        assert again.returncode == 1 and "already a Raft member" in again.stderr
        n4.start()
        cluster.wait_converged(nodes=[n for n in (n1, n2, n3, n4) if n is not primary])
        view = n1.get("/cluster").json()
        assert {m["name"] for m in view["members"]} == {"n1", "n2", "n3", "n4"}

        # Retire a replica (never the primary), then lose one more: 2 of 3 is a quorum.
        leaving = next(n for n in (n2, n3) if n is not primary)
        refused = cli("member", "remove", primary.name, "--config", full, "--yes")
        assert refused.returncode == 1 and "switch over first" in refused.stderr
        leaving.stop()
        done = cli("member", "remove", leaving.name, "--config", full, "--yes")
        assert done.returncode == 0, done.stderr
        remaining = [n for n in (n1, n2, n3, n4) if n is not leaving]
        wait_for(lambda: all(len(n.status()["consensus"]["raft"]["members"]) == 3
                             for n in remaining), 10, "every node to see three members")
        assert leaving.name not in {m["name"] for m in
                                    primary.get("/cluster").json()["members"]}
        writer = Writer([Endpoint(n.name, n.host, n.port) for n in remaining]).start()
        writer.wait_acked(50, 20)
        victim = next(n for n in remaining if n is not primary)
        victim.signal(signal.SIGKILL)
        victim.proc.wait(10)  # type: ignore[union-attr]
        survivors = [n for n in remaining if n is not victim]
        count = len(writer.acked())
        writer.wait_acked(count + 100, 30)             # still writable: 2 of 3 members
        history = writer.stop()
        new = cluster.wait_primary(among=survivors)
        victim.start()
        cluster.wait_converged(nodes=[n for n in remaining if n is not new])
        hashes = {n.name: n.hash() for n in remaining}
        assert len({str(h) for h in hashes.values()}) == 1
        keys = {k.encode() for k in (op.key for op in history.acked())}
        missing = [k for k in keys if n1.get(f"/v1/kv/{k.decode()}?stale=1").status != 200]
        assert not missing
        assert check_all(history).ok
    finally:
        cluster.stop()

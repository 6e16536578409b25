"""Dynamic configuration on a real three-node consensus cluster, under a writer.

The CLI (``python -m hacluster config ...``) changes the replication mode and the size of the
synchronous set while a writer runs; every node takes the change on without a restart (same
pids), the history checker stays green, unsafe changes are refused with the key and the
reason, a restarted node takes the setting from Raft (its file says otherwise), and /history
records every change.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hacluster.client import Client, RequestFailed
from hacluster.testing.harness import Cluster, NodeProc, read_db, wait_for
from hacluster.testing.history import Writer, check_all


def cli(cluster: Cluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hacluster", "config", *args, "--config",
         str(cluster.root / "n1.yaml")], capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, env={**os.environ, **env})


def settings_of(node: NodeProc) -> dict[str, Any]:
    doc: dict[str, Any] = node.status()["consensus"]["settings"]
    return doc


def wait_in_effect(cluster: Cluster, key: str, value: Any) -> int:
    """Every running node has the same version in effect, with ``key`` at ``value``."""
    def settled() -> int | None:
        docs = [settings_of(n) for n in cluster.nodes.values() if n.running]
        versions = {(d["version"], d["in_effect"]) for d in docs}
        if len(versions) == 1 and all(d["values"][key] == value and d["error"] is None
                                      for d in docs):
            version, in_effect = versions.pop()
            return version if version == in_effect else None
        return None
    result: int = wait_for(settled, 20, f"{key}={value} in effect on every node")
    return result


def test_mode_and_sync_set_size_change_under_a_writer_without_a_restart(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, consensus=True)
    cluster.start()
    writer = Writer(list(cluster.nodes.values()), prefix="w")
    try:
        primary = cluster.wait_primary()
        wait_for(lambda: primary.status()["consensus"]["sync_set"], 15, "a synchronous standby")
        pids = {name: node.proc.pid for name, node in cluster.nodes.items()
                if node.proc is not None}
        writer.start()
        writer.wait_acked(100, 30)

        # sync -> async: writes no longer wait for a standby.
        done = cli(cluster, "set", "replication.mode", "async")
        assert done.returncode == 0, done.stderr
        assert "version 1" in done.stdout, done.stdout
        wait_in_effect(cluster, "replication.mode", "async")
        assert primary.get("/cluster").json()["mode"] == "async"
        writer.wait_acked(len(writer.acked()) + 100, 30)

        # Back to sync with both replicas in the synchronous set.
        done = cli(cluster, "set", "replication.mode", "sync", "replication.sync_replicas", "2")
        assert done.returncode == 0, done.stderr
        wait_in_effect(cluster, "replication.sync_replicas", 2)
        wait_for(lambda: len(primary.status()["consensus"]["sync_set"]) == 2, 20,
                 "a synchronous set of two")
        writer.wait_acked(len(writer.acked()) + 100, 30)

        # Unsafe or invalid changes: refused, the key and the reason named, nothing changed.
        version = settings_of(primary)["version"]
        for args, said in ((("consensus.lease_s", "0.3"), "election"),
                           (("consensus.renew_interval_s", "0.7"), "shorter than lease_s"),
                           (("replication.sync_replicas", "3"), "needs at least 4 nodes"),
                           (("replication.mode", "fast"), "must be sync or async"),
                           (("cluster.name", "x"), "not a dynamic setting")):
            done = cli(cluster, "set", *args)
            assert done.returncode == 1 and args[0] in done.stderr and said in done.stderr, \
                (args, done.stderr)
        with Client.from_config(str(cluster.root / "n2.yaml")) as client:
            try:
                client.change_cluster_config({"replication.sync_timeout_s": 4}, 0)
                raise AssertionError("a change read at version 0 was accepted")
            except RequestFailed as exc:
                assert exc.status == 409 and "changed meanwhile" in str(exc), exc
        assert settings_of(primary)["version"] == version

        # The editor: a changed line becomes an override; --yes applies without asking.
        done = cli(cluster, "edit", "--yes", EDITOR="sed -i "
                   "s/^replication.sync_timeout_s:.*/replication.sync_timeout_s:\\ 7.0/")
        assert done.returncode == 0, done.stderr
        assert "replication.sync_timeout_s: 5.0 -> 7.0" in done.stdout, done.stdout
        wait_in_effect(cluster, "replication.sync_timeout_s", 7.0)

        # A restarted replica takes the settings from Raft, though its file says otherwise.
        replica = next(n for n in cluster.nodes.values() if n is not primary)
        replica.stop()
        replica.start()
        pids[replica.name] = replica.proc.pid if replica.proc else 0
        wait_in_effect(cluster, "replication.sync_replicas", 2)
        assert settings_of(replica)["file"]["replication.sync_replicas"] == 1

        # Reset: the file's values again.
        done = cli(cluster, "reset", "replication.sync_replicas", "replication.mode",
                   "replication.sync_timeout_s")
        assert done.returncode == 0, done.stderr
        wait_in_effect(cluster, "replication.sync_replicas", 1)
        assert settings_of(primary)["overrides"] == {}
        writer.wait_acked(len(writer.acked()) + 50, 30)

        shown = cli(cluster, "show")
        assert shown.returncode == 0 and "replication.mode" in shown.stdout, shown
        history = primary.get("/history").json()
        changes = [h for h in history if h["kind"] == "settings"]
        assert [h["version"] for h in changes] == [1, 2, 3, 4], changes
        assert changes[0]["changes"] == {"replication.mode": "async"}
        assert changes[-1]["changes"]["replication.mode"] is None
        assert [h["epoch"] for h in history if h["kind"] == "epoch"] == [1]
        # No node restarted for any of it (the replica restarted on purpose above).
        assert {n: node.proc.pid for n, node in cluster.nodes.items() if node.proc} == pids
        for node in cluster.nodes.values():
            assert "dynamic configuration version 4 in effect" in node.log(), node.name

        ops = writer.stop().ops()
        cluster.wait_converged(timeout=30)
        final = cluster.wait_primary()
        cluster.stop()
        _, contents = read_db(final.data_dir / "db")
        verdict = check_all(ops, contents["default"])
        assert verdict.ok, str(verdict)
    finally:
        with contextlib.suppress(RuntimeError):
            writer.stop()
        cluster.stop()

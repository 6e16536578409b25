"""The operator CLI and the Python client against a real three-node consensus cluster.

Every command runs as ``python -m hacluster ...`` in a subprocess against real node processes,
and the tests check the cluster afterwards through HTTP (or by reading a stopped DB), never
through what the command printed alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hacluster.client import Client, NoLeader, OutcomeUnknown
from hacluster.config import load_config
from hacluster.role import VERSION
from hacluster.testing.harness import Cluster, read_db, wait_for
from hacluster.tools import cli as cli_module
from hacluster.tools import ctl


def cli(*args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    kw.setdefault("stdin", subprocess.DEVNULL)     # never a terminal: no prompt can wait
    return subprocess.run([sys.executable, "-m", "hacluster", *args], capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, consensus=True)
    c.start()
    c.wait_primary()
    yield c
    c.stop()


def config(cluster: Cluster) -> str:
    return str(cluster.root / "n1.yaml")


def client(cluster: Cluster, **kw: object) -> Client:
    return Client.from_config(config(cluster), **kw)  # type: ignore[arg-type]


def test_every_command_has_help() -> None:
    for command in ("run", "up", "check-config", "status", "switchover", "failover", "pause",
                    "resume", "history", "reinit", "backup", "demo"):
        done = cli(command, "--help")
        assert done.returncode == 0 and "usage: hacluster" in done.stdout, command


def test_version_prints_the_package_version() -> None:
    done = cli("--version")
    assert done.returncode == 0 and done.stdout == f"hacluster {VERSION}\n"


def test_config_comes_from_the_environment_then_a_default(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HACLUSTER_CONFIG"}
    empty = tmp_path / "empty"
    empty.mkdir()
    if not Path("/etc/hacluster/cluster.yaml").exists():
        missing = cli("check-config", cwd=empty, env=env)
        assert missing.returncode == 2
        assert "HACLUSTER_CONFIG" in missing.stderr and "./cluster.yaml" in missing.stderr
        assert "/etc/hacluster/cluster.yaml" in missing.stderr
    bad = cli("status", cwd=empty, env={**env, "HACLUSTER_CONFIG": str(empty / "nope.yaml")})
    assert bad.returncode == 2 and "$HACLUSTER_CONFIG=" in bad.stderr
    done = cli("history", "--json", cwd=empty, env={**env, "HACLUSTER_CONFIG": config(cluster)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["reason"] == "bootstrap"
    (empty / "cluster.yaml").write_text(Path(config(cluster)).read_text())
    local = cli("check-config", cwd=empty, env=env)
    assert local.returncode == 0 and local.stdout.startswith("cluster.yaml: ok"), local.stderr
    # --config wins over the environment.
    given = cli("check-config", "--config", config(cluster), cwd=empty,
                env={**env, "HACLUSTER_CONFIG": str(empty / "nope.yaml")})
    assert given.returncode == 0, given.stderr


def test_confirm_asks_on_a_terminal_and_refuses_without_one(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_module.confirm("wipe it?", yes=True) is None

    class Tty:
        def isatty(self) -> bool:
            return True

    class NoTty:
        def isatty(self) -> bool:
            return False

    monkeypatch.setattr(sys, "stdin", NoTty())
    assert cli_module.confirm("wipe it?", yes=False) == 2
    assert "pass --yes" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", Tty())
    questions: list[str] = []
    for answer, expected in (("y", None), ("YES", None), ("", 1), ("n", 1)):
        monkeypatch.setattr("builtins.input", lambda q, a=answer: questions.append(q) or a)
        assert cli_module.confirm("wipe it?", yes=False) == expected
    assert questions[0] == "wipe it? [y/N] "


class _FakeClient:
    def __init__(self, view: dict[str, Any]) -> None:
        self.view = view

    def cluster(self) -> dict[str, Any]:
        return self.view


def test_status_marks_a_silent_member_and_shows_its_own_epoch(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(config(cluster))
    member = {"url": "http://x", "sync": False, "applied_seq": 10, "lag": 0, "tags": [],
              "state": "running", "role": "replica"}
    view = {"leader": "n1", "epoch": 7, "paused": False, "mode": "sync", "members": [
        {**member, "name": "n1", "role": "primary", "member_epoch": 7, "report_age_s": 2.5},
        {**member, "name": "n2", "member_epoch": 6, "report_age_s": 0.2},
        {**member, "name": "n3", "member_epoch": None, "report_age_s": None}]}
    assert ctl.status(_FakeClient(view), cfg, False) == 0  # type: ignore[arg-type]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in capsys.readouterr().out.splitlines() if line.startswith("| n")}
    assert rows["n1"][3:5] == ["unreachable?", "7"] and rows["n1"][7] == "2.5 s ago"
    assert rows["n2"][3:5] == ["running", "6"] and rows["n2"][7] == "0.2 s ago"
    assert rows["n3"][3:5] == ["running", "7 (cluster)"] and rows["n3"][7] == ""


def test_status_and_history_show_the_cluster(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    assert primary.put("k", b"v").status == 200
    cluster.wait_converged()
    done = cli("status", "--config", config(cluster), "--json")
    assert done.returncode == 0, done.stderr
    view = json.loads(done.stdout)
    assert view["leader"] == primary.name
    assert {m["name"] for m in view["members"]} == {"n1", "n2", "n3"}
    assert all(m["url"].startswith("http://127.0.0.1:") for m in view["members"])
    assert all(m["report_age_s"] is not None and m["member_epoch"] is not None
               for m in view["members"])
    table = cli("status", "--config", config(cluster)).stdout
    assert "| Member" in table and f"| {primary.name}" in table and "primary" in table
    hist = cli("history", "--config", config(cluster)).stdout
    assert "bootstrap" in hist and "| Epoch" in hist


def test_switchover_pause_resume_and_forced_failover(cluster: Cluster) -> None:
    old = cluster.wait_primary()
    target = next(n for n in cluster.nodes.values() if n is not old)
    done = cli("switchover", "--config", config(cluster), "--to", target.name)
    assert done.returncode == 0, done.stderr
    assert f"switchover done: {target.name} is primary" in done.stdout
    assert cluster.wait_primary() is target
    # Asked again (a retry whose first answer was lost, a re-run playbook): the state holds,
    # nothing is switched and nothing refused.
    again = cli("switchover", "--config", config(cluster), "--to", target.name)
    assert again.returncode == 0, again.stderr
    assert f"{target.name} is already the primary: nothing to do" in again.stdout
    assert cluster.wait_primary() is target
    assert target.put("after-switchover", b"v").status == 200
    cluster.wait_converged()
    # No automatic failover in pause mode; an operator names the successor.
    assert cli("pause", "--config", config(cluster)).returncode == 0
    wait_for(lambda: all(n.status()["consensus"]["paused"] for n in cluster.nodes.values()),
             10, "the pause to reach every node")
    survivors = [n for n in cluster.nodes.values() if n is not target]
    sync_set = target.status()["consensus"]["sync_set"]
    outside = [n for n in survivors if n.name not in sync_set]
    target.signal(signal.SIGKILL)
    target.proc.wait(10)  # type: ignore[union-attr]
    # Until its lease has run out the killed primary still counts as healthy.
    wait_for(lambda: all(n.get("/leader").status == 503 for n in survivors), 10,
             "the survivors to see the lease expire")

    def killed_row() -> str:
        out = cli("status", "--config", config(cluster)).stdout
        return next(line for line in out.splitlines() if line.startswith(f"| {target.name} "))

    # Its last report is older than the lease: no longer shown as running.
    wait_for(lambda: "unreachable" in killed_row(), 5, "status to mark the killed primary")
    refused = None
    if outside:   # a node outside the synchronous set may lack acknowledged writes
        refused = cli("failover", "--config", config(cluster), "--to", outside[0].name)
        wait_for(lambda: cluster.writable_primary(survivors) is None, 5, "no primary")
    chosen = next(n for n in survivors if n.name in sync_set)
    done = cli("failover", "--config", config(cluster), "--to", chosen.name)
    assert done.returncode == 0, done.stderr + done.stdout
    assert cluster.wait_primary(among=survivors) is chosen
    if refused is not None:
        assert refused.returncode == 1
        assert "not in the synchronous set" in refused.stderr
    history = chosen.status()["consensus"]["history"]
    assert history[-1]["reason"] == "manual failover"
    assert cli("resume", "--config", config(cluster)).returncode == 0
    # With a healthy primary a failover is refused: that is what switchover is for.
    again = cli("failover", "--config", config(cluster), "--to", outside[0].name
                if outside else chosen.name)
    assert again.returncode == 1 and "use a switchover" in again.stderr


def test_reinit_rebuilds_a_replica_from_a_checkpoint(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    for i in range(100):
        assert primary.put(f"k{i}", b"v" * 100).status == 200
    cluster.wait_converged()
    replica = next(n for n in cluster.nodes.values() if n is not primary)
    before = replica.log().count("bootstrapped from checkpoint")
    asked = cli("reinit", "--config", config(cluster), replica.name)
    assert asked.returncode == 2 and "pass --yes" in asked.stderr     # no terminal to ask on
    assert replica.log().count("bootstrapped from checkpoint") == before
    done = cli("reinit", "--config", config(cluster), replica.name, "--yes")
    assert done.returncode == 0, done.stderr + done.stdout
    assert f"{replica.name}: reinitialised and streaming" in done.stdout
    assert replica.log().count("bootstrapped from checkpoint") == before + 1
    cluster.wait_converged()
    refused = cli("reinit", "--config", config(cluster), primary.name, "--yes")
    assert refused.returncode == 1 and "is the primary" in refused.stderr


def test_backup_is_a_consistent_copy_that_opens(cluster: Cluster, tmp_path: Path) -> None:
    primary = cluster.wait_primary()
    primary.batch([{"op": "put", "cf": "users", "key": f"u{i}", "value": "x"}
                   for i in range(500)])
    dest = tmp_path / "backup-1"
    done = cli("backup", "--config", config(cluster), str(dest))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "backup done" in done.stdout
    seq, contents = read_db(dest)
    assert seq == primary.status()["applied_seq"]
    assert len(contents["users"]) == 500
    assert cli("backup", "--config", config(cluster), str(dest)).returncode == 1   # exists
    # A backup is no replica: nothing to show (or alert on) in the primary's positions.
    assert [r["name"] for r in primary.status()["replicas"]] == sorted(
        n.name for n in cluster.nodes.values() if n is not primary)


def test_client_reads_writes_and_survives_a_failover(cluster: Cluster) -> None:
    c = client(cluster, failover_timeout=20.0)
    odd = "a key/with?odd&chars %"
    c.put(odd, b"1")
    assert c.get(odd) == b"1"
    binary = b"bin\xff\x00key"
    c.put(binary, b"\x00\x01", cf="events")
    assert dict(c.scan(b"bin", cf="events")) == {binary: b"\x00\x01"}
    assert c.get(binary, cf="events") == b"\x00\x01"
    assert c.get(b"bin\xff", cf="events") is None            # a prefix of it is not it
    c.delete(binary, cf="events")
    assert list(c.scan(b"bin", cf="events")) == []
    assert c.get("absent") is None
    result = c.batch([{"op": "put", "key": f"s{i:03d}", "value": b"v"} for i in range(250)])
    assert result.seq - result.first_seq == 2 * 250 - 1      # each op and its key's seq record
    assert [k for k, _ in c.scan("s", page=100)] == [f"s{i:03d}".encode() for i in range(250)]
    old = cluster.wait_primary()
    old.signal(signal.SIGKILL)
    old.proc.wait(10)  # type: ignore[union-attr]
    acked, unknown = [], 0
    for i in range(30):
        try:
            r = c.put(f"after-{i}", b"v")
        except OutcomeUnknown:
            unknown += 1
            continue
        acked.append(r)
    assert acked and all(r.node != old.name for r in acked)
    assert unknown <= 1
    assert c.get("after-29") == b"v" or unknown
    assert c.leader()["leader"] == acked[-1].node
    # Everything down: the client says so instead of hanging.
    cluster.stop()
    quick = client(cluster, failover_timeout=1.0)
    with pytest.raises(NoLeader):
        quick.put("nobody", b"v")

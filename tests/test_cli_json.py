"""``--json`` on every read command of the ``hacluster`` CLI (issue 15, item 4).

Every command is classified below as reading or changing something; a new command fails
``test_every_command_is_classified`` until it is added to one list, and every reading one
must take ``--json``. Each reading command then runs as ``python -m hacluster ...`` against
one real three-node cluster (module-scoped: they only read), and its JSON document is checked
against what the nodes themselves answer over HTTP; without ``--json`` it prints for people
(not JSON).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hacluster.testing.harness import Cluster, wait_for
from hacluster.tools.cli import build_parser

# Commands that only read (the cluster, its archive, a config or a certificate file): each
# takes --json. `backup list` is a form of `backup` (its DEST word), whose parser has --json.
READ_COMMANDS = {"status", "history", "check-config", "config show", "certs show",
                 "backup list"}
# Commands that change something or run something (a node, a demo, files, the cluster).
OTHER_COMMANDS = {"run", "up", "switchover", "failover", "pause", "resume", "reinit", "backup",
                  "member", "config set", "config reset", "config edit", "demo", "certs init",
                  "certs issue", "token new", "restore", "bootstrap-from"}
FORMS = {"backup list": "backup"}       # a read form of a command -> the command's parser


def commands(parser: argparse.ArgumentParser, prefix: str = ""
             ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every leaf command of ``parser`` by its words (``certs show``), with its parser."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix.strip(), parser
        return
    for name, sub in subs[0].choices.items():
        yield from commands(sub, f"{prefix} {name}")


def test_every_command_is_classified_and_every_read_command_takes_json() -> None:
    found = dict(commands(build_parser()))
    listed = {FORMS.get(c, c) for c in READ_COMMANDS | OTHER_COMMANDS}
    unclassified = set(found) - listed
    assert not unclassified, (f"new commands {sorted(unclassified)}: add each to READ_COMMANDS "
                              "(and give it --json) or to OTHER_COMMANDS in this file")
    gone = listed - set(found)
    assert not gone, f"listed here but no longer commands: {sorted(gone)}"
    without = [c for c in sorted(READ_COMMANDS) if not any(
        "--json" in a.option_strings for a in found[FORMS.get(c, c)]._actions)]
    assert not without, f"read commands without --json: {without}"


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hacluster", *args], capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, cwd=cwd)


def as_json(*args: str) -> Any:
    done = cli(*args, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)          # the whole of stdout is one JSON document


def for_people(*args: str) -> str:
    done = cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    with pytest.raises(ValueError):
        json.loads(done.stdout)
    return done.stdout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("cli-json")
    # A file:// archive, for `backup list` (the primary archives into it on its own).
    c = Cluster(root, consensus=True, extra={"backup": {"url": f"file://{root}/archive"}})
    c.start()
    try:
        c.wait_primary()
        yield c
    finally:
        c.stop()


def config(cluster: Cluster) -> str:
    return str(cluster.root / "n1.yaml")


def test_status_json_is_the_cluster_view(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    # The node the command asks may learn of the new primary a Raft round after the primary
    # itself (seen once in a full run, right after the cluster started).
    doc = wait_for(lambda: (d if (d := as_json("status", "--config", config(cluster)))["leader"]
                            == primary.name else None), 15, "`hacluster status` to name "
                   f"{primary.name}")
    assert sorted(m["name"] for m in doc["members"]) == sorted(cluster.nodes)
    assert doc["epoch"] == primary.status()["epoch"]
    assert "Member" in for_people("status", "--config", config(cluster))


def test_history_json_lists_the_epochs(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    doc = as_json("history", "--config", config(cluster))
    assert doc[0]["reason"] == "bootstrap"
    assert doc[-1]["primary"] == primary.name and doc[-1]["epoch"] == primary.status()["epoch"]
    assert "Epoch" in for_people("history", "--config", config(cluster))


def test_config_show_json_is_the_dynamic_configuration(cluster: Cluster) -> None:
    cluster.wait_primary()
    doc = as_json("config", "show", "--config", config(cluster))
    assert isinstance(doc["version"], int) and isinstance(doc["values"], dict)
    assert doc["values"].get("replication.mode", "sync") == "sync"
    assert "Key" in for_people("config", "show", "--config", config(cluster))


def test_backup_list_json_is_the_archive_catalog(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    assert primary.put("listed", b"x").status == 200
    # The primary's first base backup is taken at start; wait until the archive shows one.
    wait_for(lambda: as_json("backup", "list", "--config", config(cluster))["base_backups"],
             60, "a base backup in the archive")
    doc = as_json("backup", "list", "--config", config(cluster))
    newest = doc["base_backups"][-1]
    assert newest["epoch"] <= primary.status()["epoch"]
    assert newest["seq"] <= primary.status()["applied_seq"]
    assert isinstance(doc["restorable"], list) and doc["segments"] >= 0
    assert newest["id"] in for_people("backup", "list", "--config", config(cluster))


def test_check_config_json_gives_the_verdict(cluster: Cluster, tmp_path: Path) -> None:
    doc = as_json("check-config", "--config", config(cluster))
    assert doc == {"config": config(cluster), "ok": True, "cluster": "test",
                   "nodes": sorted(cluster.nodes)}
    assert "ok (3 nodes)" in for_people("check-config", "--config", config(cluster))
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(config(cluster)).read_text().replace("data_dir:", "datadir:"))
    done = cli("check-config", "--config", str(bad), "--json")
    assert done.returncode == 2
    verdict = json.loads(done.stdout)
    assert verdict["ok"] is False and verdict["config"] == str(bad)
    assert "data_dir" in verdict["error"] and "data_dir" in done.stderr


def test_certs_show_json_names_the_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert cli("certs", "init", "--dir", str(pki)).returncode == 0
    assert cli("certs", "issue", "n1", "--dir", str(pki), "--host", "127.0.0.1").returncode == 0
    doc = as_json("certs", "show", str(pki / "n1.crt"))
    assert doc["subject_cn"] == "n1" and "127.0.0.1" in doc["san"]
    shown = for_people("certs", "show", str(pki / "n1.crt"))
    assert "subject_cn" in shown and "127.0.0.1" in shown

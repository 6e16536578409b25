"""Continuous backup to a ``file://`` archive with client-side encryption, real processes: a
restore equals the primary's database; bad input — a wrong key, a corrupted or a missing
archive object, a gap — fails with the object or the range named and leaves nothing at the
target; ``backup now`` and ``backup list`` from the CLI; ``bootstrap-from`` seeds a new
cluster's first node (or every node), which serves the restored data as primary of a new epoch
history; a restart of every node continues the archive without a gap or a duplicate."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hacluster.backup.layout import WAL_PREFIX, parse_segments
from hacluster.testing.harness import Cluster, NodeProc, read_db, wait_for

KEY = "11" * 32
OTHER_KEY = "22" * 32


def hacluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hacluster", *args], capture_output=True,
                          text=True, timeout=120)


def archived_through(node: NodeProc) -> int:
    return int((node.status().get("backup") or {}).get("archived_seq") or 0)


def with_key(config: Path, key: str, dest: Path) -> Path:
    doc = yaml.safe_load(config.read_text())
    doc["backup"]["encryption_key"] = key
    dest.write_text(yaml.safe_dump(doc))
    return dest


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A stopped two-node cluster whose primary archived three rounds of writes."""
    root = tmp_path_factory.mktemp("backup-file")
    archive = root / "archive"
    c = Cluster(root, ("n1", "n2"), extra={"backup": {
        "url": f"file://{archive}", "archive_interval_s": 0.3, "base_backup_interval_s": 0,
        "compression": "gzip", "encryption": "client", "encryption_key": KEY}})
    c.start()
    config = c.nodes["n1"].config
    try:
        primary = c.primary
        # The base backup the primary takes as it starts comes before the first round, so a
        # restore to that round's seq has one to start from.
        wait_for(lambda: any((archive / "base").glob("*/manifest.json")), 30,
                 "the first base backup")
        # A base's time is its name's whole second, and a restore to a time only starts from
        # a base whose second had ended by then: the rounds' times must come after it.
        time.sleep(1.05)
        seqs = []
        times = []
        for round_ in range(3):
            for i in range(40):
                resp = primary.put(f"r{round_}-{i:03d}", f"value {round_} {i}".encode())
                assert resp.status == 200
            seqs.append(resp.json()["seq"])
            wait_for(lambda: archived_through(primary) >= seqs[-1], 30, "the archive")
            times.append(time.time())
        now = hacluster("backup", "now", "--json", "--config", str(config))
        assert now.returncode == 0, now.stderr
        base = json.loads(now.stdout)["base_backup"]
        assert base["seq"] == seqs[-1]
    finally:
        c.stop()
    return {"root": root, "archive": archive, "config": config, "seqs": seqs, "times": times,
            "db": c.nodes["n1"].data_dir / "db"}


def segment_files(archive: Path) -> list[Path]:
    listing = [(p.relative_to(archive).as_posix(), p.stat().st_size)
               for p in (archive / "wal").iterdir()]
    return [archive / s.name for s in parse_segments(listing) if s.name.startswith(WAL_PREFIX)]


def test_a_restore_equals_the_primary_and_backup_list_shows_it(archived: dict[str, Any],
                                                              tmp_path: Path) -> None:
    listed = hacluster("backup", "list", "--json", "--config", str(archived["config"]))
    assert listed.returncode == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert [b["seq"] for b in doc["base_backups"]][-1] == archived["seqs"][-1]
    assert doc["restorable"][0]["to_seq"] == archived["seqs"][-1]
    assert "restorable" in hacluster("backup", "list", "--config",
                                     str(archived["config"])).stdout
    # From the first base backup, replaying every segment (the newest base is after it).
    target = tmp_path / "r"
    done = hacluster("restore", "--to-seq", str(archived["seqs"][-1] - 1), "--target",
                     str(target), "--config", str(archived["config"]))
    assert done.returncode == 0, done.stderr
    seq, content = read_db(target)
    primary_seq, primary = read_db(archived["db"])
    # Each write takes two seqs (its key and its seq record): seq - 1 is inside the last one.
    assert "inside a batch" in done.stdout
    assert seq == archived["seqs"][-1] - 2 and primary_seq == archived["seqs"][-1]
    last = f"r2-{39:03d}".encode()
    assert {k: v for k, v in primary["default"].items() if k != last} == content["default"]


def test_a_restore_to_a_time_has_what_was_archived_by_then(archived: dict[str, Any],
                                                          tmp_path: Path) -> None:
    when = archived["times"][1]
    done = hacluster("restore", "--to-time", str(when), "--target", str(tmp_path / "r"),
                     "--config", str(archived["config"]))
    assert done.returncode == 0, done.stderr
    seq, content = read_db(tmp_path / "r")
    assert seq == archived["seqs"][1]
    assert sorted(content["default"])[-1] == b"r1-039" and len(content["default"]) == 80
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when - 3600))
    early = hacluster("restore", "--to-time", iso, "--target", str(tmp_path / "e"),
                      "--config", str(archived["config"]))
    assert early.returncode == 1 and "no base backup at or before that time" in early.stderr


def test_a_missing_base_backup_part_is_named(archived: dict[str, Any], tmp_path: Path) -> None:
    # The base backup a restore to the first round's seq starts from: the newest at or below
    # it (named by its seq; the primary takes its first as it starts, before or after the
    # first writes).
    target = archived["seqs"][0]
    parts = [p for p in sorted((archived["archive"] / "base").glob("*/files/CURRENT.*"))
             if int(p.parent.parent.name.split("-")[0]) <= target][-1:]
    assert parts
    aside = tmp_path / "part"
    parts[0].rename(aside)
    try:
        done = hacluster("restore", "--to-seq", str(archived["seqs"][0]), "--target",
                         str(tmp_path / "r"), "--config", str(archived["config"]))
        assert done.returncode == 1
        assert f"object {parts[0].relative_to(archived['archive'])} is missing" in done.stderr
        assert not (tmp_path / "r").exists()
    finally:
        aside.rename(parts[0])


def test_a_wrong_key_is_named_and_nothing_is_written(archived: dict[str, Any],
                                                     tmp_path: Path) -> None:
    config = with_key(archived["config"], OTHER_KEY, tmp_path / "other.yaml")
    target = tmp_path / "r"
    done = hacluster("restore", "--latest", "--target", str(target), "--config", str(config))
    assert done.returncode == 1
    assert "wrong key" in done.stderr and "encrypted with another key" in done.stderr
    assert not target.exists() and not list(tmp_path.glob(".r.*"))


def test_a_corrupted_segment_is_named(archived: dict[str, Any], tmp_path: Path) -> None:
    victim = segment_files(archived["archive"])[1]
    original = victim.read_bytes()
    try:
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        victim.write_bytes(bytes(flipped))
        target = tmp_path / "r"
        done = hacluster("restore", "--to-seq", str(archived["seqs"][-1] - 1), "--target",
                         str(target), "--config", str(archived["config"]))
        assert done.returncode == 1
        assert victim.name in done.stderr and "corrupted" in done.stderr, done.stderr
        assert not target.exists()
    finally:
        victim.write_bytes(original)


def test_a_missing_segment_is_a_gap_naming_the_missing_seqs(archived: dict[str, Any],
                                                            tmp_path: Path) -> None:
    files = segment_files(archived["archive"])
    victim = files[1]
    ref = parse_segments([(f"wal/{victim.name}", 0)])[0]
    aside = tmp_path / victim.name
    victim.rename(aside)
    try:
        done = hacluster("restore", "--to-seq", str(archived["seqs"][-1] - 1), "--target",
                         str(tmp_path / "r"), "--config", str(archived["config"]))
        assert done.returncode == 1
        assert f"seqs {ref.first}..{ref.last} are missing" in done.stderr, done.stderr
        # Before the gap still restores.
        ok = hacluster("restore", "--to-seq", str(ref.first - 1), "--target",
                       str(tmp_path / "before"), "--config", str(archived["config"]))
        assert ok.returncode == 0, ok.stderr
        assert read_db(tmp_path / "before")[0] == ref.first - 1
    finally:
        aside.rename(victim)


def test_bootstrap_from_seeds_a_new_clusters_first_node(archived: dict[str, Any],
                                                       tmp_path: Path) -> None:
    restored = tmp_path / "restored"
    done = hacluster("restore", "--latest", "--target", str(restored), "--config",
                     str(archived["config"]))
    assert done.returncode == 0, done.stderr
    seq, content = read_db(restored)
    new = Cluster(tmp_path / "new", ("m1",), consensus=True,
                  replication={"mode": "async"})
    config = new.nodes["m1"].config
    refused = hacluster("bootstrap-from", str(tmp_path), "--node", "m1", "--config",
                        str(config))
    assert refused.returncode == 2 and "is not a directory `hacluster restore` made" in \
        refused.stderr
    seeded = hacluster("bootstrap-from", str(restored), "--node", "m1", "--config",
                       str(config))
    assert seeded.returncode == 0, seeded.stderr
    again = hacluster("bootstrap-from", str(restored), "--node", "m1", "--config",
                      str(config))
    assert again.returncode == 2 and "is not empty" in again.stderr
    new.start()
    try:
        primary = new.wait_primary()
        status = primary.status()
        assert status["applied_seq"] == seq and status["epoch"] == 1
        history = status["consensus"]["history"]
        assert [(h["epoch"], h["start_seq"]) for h in history] == [(1, seq + 1)]
        assert primary.get("/v1/kv/r1-005").body == b"value 1 5"
        assert primary.put("after", b"restore").status == 200
        assert primary.hash()["seq"] > seq
    finally:
        new.stop()
    assert len(content["default"]) == 120


def test_bootstrap_from_on_every_node_starts_a_cluster_holding_the_restore(
        archived: dict[str, Any], tmp_path: Path) -> None:
    restored = tmp_path / "restored"
    done = hacluster("restore", "--latest", "--target", str(restored), "--config",
                     str(archived["config"]))
    assert done.returncode == 0, done.stderr
    seq = read_db(restored)[0]
    new = Cluster(tmp_path / "new", ("m1", "m2", "m3"), consensus=True)
    for name in new.nodes:
        seeded = hacluster("bootstrap-from", str(restored), "--node", name, "--config",
                           str(new.nodes[name].config))
        assert seeded.returncode == 0, seeded.stderr
    new.start()
    try:
        primary = new.wait_primary()
        history = primary.status()["consensus"]["history"]
        assert [(h["epoch"], h["start_seq"]) for h in history] == [(1, seq + 1)]
        assert primary.put("after", b"restore").status == 200
        digest = new.wait_converged()
        assert digest["seq"] == seq + 2
        assert all(n.get("/v1/kv/r2-039?stale=1").status == 200 for n in new.nodes.values())
    finally:
        new.stop()


def test_a_restart_of_every_node_continues_the_archive_without_gap_or_duplicate(
        tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    c = Cluster(tmp_path, ("n1", "n2"), extra={"backup": {
        "url": f"file://{archive}", "archive_interval_s": 0.2, "base_backup_interval_s": 0}})
    tops = []
    for round_ in range(2):
        c.start()
        try:
            for i in range(30):
                resp = c.primary.put(f"round{round_}-{i}", b"v")
                assert resp.status == 200
            tops.append(resp.json()["seq"])
            wait_for(lambda: archived_through(c.primary) >= tops[-1], 30, "the archive")
        finally:
            c.stop()
    listing = [(p.relative_to(archive).as_posix(), 0) for p in (archive / "wal").iterdir()]
    segments = parse_segments(listing)
    bases = sorted(p.name for p in (archive / "base").iterdir())
    assert len(bases) == 1            # the second start continued; it needed no base backup
    expected = int(bases[0].split("-")[0]) + 1
    for s in segments:
        assert s.first == expected, (s, segments)
        expected = s.last + 1
    assert expected - 1 == tops[-1]

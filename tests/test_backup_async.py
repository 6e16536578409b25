"""Async mode, a former primary's archived writes that a failover discarded: real processes,
a ``file://`` archive. The primary writes and archives while its replicas are stopped (so
nobody else has those writes), then it is stopped and the replicas elect a new primary, which
continues the archive from its own, shorter history. The epoch history supersedes the former
primary's range from the new epoch's first seq on: the archive continues with no gap, and a
restore gives the surviving history, never the discarded writes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from hacluster.backup.history import read_history
from hacluster.backup.layout import WAL_PREFIX, parse_segments
from hacluster.backup.objects import Archive
from hacluster.backup.plan import kept_through
from hacluster.config import load_config
from hacluster.testing.harness import Cluster, NodeProc, read_db, wait_for

VALUE = b"x" * (256 << 10)


def archived_through(node: NodeProc) -> int:
    return int((node.status().get("backup") or {}).get("archived_seq") or 0)


def test_a_range_the_history_superseded_is_never_restored(tmp_path: Path) -> None:
    # A long lease: the lone primary writes for seconds, more than the stopped replicas'
    # socket buffers hold (what is buffered reaches them when they resume: that part
    # survives).
    c = Cluster(tmp_path, consensus=True, replication={"mode": "async"},
                consensus_timing={"lease_s": 3.0, "renew_interval_s": 0.3},
                extra={"backup": {
        "url": f"file://{tmp_path}/archive", "archive_interval_s": 0.2,
        "base_backup_interval_s": 0}})
    c.start()
    config = c.nodes["n1"].config
    try:
        old = c.wait_primary()
        others = [n for n in c.nodes.values() if n is not old]
        for i in range(20):
            assert old.put(f"kept-{i}", b"v").status == 200
        c.wait_converged()
        for n in others:
            n.signal(signal.SIGSTOP)
        # Alone, the primary still acknowledges (async) until its lease runs out, and
        # archives what it acknowledged: writes no other node has.
        lone: list[tuple[bytes, int]] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            key = f"lone-{len(lone)}"
            resp = old.put(key, VALUE, timeout=2.0)
            if resp.status != 200:
                break
            lone.append((key.encode(), resp.json()["seq"]))
        assert lone, "the lone primary acknowledged nothing"
        wait_for(lambda: archived_through(old) >= lone[-1][1], 20,
                 "the former primary to archive its lone writes")
        old.signal(signal.SIGSTOP)
        for n in others:
            n.signal(signal.SIGCONT)
        new = c.wait_primary(30, among=others)
        start = new.status()["applied_seq"]
        assert start < lone[-1][1]
        for i in range(20):
            assert new.put(f"after-{i}", b"v").status == 200
        top = new.status()["applied_seq"]
        wait_for(lambda: archived_through(new) >= top, 30, "the new primary to archive")
        old.signal(signal.SIGCONT)
    finally:
        for n in c.nodes.values():
            if n.running:
                n.signal(signal.SIGCONT)
        c.stop()

    archive = Archive.from_config(load_config(config).backup)
    segments = parse_segments(archive.listing(WAL_PREFIX))
    history = read_history(archive)
    assert [r.epoch for r in history][-1] > 1
    superseded = [s for s in segments if s.epoch == 1 and s.last > start]
    assert superseded and all(kept_through(s, history, segments) <= start for s in superseded)
    done = subprocess.run([sys.executable, "-m", "hacluster", "restore", "--latest",
                           "--target", str(tmp_path / "r"), "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    seq, content = read_db(tmp_path / "r")
    keys = content["default"]
    assert seq == top
    assert all(f"kept-{i}".encode() in keys for i in range(20))
    assert all(f"after-{i}".encode() in keys for i in range(20))
    # What reached the new primary before it took over survives; the rest was discarded.
    assert all((key in keys) == (seq <= start) for key, seq in lone)
    listed = subprocess.run([sys.executable, "-m", "hacluster", "backup", "list", "--config",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert "superseded by the epoch history" in listed.stdout

"""Continuous backup against a real S3-compatible server (moto's standalone server, started by
the fixture on a free loopback port) and real node processes: the archive ships while a
writer runs, continues after a SIGKILL of the primary from the new primary with no gap and no
duplicate, and a restore gives exactly what the history says was acknowledged; an unreachable
store never stops writes, the lag grows and ``/status`` says why."""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from hacluster.backup.history import read_history
from hacluster.backup.layout import BASE_PREFIX, WAL_PREFIX, parse_bases, parse_segments
from hacluster.backup.objects import Archive
from hacluster.backup.plan import chain, kept_through
from hacluster.config import load_config
from hacluster.testing.harness import Cluster, NodeProc, free_ports, read_db, wait_for
from hacluster.testing.history.ops import History
from hacluster.testing.history.writer import Writer

BUCKET = "backups"
INTERVAL_S = 1.0
# How much later than the archive interval an acknowledged write may reach the archive on a
# loaded test machine (upload, polling): a liveness bound, not a timing claim.
SLACK_S = 4.0


class MotoServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing-1")
        wait_for(lambda: client.create_bucket(Bucket=BUCKET) is not None, 30,
                 "the S3 server to create the bucket", interval=0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def s3() -> Iterator[MotoServer]:
    server = MotoServer(free_ports(1)[0])
    server.start()
    yield server
    server.stop()


def section(endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"url": f"s3://{BUCKET}/cluster1", "endpoint_url": endpoint, "region": "us-east-1",
            "access_key_id": "testing", "secret_access_key": "testing-1",
            "archive_interval_s": INTERVAL_S, "base_backup_interval_s": 0,
            "encryption": "sse-s3", **extra}


def restore(config: Path, target: Path, *how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hacluster", "restore", *how, "--target",
                           str(target), "--config", str(config)],
                          capture_output=True, text=True, timeout=120)


def check_content(history: History, data: dict[bytes, bytes], upto: int) -> int:
    """The restored keys are exactly the acknowledged writes through ``upto`` (writes whose
    outcome is unknown may be there or not; refused ones never). The number checked."""
    checked = 0
    for op in history.ops():
        if op.kind != "put":
            continue
        key = op.key.encode()
        if op.acked:
            assert op.seq is not None
            assert (key in data) == (op.seq <= upto), (op, upto)
            checked += 1
        elif op.refused:
            assert key not in data, op
    writer_keys = {op.key.encode() for op in history.ops()}
    assert not [k for k in data if k not in writer_keys]
    return checked


def archived_through(node: NodeProc) -> int:
    doc = node.status().get("backup") or {}
    return int(doc.get("archived_seq") or 0)


def test_the_archive_continues_across_a_failover_and_restores_what_was_acknowledged(
        tmp_path: Path, s3: MotoServer) -> None:
    c = Cluster(tmp_path, consensus=True, extra={"backup": section(s3.url)})
    c.start()
    config = c.nodes["n1"].config
    archive = Archive.from_config(load_config(config).backup)
    try:
        old = c.wait_primary()
        writer = Writer(list(c.nodes.values()), threads=2, prefix="w").start()
        writer.wait_acked(150, 60)
        wait_for(lambda: archived_through(old) > 0, 30, "the first primary to archive")
        old.kill()
        killed_at = time.monotonic()
        new = c.wait_primary(among=[n for n in c.nodes.values() if n is not old])
        writer.wait_acked(150, 60, since=killed_at)
        time.sleep(max(0.0, killed_at + INTERVAL_S + SLACK_S + 2 - time.monotonic()))
        # The whole cluster is lost now, as far as this restore knows: it must hold every
        # write acknowledged more than an archive interval ago.
        lost_at = time.monotonic()
        latest = restore(config, tmp_path / "latest", "--latest")
        history = writer.stop()
        assert latest.returncode == 0, latest.stderr
        top = max(op.seq for op in history.acked() if op.seq is not None)
        wait_for(lambda: archived_through(new) >= top, 60, "the archive to catch up")
    finally:
        c.stop()

    # No gap, no duplicate: the kept segments tile the seqs, across both epochs.
    segments = parse_segments(archive.listing(WAL_PREFIX))
    epochs = read_history(archive)
    kept = [s for s in segments if kept_through(s, epochs, segments) >= s.first]
    assert len({s.epoch for s in kept}) >= 2, kept
    for before, after in itertools.pairwise(kept):
        assert after.first == before.last + 1, (before, after)
    first_base = min(parse_bases(archive.listing(BASE_PREFIX)), key=lambda b: b.seq)
    assert kept[0].first == first_base.seq + 1
    whole = chain(segments, epochs, first_base.seq + 1)
    assert whole.gap is None and whole.top >= top

    # A restore to a seq the new primary acknowledged, replayed across the failover.
    after_kill = sorted(op.seq for op in history.acked()
                        if op.seq is not None and op.start > killed_at)
    chosen = after_kill[len(after_kill) // 2]
    done = restore(config, tmp_path / "at-seq", "--to-seq", str(chosen))
    assert done.returncode == 0, done.stderr
    seq, content = read_db(tmp_path / "at-seq")
    assert seq == chosen
    assert check_content(history, content["default"], chosen) >= 300

    # The latest restore lost at most the archive interval's acknowledged writes.
    seq, content = read_db(tmp_path / "latest")
    check_content(history, content["default"], seq)
    missing = [op for op in history.acked() if op.seq is not None and op.seq > seq]
    oldest_missing = min((op.end for op in missing), default=lost_at)
    print(f"--latest at seq {seq}: lost the writes acknowledged in the last "
          f"{lost_at - oldest_missing:.2f} s")
    assert lost_at - oldest_missing <= INTERVAL_S + SLACK_S
    assert [op for op in history.acked() if killed_at < op.end < oldest_missing]


def test_an_unreachable_store_never_stops_writes_and_status_says_why(
        tmp_path: Path) -> None:
    store = MotoServer(free_ports(1)[0])          # not started yet: nothing listens there
    c = Cluster(tmp_path, ("n1", "n2"), extra={"backup": section(store.url)})
    c.start()
    try:
        primary = c.primary
        for i in range(50):
            assert primary.put(f"k{i}", b"v").status == 200
        first = wait_for(lambda: (b := primary.status()["backup"])["last_error"] and b, 30,
                         "the archiver to report the store unreachable")
        assert store.url.split("//")[1] in first["last_error"] or "connect" in \
            first["last_error"].lower(), first["last_error"]
        for i in range(50, 100):
            assert primary.put(f"k{i}", b"v").status == 200
        later = wait_for(lambda: (b := primary.status()["backup"])["archive_lag_s"] >
                         first["archive_lag_s"] + 1 and b, 30, "the lag to grow")
        assert later["archive_lag_seqs"] >= 200 and later["errors_total"] >= 1
        metrics = primary.get("/metrics").body.decode()
        lag = [line for line in metrics.splitlines()
               if line.startswith("hacluster_backup_archive_lag_seqs ")]
        assert lag and float(lag[0].split()[1]) >= 200
        # The store comes back: the archive catches up by itself, nothing was lost.
        store.start()
        try:
            seq = primary.status()["applied_seq"]
            wait_for(lambda: archived_through(primary) >= seq, 90, "the archive to catch up")
            assert primary.status()["backup"]["last_error"] is None
        finally:
            store.stop()
    finally:
        c.stop()

"""Continuous-backup benchmark: what archiving costs the writes, how far behind it runs, and
how fast base backups and restores go, against a real three-node cluster.

A three-node consensus cluster (``--mode sync``, the default, or ``async``) on loopback. Writer
threads (keep-alive connections, 1 kB values) write to the primary for a phase with no
``backup`` section, then — the same nodes and data, restarted with ``backup.url`` set to a
``file://`` archive (``archive_interval_s`` 1) — for a phase of the same length while the
archiver ships, and at the end once more without; the rate with archiving over the mean of the
two without is ``archive_write_rate_ratio`` (goal >= 0.9).
During the second phase ``/status`` is sampled every 0.1 s: ``archive_lag_p99_s``. Then the
data is grown to a few tens of MB, a base backup is taken on demand (``base_backup_mb_s``), a
checkpoint is copied the way a replica bootstraps (``hacluster backup DEST``: the bootstrap
download code), and ``hacluster restore --latest`` rebuilds the database from the archive
(``restore_mb_s``); ``restore_vs_bootstrap_ratio`` is restore rate / bootstrap rate, both in
this run. ``--json`` prints one JSON object as the last line (with ``mode`` and ``quick``); the
exit status is 1 when a goal is missed (each one named on stderr). ``--quick`` ends within 60 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacluster.testing.harness import TOKEN, Cluster, NodeProc, wait_for

GOAL_RATIO = 0.9
THREADS = 4
VALUE = b"v" * 1024
INTERVAL_S = 1.0


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write_load(node: NodeProc, seconds: float, prefix: str, on_tick: Any = None) -> float:
    """Writes per second from THREADS keep-alive writers for ``seconds``."""
    stop = time.monotonic() + seconds
    counts = [0] * THREADS
    errors = [0]

    def writer(i: int) -> None:
        conn = http.client.HTTPConnection(node.host, node.port, timeout=10)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        n = 0
        while time.monotonic() < stop:
            conn.request("PUT", f"/v1/kv/{prefix}-{i}-{n}", body=VALUE, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                counts[i] += 1
            else:
                errors[0] += 1
            n += 1
        conn.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(THREADS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if on_tick is not None:
            on_tick()
        time.sleep(0.1)
    for t in threads:
        t.join()
    if errors[0]:
        log(f"{prefix}: {errors[0]} writes refused")
    return sum(counts) / (time.monotonic() - started)


def grow(node: NodeProc, mb: int) -> None:
    """Add about ``mb`` MB through batches of 100 random (incompressible) values of 10 kB."""
    for b in range(mb):
        ops = [{"op": "put", "key": f"bulk-{b}-{i}", "value": os.urandom(5000).hex()}
               for i in range(100)]
        node.batch(ops)


def hacluster(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hacluster", *args], capture_output=True,
                          text=True, timeout=600)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def plain_phase(c: Cluster, seconds: float, name: str) -> float:
    """The write rate of ``c`` restarted without a backup section."""
    c.extra = {}
    for node in c.nodes:
        c.write_config(node)
    c.start()
    try:
        primary = c.wait_primary(30)
        write_load(primary, 1.0, f"warm-{name}")
        rate = write_load(primary, seconds, name)
        log(f"writes without archiving ({name}): {rate:.1f}/s")
        return rate
    finally:
        c.stop()


def run(root: Path, mode: str, quick: bool) -> dict[str, Any]:
    seconds = 5.0 if quick else 20.0
    grow_mb = 20 if quick else 200
    archive = root / "archive"
    c = Cluster(root, consensus=True, replication={"mode": mode})
    figures: dict[str, Any] = {}
    # Without, with, without again: the baseline is the mean of the phases around the one
    # with archiving, so a drift of the machine (or of the database's size) cancels out.
    before = plain_phase(c, seconds, "plain-before")
    c.extra = {"backup": {"url": f"file://{archive}", "archive_interval_s": INTERVAL_S,
                          "base_backup_interval_s": 0, "keep_last": 100}}
    for name in c.nodes:
        c.write_config(name)
    c.start()
    try:
        primary = c.wait_primary(30)
        wait_for(lambda: (primary.status().get("backup") or {}).get("last_base_backup"), 30,
                 "the first base backup")
        lags: list[float] = []

        def sample() -> None:
            doc = primary.status().get("backup") or {}
            lags.append(float(doc.get("archive_lag_s") or 0.0))

        write_load(primary, 1.0, "warm2")
        figures["write_rate_with"] = round(write_load(primary, seconds, "archived", sample), 1)
        lags.sort()
        figures["archive_lag_p99_s"] = round(lags[min(len(lags) - 1, int(len(lags) * 0.99))], 3)
        figures["archive_lag_p50_s"] = round(statistics.median(lags), 3)
        log(f"writes with archiving: {figures['write_rate_with']}/s, lag p99 "
            f"{figures['archive_lag_p99_s']} s")
        grow(primary, grow_mb)
        answer = primary.post("/v1/admin/backup", {}, timeout=600).json()["base_backup"]
        figures["base_backup_mb"] = round(answer["bytes"] / 1e6, 1)
        figures["base_backup_mb_s"] = round(answer["bytes"] / 1e6 / max(answer["seconds"],
                                                                         1e-3), 1)
        log(f"base backup: {figures['base_backup_mb']} MB at {figures['base_backup_mb_s']} MB/s")
        config = c.nodes[primary.name].config
        started = time.monotonic()
        copied = hacluster("backup", str(root / "bootstrap-copy"), "--config", str(config))
        boot_s = time.monotonic() - started
        if copied.returncode != 0:
            raise RuntimeError(f"hacluster backup failed: {copied.stderr[-500:]}")
        boot_bytes = dir_bytes(root / "bootstrap-copy")
        figures["bootstrap_mb_s"] = round(boot_bytes / 1e6 / boot_s, 1)
        top = primary.status()["applied_seq"]
        wait_for(lambda: (primary.status()["backup"]["archived_seq"] or 0) >= top, 60,
                 "the archive to catch up")
    finally:
        c.stop()
    started = time.monotonic()
    done = hacluster("restore", "--latest", "--json", "--target", str(root / "restored"),
                     "--config", str(config))
    restore_s = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"restore failed: {done.stderr[-500:]}")
    restored = dir_bytes(root / "restored")
    figures["restore_mb"] = round(restored / 1e6, 1)
    figures["restore_mb_s"] = round(restored / 1e6 / restore_s, 1)
    figures["restore_vs_bootstrap_ratio"] = round(figures["restore_mb_s"] /
                                                  figures["bootstrap_mb_s"], 3)
    log(f"restore: {figures['restore_mb']} MB at {figures['restore_mb_s']} MB/s; a bootstrap "
        f"copy ran at {figures['bootstrap_mb_s']} MB/s")
    after = plain_phase(c, seconds, "plain-after")
    figures["write_rate_without"] = round((before + after) / 2, 1)
    figures["archive_write_rate_ratio"] = round(
        figures["write_rate_with"] / figures["write_rate_without"], 3)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (under 60 s)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--mode", choices=["sync", "async"], default="sync",
                        help="replication mode of the cluster (default sync)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        figures = run(Path(tmp), args.mode, args.quick)
    figures["mode"] = args.mode
    figures["quick"] = args.quick
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key}: {value}")
    if figures["archive_write_rate_ratio"] < GOAL_RATIO:
        print(f"goal missed: the write rate with archiving / without: "
              f"archive_write_rate_ratio = {figures['archive_write_rate_ratio']}, goal >= "
              f"{GOAL_RATIO}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

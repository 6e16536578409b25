"""Real processes on loopback under faults: kills, lost data dirs, lost WAL, corruption, no token.

Each test starts its own three-node cluster, injects one fault with real signals, real files or
a real TCP proxy between a replica and the primary, and checks both the clear error and the
recovery once the cause is gone.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacluster.testing.harness import Cluster, FaultyProxy, read_db, wait_for


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    c.stop()


def write_keys(cluster: Cluster, prefix: str, n: int, size: int = 100, per_batch: int = 50) -> None:
    for start in range(0, n, per_batch):
        cluster.primary.batch([
            {"op": "put", "cf": "users", "key": f"{prefix}{i:08d}", "value": "v" * size}
            for i in range(start, min(n, start + per_batch))])


def test_sigkilled_replica_resumes_from_its_position(cluster: Cluster) -> None:
    cluster.start()
    write_keys(cluster, "a", 500)
    cluster.wait_converged()
    n2 = cluster.nodes["n2"]
    seq_at_kill = n2.status()["applied_seq"]
    n2.signal(signal.SIGKILL)
    n2.proc.wait(10)  # type: ignore[union-attr]
    write_keys(cluster, "b", 500)
    n2.start()
    cluster.wait_converged()
    status = n2.status()["replication"]
    assert status["bootstraps"] == 0, "a restarted replica must not copy the DB again"
    assert f"streaming from http://127.0.0.1:{cluster.primary.port} after seq {seq_at_kill}" \
        in n2.log()
    replicas = {r["name"]: r for r in cluster.primary.status()["replicas"]}
    assert replicas["n2"]["bootstraps"] == 1  # only the first, empty-node bootstrap


def test_deleted_data_dir_bootstraps_from_checkpoint(cluster: Cluster) -> None:
    cluster.start()
    write_keys(cluster, "a", 2000)
    cluster.primary.post("/v1/admin/flush")
    write_keys(cluster, "b", 100)
    cluster.wait_converged()
    n3 = cluster.nodes["n3"]
    n3.stop()
    shutil.rmtree(n3.data_dir)
    n3.start()
    expected = cluster.wait_converged()
    assert n3.status()["replication"]["bootstraps"] == 1
    assert expected["column_families"]["users"]["keys"] == 2100
    assert "installed checkpoint" in n3.log()


def test_position_no_longer_retained_bootstraps(cluster: Cluster) -> None:
    cluster.start()
    write_keys(cluster, "a", 200)
    cluster.wait_converged()
    n3 = cluster.nodes["n3"]
    n3.stop()
    write_keys(cluster, "b", 200)
    p = cluster.primary
    # Two flushes make every log holding n3's next seq obsolete: RocksDB archives them; then
    # retention "expires" them (removed by hand, as wal_ttl_seconds would).
    p.post("/v1/admin/flush")
    write_keys(cluster, "c", 10)
    p.post("/v1/admin/flush")
    archive = p.data_dir / "db" / "archive"
    wait_for(lambda: list(archive.glob("*.log")), 10, "logs to be archived")
    for f in archive.glob("*.log"):
        f.unlink()
    # The primary's in-memory ring still holds recent batches; a restart empties it.
    p.stop()
    p.start()
    n3.start()
    cluster.wait_converged()
    log = n3.log()
    assert "bootstrap needed" in log and "no longer in the primary's WAL" in log
    assert n3.status()["replication"]["bootstraps"] == 1


def test_interrupted_bootstrap_resumes_and_never_half_installs(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, replication={"bootstrap_max_rate_mb_s": 8})
    try:
        cluster.start()
        # ~24 MB of incompressible data so the throttled download takes a few seconds.
        for _ in range(48):
            cluster.primary.batch([
                {"op": "put", "cf": "events", "key": os.urandom(12).hex(),
                 "value_b64": base64.b64encode(os.urandom(5000)).decode()}
                for _ in range(100)])
        cluster.primary.post("/v1/admin/flush")
        cluster.wait_converged()
        n3 = cluster.nodes["n3"]
        n3.stop()
        shutil.rmtree(n3.data_dir)
        staged = n3.data_dir / "bootstrap" / "files"

        def staged_bytes() -> int:
            return sum(f.stat().st_size for f in staged.iterdir()) if staged.exists() else 0

        n3.start()
        wait_for(lambda: staged_bytes() > 4_000_000, 20, "part of the checkpoint to download")
        n3.signal(signal.SIGKILL)
        n3.proc.wait(10)  # type: ignore[union-attr]
        assert not (n3.data_dir / "db").exists(), "a killed download must not install anything"
        assert not (n3.data_dir / "bootstrap" / "COMPLETE").exists()
        partial = staged_bytes()
        assert partial > 0
        n3.start()
        cluster.wait_converged(timeout=60)
        assert "bootstrap: resuming" in n3.log()
        assert not (n3.data_dir / "bootstrap").exists(), "staging is cleaned up after install"
        assert not list((cluster.primary.data_dir / "checkpoints").iterdir()), \
            "the primary removes checkpoints after use"
    finally:
        cluster.stop()


def test_corrupt_wal_record_stops_replica_until_fixed(cluster: Cluster) -> None:
    cluster.start()
    n3 = cluster.nodes["n3"]
    write_keys(cluster, "a", 100)
    cluster.wait_converged()
    n3.stop()
    seq_n3 = read_db(n3.data_dir / "db")[0]
    write_keys(cluster, "b", 100)
    p = cluster.primary
    p.post("/v1/admin/flush")  # the log holding n3's next batches is now archived, not live
    archive = p.data_dir / "db" / "archive"
    logs = wait_for(lambda: sorted(archive.glob("*.log")), 10, "an archived log")
    target = logs[-1]
    original = target.read_bytes()
    # Flip a byte in a copy and swap it in: the primary's RocksDB no longer reads this log.
    corrupt = bytearray(original)
    corrupt[len(corrupt) // 2] ^= 0xFF
    copy = target.with_suffix(".corrupt")
    copy.write_bytes(bytes(corrupt))
    os.replace(copy, target)
    p.stop()  # empty the in-memory ring so the stream must read the log from disk
    p.start()
    n3.start()
    wait_for(lambda: "corrupt WAL record" in (n3.status()["replication"]["error"] or ""), 15,
             "n3 to report the corrupt record")
    error = n3.status()["replication"]["error"]
    assert target.name in error and "offset" in error
    applied = n3.status()["applied_seq"]
    assert seq_n3 <= applied < p.status()["applied_seq"]
    time.sleep(0.5)
    assert n3.status()["applied_seq"] == applied, "nothing past the corrupt record is applied"
    # The cause goes away: the original log is back. n3 resumes on its own.
    fixed = target.with_suffix(".fixed")
    fixed.write_bytes(original)
    os.replace(fixed, target)
    cluster.wait_converged()


@pytest.mark.parametrize("mode", ["flip", "truncate"])
def test_corrupt_or_truncated_frame_stops_replica_until_fixed(cluster: Cluster,
                                                              mode: str) -> None:
    cluster.primary.start()
    proxy = FaultyProxy(cluster.primary.port, pattern=b"POISON-VALUE-0123456789")
    try:
        n2 = cluster.nodes["n2"]
        # n2 reaches the primary through the proxy; n3 directly.
        addresses = dict(cluster.addresses, n1=proxy.port)
        cluster.write_config("n2", addresses=addresses)
        for node in cluster.replicas:
            node.start()
        write_keys(cluster, "a", 100)
        cluster.wait_converged()
        before = n2.status()["applied_seq"]
        proxy.mode = mode
        cluster.primary.batch([{"op": "put", "key": "poison", "value": "POISON-VALUE-0123456789"}])
        want = "checksum mismatch" if mode == "flip" else "inside a frame"
        wait_for(lambda: want in (n2.status()["replication"]["error"] or "")
                 or (mode == "truncate" and proxy.hits and n2.status()["replication"]["error"]),
                 15, f"n2 to report the {mode}d frame")
        error = n2.status()["replication"]["error"]
        assert "frame" in error.lower() or "payload" in error.lower(), error
        assert n2.status()["applied_seq"] == before, "the damaged batch must not be applied"
        cluster.wait_converged(nodes=[cluster.nodes["n3"]])
        proxy.mode = "pass"
        cluster.wait_converged()
        assert n2.status()["replication"]["error"] is None
    finally:
        proxy.close()


def test_replication_endpoints_require_token(cluster: Cluster) -> None:
    cluster.primary.start()
    p = cluster.primary
    for method, path in [("GET", "/v1/replication/stream?node=x&since=0"),
                         ("POST", "/v1/replication/ack"),
                         ("POST", "/v1/replication/checkpoints"),
                         ("GET", "/v1/replication/checkpoints/1-2/files/CURRENT"),
                         ("PUT", "/v1/kv/a"), ("POST", "/v1/batch")]:
        from hacluster.testing.harness import request
        resp = request(p.port, method, path, body=b"{}", token=None)
        assert resp.status == 401, (method, path, resp.status)
        assert resp.headers.get("www-authenticate") == "Bearer"
        resp = request(p.port, method, path, body=b"{}", token="wrong-token-wrong-token")
        assert resp.status == 403, (method, path, resp.status)
    assert p.get("/health", token=None).status == 200
    assert p.get("/status", token=None).status == 200

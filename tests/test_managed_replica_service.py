"""A replica's read-only service follows its database when hacluster replaces it.

A replica re-bootstraps (a divergent tail set aside, a stream answered 410) by installing a
checkpoint in place of its database directory. A read-only service that keeps the old files
open would go on serving them — writes the cluster rolled back, and none of the new ones —
for as long as it runs: hacluster stops it before the directory is replaced and starts it on
the new one. Real node processes, the example service, a real proxy that starves one replica.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from hacluster.testing.harness import FaultyProxy, wait_for
from tests.test_managed import managed_cluster, primary_with_service, service_get, service_put


def put(port: int, key: str, value: bytes) -> None:
    """Written, asked again while refused: stopping a node that leads Raft can hold up the
    primary's lease renewal for longer than the lease, and its service is stopped meanwhile."""
    wait_for(lambda: service_put(port, key, value)[0] == 200, 30, f"the write of {key}")


def replaced_files_held(pid: int, db_dir: Path) -> list[str]:
    """Files under ``db_dir`` that process ``pid`` still has open though they were removed."""
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue                            # closed meanwhile
        if target.startswith(str(db_dir)) and target.endswith(" (deleted)"):
            held.append(target)
    return held


def test_a_replica_s_read_only_service_follows_a_re_bootstrap(tmp_path: Path) -> None:
    """Async mode: n3 holds writes of n1 that n2 never got; n2 (behind) takes over, so n3's
    tail diverges and n3 re-bootstraps from n2. n3's read-only service must then serve n2's
    history: the new write, and none of the writes rolled back."""
    cluster, ports = managed_cluster(tmp_path, mode="async", wait=False, read_only_replicas=True)
    n1, n2, n3 = (cluster.nodes[n] for n in ("n1", "n2", "n3"))
    proxy = FaultyProxy(cluster.addresses["n1"])
    try:
        only_n1 = {"n2": ["nofailover"], "n3": ["nofailover"]}
        via_proxy = dict(cluster.addresses, n1=proxy.port)
        cluster.write_config("n1", tags=only_n1)
        cluster.write_config("n2", addresses=via_proxy, tags=only_n1)
        cluster.write_config("n3", tags=only_n1)
        cluster.start()
        assert primary_with_service(cluster, ports) is n1
        for i in range(10):
            put(ports["n1"], f"shared-{i}", b"s")
        for r in (n2, n3):
            wait_for(lambda r=r: service_get(ports[r.name], "shared-9") == b"s", 30,
                     f"{r.name}'s read-only service to read the shared writes")
        proxy.mode = "drop"                     # n2 stays in the Raft quorum, gets no data
        for i in range(10):
            put(ports["n1"], f"lost-{i}", b"l")
        wait_for(lambda: service_get(ports["n3"], "lost-9") == b"l", 30,
                 "n3's read-only service to read the writes n2 lacks")
        n2.stop()
        cluster.write_config("n2", addresses=via_proxy, tags={"n3": ["nofailover"]})
        n2.start()                              # n2 may be promoted now; n3 still may not
        wait_for(lambda: service_get(ports["n2"], "shared-9") == b"s", 30,
                 "n2's read-only service again")
        n1.signal(signal.SIGKILL)
        assert n1.proc is not None
        n1.proc.wait(10)
        assert primary_with_service(cluster, ports, timeout=30) is n2
        put(ports["n2"], "after", b"a")
        wait_for(lambda: n3.status()["divergent_tails"], 30, "n3 to save its divergent tail")

        def serves_n2_s_history() -> bool:
            return (service_get(ports["n3"], "after") == b"a"
                    and service_get(ports["n3"], "shared-9") == b"s")

        wait_for(serves_n2_s_history, 30, "n3's read-only service to serve the new database")
        assert all(service_get(ports["n3"], f"lost-{i}") is None for i in range(10))
        assert n3.status()["service"]["role"] == "replica"
        pid = n3.status()["service"]["pid"]
        assert pid is not None and not replaced_files_held(pid, tmp_path / "svc" / "n3")
        assert "the database is replaced" in n3.log(), n3.log()[-3000:]
    finally:
        proxy.close()
        cluster.stop()


def test_a_replica_s_read_only_service_follows_a_bootstrap_after_a_410(tmp_path: Path) -> None:
    """n3 is down while n1 writes and hands over to n2; the log holding n3's next seq is gone
    from n2 (archived, then expired): n3 comes back, starts its read-only service on the
    database it has, is answered 410 and bootstraps. The service must move to the new copy."""
    cluster, ports = managed_cluster(tmp_path, mode="async", wait=False, read_only_replicas=True)
    n1, n2, n3 = (cluster.nodes[n] for n in ("n1", "n2", "n3"))
    never_n3 = {"n3": ["nofailover"]}
    for name in ("n1", "n2", "n3"):
        cluster.write_config(name, tags={"n2": ["nofailover"], **never_n3})
    cluster.start()
    assert primary_with_service(cluster, ports) is n1
    try:
        for i in range(10):
            put(ports["n1"], f"early-{i}", b"e")
        wait_for(lambda: service_get(ports["n3"], "early-9") == b"e", 30,
                 "n3's read-only service to read the early writes")
        n3.stop()
        for i in range(10):
            put(ports["n1"], f"missed-{i}", b"m")
        wait_for(lambda: service_get(ports["n2"], "missed-9") == b"m", 30,
                 "n2 to hold what n3 missed")
        n2.stop()
        cluster.write_config("n2", tags=never_n3)
        n2.start()
        wait_for(lambda: n2.status()["replication"]["state"] == "streaming", 30, "n2 again")
        assert n1.post("/v1/admin/switchover", {"to": "n2"}).status == 200
        assert primary_with_service(cluster, ports) is n2
        # n2's service opened the copy: the logs of what came before are archived. Removed
        # by hand, as wal_ttl_seconds would once they are old enough.
        archive = tmp_path / "svc" / "n2" / "db" / "archive"
        wait_for(lambda: list(archive.glob("*.log")), 10, "n2's old logs to be archived")
        for log_file in archive.glob("*.log"):
            log_file.unlink()
        n3.start()
        put(ports["n2"], "after", b"a")
        # Its first bootstrap since it came back (it had a database): the 410's.
        wait_for(lambda: n3.status().get("replication", {}).get("bootstraps") == 1, 30,
                 "n3 to bootstrap again")
        wait_for(lambda: service_get(ports["n3"], "after") == b"a", 30,
                 "n3's read-only service to serve the new copy")
        assert service_get(ports["n3"], "missed-9") == b"m"
        pid = n3.status()["service"]["pid"]
        assert pid is not None and not replaced_files_held(pid, tmp_path / "svc" / "n3")
        assert "bootstrap needed" in n3.log()
        assert "the database is replaced: checkpoint" in n3.log(), n3.log()[-3000:]
    finally:
        cluster.stop()

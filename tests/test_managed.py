"""Managed mode against real processes: three hacluster nodes running the example service.

The service (examples/kvservice) embeds RocksDB itself; hacluster tails its WAL, replicates it,
starts the service where the lock is and stops it elsewhere. Checked here: writes the service
acknowledged after ``/v1/wait`` survive a SIGKILL of the primary's hacluster (its service dies
with it) and show on the new primary's service; a service that crash-loops on the primary makes
the lock move; a database hacluster cannot replicate is refused at start with the option and
the file named; the key-value API answers 409.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import rocksdict

from hacluster.groupsync import NATIVE
from hacluster.testing.harness import TOKEN, Cluster, NodeProc, free_ports, request, wait_for
from hacluster.testing.history import History, Op, acked_after, check_all, lost_acked
from hacluster.testing.netns import Netns, namespaces_unavailable

needs_netns = pytest.mark.skipif(bool(namespaces_unavailable()),
                                 reason=namespaces_unavailable() or "")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kvservice" / "service.py"
LEASE_S = 0.6            # consensus.lease_s, the default


def managed_cluster(root: Path, mode: str = "sync", *, wait: bool = True,
                    net: Netns | None = None, read_only_replicas: bool = False,
                    env: dict[str, str] | None = None) -> tuple[Cluster, dict[str, int]]:
    """Three nodes, each with its own service port (in ``net``'s namespaces, if given). Each
    service starts through a wrapper that exits at once (status 3) while ``root/crash-<node>``
    exists: a crash loop on demand. ``wait``: the service waits on ``/v1/wait`` before it
    answers 200 (semi-synchronous); else it answers once RocksDB took the write. ``env``: more
    environment for every node's service."""
    names = ("n1", "n2", "n3")
    ports = dict(zip(names, free_ports(3), strict=True))
    hosts = net.ip if net is not None else {n: "127.0.0.1" for n in names}
    wrapper = root / "crashy.py"
    wrapper.write_text(
        "import os, sys\n"
        "if os.path.exists(sys.argv[1]):\n"
        "    sys.exit(3)\n"
        f"os.execv(sys.executable, [sys.executable, {str(EXAMPLE)!r}, *sys.argv[2:]])\n")

    def per_node(name: str) -> dict[str, Any]:
        command = [sys.executable, str(wrapper), str(root / f"crash-{name}"),
                   "--host", hosts[name]]
        return {"application": {
            "db_path": str(root / "svc" / "{node}" / "db"),
            "primary_command": command,
            "replica_command": command if read_only_replicas else None,
            "stop_timeout_s": 5,
            "start_timeout_s": 20,
            "health_interval_s": 0.1,
            "health_url": f"http://{hosts[name]}:{ports[name]}/health",
            "max_restarts": 2,
            "restart_window_s": 30,
            "env": {"KVSERVICE_PORT": str(ports[name]), "KVSERVICE_WAIT": "1" if wait else "0",
                    "KVSERVICE_TOKEN": TOKEN, "KVSERVICE_WAIT_TIMEOUT_MS": "5000",
                    **(env or {})},
        }}

    for name in names:
        (root / "svc" / name).mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {}
    if net is not None:
        extra = {"hosts": net.ip, "prefixes": {n: net.prefix(n) for n in names}}
    cluster = Cluster(root, names, consensus=True, replication={"mode": mode},
                      node_extra=per_node, **extra)
    return cluster, ports


def service_put(port: int, key: str, value: bytes,
                host: str = "127.0.0.1") -> tuple[int, dict[str, Any]]:
    try:
        resp = request(port, "PUT", f"/kv/{key}", body=value, token=None, timeout=10,
                       host=host)
    except OSError as exc:
        return 0, {"error": str(exc)}
    try:
        body = json.loads(resp.body)
    except ValueError:
        body = {"raw": resp.body[:200].decode(errors="replace")}
    return resp.status, body


def service_get(port: int, key: str, host: str = "127.0.0.1") -> bytes | None:
    resp = request(port, "GET", f"/kv/{key}", token=None, host=host)
    return resp.body if resp.status == 200 else None


def service_up(port: int, host: str = "127.0.0.1") -> bool:
    try:
        return request(port, "GET", "/health", token=None, timeout=2, host=host).status == 200
    except OSError:
        return False


class Writer(threading.Thread):
    """Writes unique keys one after another to one node's service, recording every attempt
    as the history checker's ``Op`` (a 200 is an acknowledgement, nothing else is)."""

    def __init__(self, port: int, node: NodeProc, prefix: str) -> None:
        super().__init__(daemon=True)
        self.port, self.node, self.prefix = port, node, prefix
        self.history = History()
        self._halt = threading.Event()

    @property
    def acked(self) -> dict[str, bytes]:
        return {op.key: op.key.encode() for op in self.history.ops() if op.acked}

    def run(self) -> None:
        i = 0
        while not self._halt.is_set():
            key = f"{self.prefix}{i:06d}"
            i += 1
            start = time.monotonic()
            code, body = service_put(self.port, key, key.encode(), self.node.host)
            note = "" if code == 200 else (
                "outcome unknown: " if body.get("outcome") == "unknown" else "") + str(body)
            self.history.append(Op(key=key, node=self.node.name, start=start,
                                   end=time.monotonic(), status=code,
                                   epoch=body.get("epoch") if code == 200 else None,
                                   seq=body.get("seq") if code == 200 else None, note=note))
            if code != 200:
                time.sleep(0.01)

    def stop(self) -> None:
        self._halt.set()
        self.join(20)


class ServiceKeys:
    """The keys a service holds, asked one by one (the example has no scan)."""

    def __init__(self, port: int, host: str) -> None:
        self.port, self.host = port, host

    def __contains__(self, key: object) -> bool:
        assert isinstance(key, bytes)
        return service_get(self.port, key.decode(), self.host) == key


def primary_with_service(cluster: Cluster, ports: dict[str, int],
                         timeout: float = 30) -> NodeProc:
    found: list[NodeProc] = []

    def ready() -> bool:
        p = cluster.writable_primary()
        if p is None or not service_up(ports[p.name], p.host):
            return False
        found[:] = [p]
        return True

    wait_for(ready, timeout, "a primary with its service up")
    return found[0]


def test_acknowledged_writes_survive_sigkill_of_the_primary(tmp_path: Path) -> None:
    cluster, ports = managed_cluster(tmp_path)
    cluster.start()
    try:
        old = primary_with_service(cluster, ports)
        wait_for(lambda: old.status()["service"]["state"] == "running", 20,
                 "the supervisor to see the service healthy")
        status = old.status()
        assert status["service"]["role"] == "primary"
        # The key-value API is the service's: hacluster's own answers 409.
        assert old.put("k", b"v").status == 409
        # /v1/wait: bad input, no credential, a replica, a seq not written yet.
        assert old.get("/v1/wait?seq=abc").status == 400
        assert old.get("/v1/wait?seq=0").status == 400
        assert old.get("/v1/wait?seq=1&timeout_ms=999999").status == 400
        assert old.get("/v1/wait?seq=1", token=None).status == 401
        replica = next(n for n in cluster.nodes.values() if n is not old)
        assert replica.get("/v1/wait?seq=1&timeout_ms=100").status == 503
        late = old.get("/v1/wait?seq=999999&timeout_ms=200")
        assert late.status == 504, (late.status, late.body)
        acked: dict[str, bytes] = {}
        for i in range(200):
            key, value = f"key{i:04d}", f"value-{i}".encode()
            code, body = service_put(ports[old.name], key, value)
            assert code == 200, (code, body)
            acked[key] = value
        # Replicas follow: their databases reach the primary's seq.
        status = old.status()
        top = status["applied_seq"]
        assert top >= 200
        # Each /v1/wait waited for a group-commit round of the service's WAL; with the C
        # module built, on the native syncer (no Python thread listing the logs each round).
        synced = status["wal_sync"]
        assert synced["native"] is NATIVE and synced["native_error"] is None, synced
        assert 1 <= synced["rounds"] <= 200 and synced["synced_seq"] >= body["seq"], synced
        for r in (n for n in cluster.nodes.values() if n is not old):
            wait_for(lambda r=r: (r.status().get("applied_seq") or 0) >= top, 20,
                     f"{r.name} to apply seq {top}")
            assert r.status().get("service", {}).get("state") != "running"
        service_pid = old.status()["service"]["pid"]
        # A writer keeps going through the kill: what it saw acknowledged must all survive.
        during = Writer(ports[old.name], old, "during")
        during.start()
        wait_for(lambda: len(during.acked) >= 20, 20, "writes acknowledged before the kill")

        old.kill()              # SIGKILL: its service must die with it (PR_SET_PDEATHSIG)
        killed_at = time.monotonic()
        wait_for(lambda: not Path(f"/proc/{service_pid}").exists(), 10,
                 "the old primary's service to die with its hacluster")
        rest = [n for n in cluster.nodes.values() if n is not old]
        new = primary_with_service(cluster, ports, timeout=30)
        assert new in rest
        during.stop()
        missing = [k for k, v in acked.items() if service_get(ports[new.name], k) != v]
        assert not missing, f"acknowledged writes lost: {missing[:5]} ({len(missing)})"
        # The full history check over what the writer was told across the kill: nothing
        # acknowledged lost (sync mode), no split brain, seqs in acknowledgement order within
        # an epoch, and nothing acknowledged by the killed node's service once it was dead.
        verdict = check_all(during.history, ServiceKeys(ports[new.name], new.host),
                            fences=[(old.name, killed_at, None)])
        assert verdict.ok, verdict
        assert verdict.acked >= 20, verdict
        # The new primary's service writes, and the remaining replica follows it.
        code, body = service_put(ports[new.name], "after", b"failover")
        assert code == 200, (code, body)

        old.start()             # the old primary rejoins as a replica of the new one
        seq = new.status()["applied_seq"]
        wait_for(lambda: (old.status().get("applied_seq") or 0) >= seq, 30,
                 "the old primary to catch up as a replica")
        assert old.status()["role"] == "replica"
    finally:
        cluster.stop()


def test_a_crash_looping_service_makes_the_lock_move(tmp_path: Path) -> None:
    cluster, ports = managed_cluster(tmp_path)
    cluster.start()
    try:
        old = primary_with_service(cluster, ports)
        (tmp_path / f"crash-{old.name}").touch()      # from now on it exits at once
        pid = old.status()["service"]["pid"]
        subprocess.run(["kill", "-9", str(pid)], check=True)
        new = primary_with_service(cluster, ports, timeout=60)
        assert new is not old
        assert "giving up the primary role" in old.log(), old.log()[-3000:]
        code, body = service_put(ports[new.name], "k", b"v")
        assert code == 200, (code, body)
    finally:
        cluster.stop()


def good_db(path: Path, *, recycle: int = 0, key: bytes = b"a") -> Path:
    """A database as the example service leaves it (with ``recycle``: WAL recycling on and no
    WAL retention, which RocksDB needs to keep recycling on); its newest OPTIONS file."""
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    if recycle:
        opts.set_recycle_log_file_num(recycle)
    else:
        opts.set_wal_ttl_seconds(3600)
    db = rocksdict.Rdict(str(path), opts)
    db.put(key, b"v" if recycle else b"b")
    db.close()
    return max(path.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))


@pytest.mark.parametrize("option, line", [
    ("recycle_log_file_num", "recycle_log_file_num=2"),
    ("WAL_ttl_seconds", "WAL_ttl_seconds=0"),         # no retention: both limits 0
    ("merge_operator", "merge_operator=StringAppendOperator"),
    ("comparator", "comparator=leveldb.ReverseBytewiseComparator"),
    ("wal_compression", "wal_compression=kZSTD"),
])
def test_a_database_hacluster_cannot_ship_is_refused_at_start(
        tmp_path: Path, option: str, line: str) -> None:
    cluster, _ = managed_cluster(tmp_path)
    node = cluster.nodes["n2"]
    db = tmp_path / "svc" / "n2" / "db"
    # As a service with these options would have left it (rocksdict cannot set them all).
    newest = good_db(db)
    text = newest.read_text()
    key = line.split("=")[0]
    text = "\n".join(line if f.strip().startswith(key + "=") else f
                     for f in text.splitlines())
    assert line in text
    newest.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "hacluster", "run", "--config",
                           str(node.config), "--node", "n2"], capture_output=True, text=True,
                          timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert option in out and newest.name in out, out


def test_a_database_held_by_another_process_is_refused_at_start(tmp_path: Path) -> None:
    cluster, _ = managed_cluster(tmp_path)
    node = cluster.nodes["n3"]
    db = tmp_path / "svc" / "n3" / "db"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import rocksdict, sys, time\n"
        "o = rocksdict.Options(raw_mode=True); o.create_if_missing(True)\n"
        "o.set_wal_ttl_seconds(3600)\n"
        f"db = rocksdict.Rdict({str(db)!r}, o); print('open', flush=True); time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        proc = subprocess.run([sys.executable, "-m", "hacluster", "run", "--config",
                               str(node.config), "--node", "n3"], capture_output=True,
                              text=True, timeout=60)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out
        assert str(holder.pid) in out and str(db) in out, out
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)


def test_a_missing_database_directory_is_refused_at_start(tmp_path: Path) -> None:
    cluster, _ = managed_cluster(tmp_path)
    node = cluster.nodes["n1"]
    (tmp_path / "svc" / "n1").rmdir()
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hacluster", "run", "--config",
                           str(node.config), "--node", "n1"], capture_output=True, text=True,
                          timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "application.db_path" in out and str(tmp_path / "svc" / "n1") in out, out
    assert time.monotonic() - started < 30


def test_a_paused_primary_s_tail_is_saved_when_it_returns(tmp_path: Path) -> None:
    """SIGSTOP of the primary's hacluster: its service keeps taking writes (async: no wait),
    which nobody receives; a new primary is elected; on SIGCONT the old node kills its
    service (its lease is over), saves the tail no current primary has, and follows."""
    cluster, ports = managed_cluster(tmp_path, wait=False)
    cluster.start()
    try:
        old = primary_with_service(cluster, ports)
        for i in range(20):
            assert service_put(ports[old.name], f"k{i}", b"v")[0] == 200
        top = old.status()["applied_seq"]
        others = [n for n in cluster.nodes.values() if n is not old]
        for r in others:
            wait_for(lambda r=r: (r.status().get("applied_seq") or 0) >= top, 20, "catch-up")
        # Sync mode: without a recorded synchronous standby nobody may take over (rightly),
        # and a replica that caught up within the first pass is not recorded yet.
        wait_for(lambda: old.status()["consensus"]["sync_set"], 15, "a synchronous standby")
        service_pid = old.status()["service"]["pid"]
        old.signal(signal.SIGSTOP)
        try:
            for i in range(10):
                code, body = service_put(ports[old.name], f"lost{i}", b"x")
                assert code == 200, (code, body)     # acknowledged by the service alone
            new = primary_with_service(cluster, ports, timeout=30)
            assert new is not old
        finally:
            old.signal(signal.SIGCONT)
        wait_for(lambda: not Path(f"/proc/{service_pid}").exists(), 10,
                 "the old primary to stop its service once it runs again")
        wait_for(lambda: old.status()["primary"] == new.name, 30, "the old primary to follow")
        # The tail is saved after the role changes, before the follower starts.
        wait_for(lambda: old.status()["divergent_tails"], 30, "the divergent tail to be saved")
        tails = old.status()["divergent_tails"]
        assert sum(t["ops"] for t in tails) >= 10, tails
        assert service_get(ports[new.name], "lost0") is None     # not in the new history
        assert service_get(ports[new.name], "k19") == b"v"
        seq = new.status()["applied_seq"]
        wait_for(lambda: (old.status().get("applied_seq") or 0) >= seq, 30, "catch-up")
    finally:
        cluster.stop()


@needs_netns
def test_a_cut_off_primary_s_service_is_stopped_within_its_lease(tmp_path: Path) -> None:
    """A partitioned primary (its network link down): its hacluster stops the service as its
    lease runs out; with /v1/wait in use nothing it acknowledged is lost, and it acknowledges
    nothing after the cut that the new primary lacks."""
    names = ["n1", "n2", "n3"]
    net = Netns(names)
    net.up()
    cluster, ports = managed_cluster(tmp_path, net=net)
    try:
        cluster.start()
        old = primary_with_service(cluster, ports)
        service_pid = old.status()["service"]["pid"]
        writer = Writer(ports[old.name], old, "w")
        writer.start()
        wait_for(lambda: len(writer.acked) >= 20, 20, "writes acknowledged before the cut")
        net.cut(old.name)
        cut_at = time.monotonic()
        # The writer is in the root namespace: it still reaches the old service.
        wait_for(lambda: not Path(f"/proc/{service_pid}").exists(), 10,
                 "the cut-off primary to stop its service")
        stopped_after = time.monotonic() - cut_at
        writer.stop()
        others = [n for n in cluster.nodes.values() if n is not old]
        new = primary_with_service(cluster, ports, timeout=30)
        assert new in others
        # Nothing acknowledged is lost, and nothing was acknowledged by the cut-off node once
        # its lease was over (a request begun after cut + lease).
        assert not lost_acked(writer.history, ServiceKeys(ports[new.name], new.host))
        assert not acked_after(writer.history, old.name, cut_at + LEASE_S)
        assert len(writer.acked) >= 20
        # Generous: the lease is 0.6 s; the process must be gone well before a few seconds.
        assert stopped_after < 5.0, stopped_after
        assert "the lease of epoch" in old.log(), old.log()[-2000:]
        net.heal(old.name)
        wait_for(lambda: old.status()["primary"] == new.name, 30, "the old primary to rejoin")
    finally:
        try:
            net.heal_all()
            cluster.stop()
        finally:
            net.down()


def test_replicas_run_the_service_read_only_and_one_takes_over(tmp_path: Path) -> None:
    """``replica_command``: each replica runs the service as a RocksDB secondary instance of
    the copy hacluster applies into (reads, no writes); on failover the new primary stops its
    read-only service, closes its handle and starts the writer."""
    cluster, ports = managed_cluster(tmp_path, read_only_replicas=True)
    cluster.start()
    try:
        old = primary_with_service(cluster, ports)
        for i in range(30):
            assert service_put(ports[old.name], f"k{i}", f"v{i}".encode())[0] == 200
        others = [n for n in cluster.nodes.values() if n is not old]
        for r in others:
            wait_for(lambda r=r: service_up(ports[r.name]), 30, f"{r.name}'s read-only service")
            assert r.status()["service"]["role"] == "replica"
            # It catches up with what hacluster applied, and refuses writes.
            try:
                wait_for(lambda r=r: service_get(ports[r.name], "k29") == b"v29", 20,
                         f"{r.name}'s service to read the latest write")
            except AssertionError as exc:
                status = r.status()
                raise AssertionError(f"{exc}\nreplication: {status.get('replication')}\n"
                                     f"service: {status.get('service')}\n"
                                     f"{r.log()[-4000:]}") from None
            assert service_put(ports[r.name], "nope", b"x")[0] == 503
        old.kill()
        new = primary_with_service(cluster, ports, timeout=30)
        assert new in others
        wait_for(lambda: service_put(ports[new.name], "after", b"x")[0] == 200, 20,
                 "the new primary's service to take writes")
        assert all(service_get(ports[new.name], f"k{i}") == f"v{i}".encode() for i in range(30))
        assert new.status()["service"]["role"] == "primary"
    finally:
        cluster.stop()



def test_every_node_restarts_and_the_data_is_served_again(tmp_path: Path) -> None:
    """Every hacluster stopped (their services with them), then started again: a primary is
    elected among the copies and its service serves every acknowledged write."""
    cluster, ports = managed_cluster(tmp_path)
    cluster.start()
    try:
        old = primary_with_service(cluster, ports)
        for i in range(50):
            assert service_put(ports[old.name], f"k{i}", f"v{i}".encode())[0] == 200
        pids = [n.status()["service"]["pid"] for n in cluster.nodes.values()]
        cluster.stop()
        assert all(p is None or not Path(f"/proc/{p}").exists() for p in pids)
        cluster.start()
        new = primary_with_service(cluster, ports, timeout=30)
        assert all(service_get(ports[new.name], f"k{i}") == f"v{i}".encode() for i in range(50))
        assert service_put(ports[new.name], "again", b"x")[0] == 200
    finally:
        cluster.stop()

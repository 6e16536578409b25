"""A real HAProxy in front of three nodes, routing by ``option httpchk GET /primary``.

A client that only knows HAProxy's address keeps writing across a SIGKILL of the primary: the
health check moves the backend to the new primary, and in sync mode no write it acknowledged is
lost — with plain HTTP, and with TLS on every node (HAProxy checks ``/primary`` and forwards
over TLS, verifying the nodes against the cluster CA). Skips, saying why, where the
``haproxy`` binary is missing (``.ci/run`` installs Debian's package).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacluster.security import certs
from hacluster.testing.harness import Cluster, free_ports, read_db, request, wait_for
from hacluster.testing.history import Endpoint, History, check_all, put_once

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (Debian "
                                "package haproxy; .ci/run installs it)")


def haproxy_config(port: int, cluster: Cluster, ca_file: str | None = None) -> str:
    tls = f" check-ssl ssl verify required ca-file {ca_file}" if ca_file else ""
    servers = "\n".join(f"    server {n} 127.0.0.1:{p} check{tls}" for n, p in
                        cluster.addresses.items())
    return f"""
global
    maxconn 256
defaults
    mode http
    timeout connect 1s
    timeout client 10s
    timeout server 10s
    retries 0
frontend writes
    bind 127.0.0.1:{port}
    default_backend primary
backend primary
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 100ms fall 1 rise 1 on-marked-down shutdown-sessions
{servers}
"""


@pytest.fixture(params=["plain", "tls"])
def balanced(tmp_path: Path, request: pytest.FixtureRequest,
             ) -> Iterator[tuple[Cluster, Endpoint, subprocess.Popen[bytes]]]:
    tls = None
    if request.param == "tls":
        pki = tmp_path / "pki"
        certs.init_ca(pki, cluster="test")
        for name in ("n1", "n2", "n3"):
            certs.issue(pki, name, hosts=["127.0.0.1"])
        tls = {"cert_file": str(pki / "{node}.crt"), "key_file": str(pki / "{node}.key"),
               "ca_file": str(pki / "ca.crt")}
    cluster = Cluster(tmp_path, consensus=True, replication={"mode": "sync"}, tls=tls)
    port = free_ports(1)[0]
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(haproxy_config(port, cluster, tls["ca_file"] if tls else None))
    check = subprocess.run([str(HAPROXY), "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    cluster.start()
    proxy = subprocess.Popen([str(HAPROXY), "-db", "-f", str(cfg)],
                             stdout=open(tmp_path / "haproxy.log", "wb"),  # noqa: SIM115
                             stderr=subprocess.STDOUT)
    try:
        yield cluster, Endpoint("haproxy", "127.0.0.1", port), proxy
    finally:
        proxy.terminate()
        proxy.wait(10)
        cluster.stop()


def test_writes_through_haproxy_survive_a_sigkill_of_the_primary(
        balanced: tuple[Cluster, Endpoint, subprocess.Popen[bytes]]) -> None:
    cluster, lb, _ = balanced
    old = cluster.wait_primary()
    wait_for(lambda: old.status()["consensus"]["sync_set"], 10, "a synchronous standby")
    wait_for(lambda: request(lb.port, "GET", "/primary", token=None).status == 200, 10,
             "HAProxy to find the primary")
    history = History()
    killed_at = None
    i = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        op, _ = put_once(lb, f"lb{i:06d}", timeout=3.0)
        history.append(op)
        i += 1
        acked = history.acked()
        if killed_at is None and len(acked) >= 200:
            old.signal(signal.SIGKILL)
            old.proc.wait(10)  # type: ignore[union-attr]
            killed_at = time.monotonic()
        elif killed_at is not None and sum(1 for a in acked if a.start > killed_at) >= 200:
            break
        if not op.acked:
            time.sleep(0.02)
    assert killed_at is not None
    after = [a for a in history.acked() if a.start > killed_at]
    assert len(after) >= 200, f"only {len(after)} writes acknowledged after the kill"
    assert {a.epoch for a in after} == {2}
    new = cluster.wait_primary(among=[n for n in cluster.nodes.values() if n is not old])
    cluster.stop()
    _, contents = read_db(new.data_dir / "db")
    verdict = check_all(history, set(contents["default"]))
    assert verdict.ok, str(verdict)

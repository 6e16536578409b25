"""TLS and role credentials with real node processes: a mutual-TLS cluster elects, streams and
fails over on SIGKILL under a writer with nothing acknowledged lost, and every bad credential
is refused with a clear answer and nothing applied (plain HTTP on a TLS port, a certificate
from another CA, an expired one, a replica certificate naming another node, a client token on
the replication routes, a read token on PUT, an unknown token). No secret appears in any log,
status, metrics page or error body of the run.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hacluster.security import certs
from hacluster.security.tokens import Role, new_token
from hacluster.testing.harness import RAFT_PASSWORD, Cluster, read_db, request, wait_for
from hacluster.testing.history import Writer, check_all

HOSTS = ["127.0.0.1", "localhost"]


def expired_cert(pki: Path, name: str) -> tuple[Path, Path]:
    """A certificate signed by the cluster CA that expired yesterday."""
    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=30)).not_valid_after(now - timedelta(days=1))
            .sign(ca_key, hashes.SHA256()))
    crt, pem = pki / f"expired-{name}.crt", pki / f"expired-{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


def client_ctx(pki: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def call(port: int, ctx: ssl.SSLContext, method: str, path: str, token: str | None = None,
         body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw.startswith(b"{") else {"raw": raw})
    finally:
        conn.close()


def test_mutual_tls_cluster_with_role_tokens(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    certs.init_ca(pki, cluster="test")
    for name in ("n1", "n2", "n3"):
        certs.issue(pki, name, hosts=HOSTS)
    certs.init_ca(tmp_path / "other", cluster="other")
    foreign = certs.issue(tmp_path / "other", "n2", hosts=HOSTS)
    expired = expired_cert(pki, "n2")
    tokens = {role: new_token(role, f"test-{role.value}") for role in Role}
    secret = {role: t for role, (t, _) in tokens.items()}
    auth = {"tokens": [{"id": e.id, "role": e.role.value, "sha256": e.sha256, "name": e.name}
                       for _, e in tokens.values()]}
    tls = {"cert_file": str(pki / "{node}.crt"), "key_file": str(pki / "{node}.key"),
           "ca_file": str(pki / "ca.crt"), "peer_client_auth": True}
    hook_env = tmp_path / "hook-env"
    hook_env.mkdir()
    cluster = Cluster(tmp_path / "c", consensus=True, replication={"mode": "sync"}, tls=tls,
                      auth=auth, token=secret[Role.ADMIN], extra={"hooks": {
                          "on_role_change": f"env > {hook_env}/$HACLUSTER_NODE-$$.env"}})
    writer = Writer(list(cluster.nodes.values()), prefix="w", token=secret[Role.WRITE])
    bodies: list[str] = []
    try:
        cluster.start()
        primary = cluster.wait_primary()
        wait_for(lambda: primary.status()["consensus"]["sync_set"], 15, "a synchronous standby")
        writer.start()
        writer.wait_acked(50, 20)

        port, ctx = primary.port, client_ctx(pki)
        seq = primary.status()["applied_seq"]
        # Plain HTTP on the TLS port: no answer a client could mistake for one.
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("PUT", "/v1/kv/plain", body=b"x",
                          headers={"Authorization": f"Bearer {secret[Role.WRITE]}"})
            plain.getresponse()
        # A certificate from another CA, and an expired one: the handshake fails.
        for bad in (foreign, expired):
            with pytest.raises((ssl.SSLError, ConnectionError, socket.timeout)):
                call(port, client_ctx(pki, bad), "GET", "/v1/replication/stream?node=n2&since=0")
        # A member's certificate claiming to be another replica.
        n3 = client_ctx(pki, (pki / "n3.crt", pki / "n3.key"))
        status, body = call(port, n3, "POST", "/v1/replication/ack",
                            body=json.dumps({"node": "n2", "seq": 1}).encode())
        bodies.append(json.dumps(body))
        assert status == 403 and "n3's" in body["error"], body
        # Client tokens on the replication routes; a read token on PUT; an unknown token.
        for role in (Role.WRITE, Role.ADMIN, Role.REPLICATION):
            status, body = call(port, ctx, "GET", "/v1/replication/stream?node=n2&since=0",
                                token=secret[role])
            bodies.append(json.dumps(body))
            assert status == 403 and "certificate of a cluster member" in body["error"], body
        status, body = call(port, ctx, "PUT", "/v1/kv/r", token=secret[Role.READ], body=b"x")
        bodies.append(json.dumps(body))
        assert status == 403 and "needs the write role" in body["error"], body
        status, body = call(port, ctx, "PUT", "/v1/kv/u", token="hct_0badc0de_" + "x" * 43,
                            body=b"x")
        assert status == 403 and body == {"error": "unknown token"}, body
        status, body = call(port, ctx, "GET", "/metrics", token=secret[Role.WRITE])
        assert status == 403 and "metrics" in body["error"], body
        status, body = call(port, ctx, "GET", "/metrics", token=secret[Role.METRICS])
        assert status == 200
        expiry = [line for line in body["raw"].decode().splitlines()
                  if line.startswith("hacluster_tls_cert_expiry_seconds ")]
        assert expiry and 800 * 86400 < float(expiry[0].split()[1]) < 826 * 86400, expiry
        # Nothing of the refused requests was applied (the writer's own writes go on).
        for key in ("plain", "r", "u"):
            assert call(port, ctx, "GET", f"/v1/kv/{key}", token=secret[Role.READ])[0] == 404
        assert primary.status()["applied_seq"] >= seq

        # SIGKILL the primary: a new one is elected over mutual TLS and the writer goes on.
        primary.signal(signal.SIGKILL)
        primary.proc.wait(10)  # type: ignore[union-attr]
        since = time.monotonic()
        survivors = [n for n in cluster.nodes.values() if n is not primary]
        new = cluster.wait_primary(30, among=survivors)
        writer.wait_acked(30, 30, node=new.name, since=since)
        primary.start()
        history = writer.stop()
        final = cluster.wait_primary()
        status, body = call(final.port, ctx, "POST", "/v1/admin/pause", token=secret[Role.ADMIN])
        assert status == 200, body
        call(final.port, ctx, "POST", "/v1/admin/resume", token=secret[Role.ADMIN])
        wait_for(lambda: all(n.status()["applied_seq"] == final.status()["applied_seq"]
                             for n in cluster.nodes.values()), 30, "every node to converge")
        pages = [json.dumps(n.status()) for n in cluster.nodes.values()]
        pages += [request(n.port, "GET", path, token=secret[role]).body.decode()
                  for n in cluster.nodes.values()
                  for path, role in (("/metrics", Role.METRICS), ("/cluster", Role.READ),
                                     ("/history", Role.READ))]
    finally:
        writer.stop()
        cluster.stop()
    _, contents = read_db(final.data_dir / "db")
    verdict = check_all(history, contents["default"])
    assert verdict.ok, str(verdict)
    assert len(verdict.epochs) >= 2, str(verdict)
    logs = "\n".join(n.log() for n in cluster.nodes.values())
    # Replicas streamed by certificate; the admin action left an audit line naming its token.
    assert "streaming from https://127.0.0.1:" in logs
    admin_id = tokens[Role.ADMIN][1].id
    assert f"token {admin_id} (test-admin): POST /v1/admin/pause from 127.0.0.1: 200" in logs
    # No secret anywhere: tokens, their hashes' source, the Raft password, private keys.
    keys = [(pki / f"{n}.key").read_text().splitlines()[1] for n in ("n1", "n2", "n3")]
    hooks = [p.read_text() for p in hook_env.glob("*.env")]
    assert any("HACLUSTER_ROLE=primary" in h for h in hooks), hooks   # the hooks did run
    haystack = "\n".join([logs, *pages, *bodies, *hooks])
    for leaked in [*secret.values(), RAFT_PASSWORD, *keys]:
        assert leaked not in haystack


def served_serial(port: int, ctx: ssl.SSLContext) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_tokens_and_certificates_rotate_with_sighup_under_a_writer(tmp_path: Path) -> None:
    """Without mutual TLS (nodes use a replication token): a new write token and a new
    replication token are added, the writer and the replicas move to them, the old ones are
    removed, and the certificates are replaced — each by an edit and a SIGHUP, no restart.
    No request is refused for its credentials, nothing acknowledged is lost, and a removed
    token is refused everywhere."""
    pki = tmp_path / "pki"
    certs.init_ca(pki, cluster="test")
    for name in ("n1", "n2", "n3"):
        certs.issue(pki, name, hosts=HOSTS)
    old_write, e_old = new_token(Role.WRITE, "app-old")
    new_write, e_new = new_token(Role.WRITE, "app-new")
    admin, e_admin = new_token(Role.ADMIN, "ops")
    repl_old, e_repl_old = new_token(Role.REPLICATION, "nodes-old")
    repl_new, e_repl_new = new_token(Role.REPLICATION, "nodes-new")
    repl_file = tmp_path / "replication.token"
    repl_file.write_text(repl_old + "\n")

    def auth(*entries: Any) -> dict[str, Any]:
        return {"tokens": [{"id": e.id, "role": e.role.value, "sha256": e.sha256,
                            "name": e.name} for e in entries],
                "replication_token_file": str(repl_file)}

    tls = {"cert_file": str(pki / "{node}.crt"), "key_file": str(pki / "{node}.key"),
           "ca_file": str(pki / "ca.crt")}
    cluster = Cluster(tmp_path / "c", consensus=True, replication={"mode": "sync"}, tls=tls,
                      auth=auth(e_old, e_admin, e_repl_old), token=admin)

    def reconfigure(*entries: Any) -> None:
        cluster.auth = auth(*entries)
        for node in cluster.nodes.values():
            cluster.write_config(node.name)
            node.signal(signal.SIGHUP)
        wait_for(lambda: all(n.log().count("credentials reloaded") >= rounds[0]
                             for n in cluster.nodes.values()), 10, "every node to reload")
        rounds[0] += 1

    rounds = [1]
    first = Writer(list(cluster.nodes.values()), prefix="a", token=old_write)
    second = Writer(list(cluster.nodes.values()), prefix="b", token=new_write)
    ctx = client_ctx(pki)
    try:
        cluster.start()
        primary = cluster.wait_primary()
        wait_for(lambda: primary.status()["consensus"]["sync_set"], 15, "a synchronous standby")
        first.start()
        first.wait_acked(30, 20)
        # 1. Both write tokens, both replication tokens; replicas move to the new one.
        reconfigure(e_old, e_new, e_admin, e_repl_old, e_repl_new)
        repl_file.write_text(repl_new + "\n")
        reconfigure(e_old, e_new, e_admin, e_repl_old, e_repl_new)
        second.start()
        second.wait_acked(30, 20)
        first_history = first.stop()
        # 2. The old ones go. Sync writes still complete: replicas ack with the new token.
        reconfigure(e_new, e_admin, e_repl_new)
        since = time.monotonic()
        second.wait_acked(30, 20, since=since)
        for node in cluster.nodes.values():
            status, body = call(node.port, ctx, "PUT", "/v1/kv/old", token=old_write,
                                body=b"x")
            assert (status, body) == (403, {"error": "unknown token"}), (node.name, body)
            status, _ = call(node.port, ctx, "GET", "/v1/replication/stream?node=n2&since=0",
                             token=repl_old)
            assert status == 403, node.name
        # 3. New certificates from the same CA: served to new connections after SIGHUP.
        before = served_serial(primary.port, ctx)
        staging = tmp_path / "pki-new"
        staging.mkdir()
        (staging / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())
        (staging / "ca.key").write_bytes((pki / "ca.key").read_bytes())
        for name in ("n1", "n2", "n3"):
            certs.issue(staging, name, hosts=HOSTS)
            for ext in ("crt", "key"):
                (staging / f"{name}.{ext}").replace(pki / f"{name}.{ext}")
        reconfigure(e_new, e_admin, e_repl_new)
        assert served_serial(primary.port, ctx) != before
        since = time.monotonic()
        second.wait_acked(30, 20, since=since)
        second_history = second.stop()
        final = cluster.wait_primary()
        wait_for(lambda: all(n.status()["applied_seq"] == final.status()["applied_seq"]
                             for n in cluster.nodes.values()), 30, "every node to converge")
    finally:
        first.stop()
        second.stop()
        cluster.stop()
    _, contents = read_db(final.data_dir / "db")
    for history in (first_history, second_history):
        assert not [op for op in history if op.status in (401, 403)], "refused for credentials"
        verdict = check_all(history, contents["default"])
        assert verdict.ok, str(verdict)
    logs = "\n".join(n.log() for n in cluster.nodes.values())
    for leaked in (old_write, new_write, admin, repl_old, repl_new):
        assert leaked not in logs


def test_the_raft_password_changes_by_rolling_restarts_without_a_failover(
        tmp_path: Path) -> None:
    """Three rolling restarts under a writer (sync mode): send the old password and accept
    the new, then send the new and accept the old, then the new alone. A majority always
    understands each other, so no automatic failover happens (the primary is restarted last
    in each round, after a switchover) and nothing acknowledged is lost."""
    old, new = RAFT_PASSWORD, "the-next-raft-password-0123456789"
    cluster = Cluster(tmp_path, consensus=True, replication={"mode": "sync"})
    writer = Writer(list(cluster.nodes.values()), prefix="r")

    def restart(node: Any, password: str, also: str | None) -> None:
        doc = cluster.config_doc()
        doc["cluster"]["raft_password"] = password
        if also:
            doc["cluster"]["raft_password_also_accepted"] = also
        node.config.write_text(yaml.safe_dump(doc, sort_keys=False))
        node.stop()
        node.start()

    try:
        cluster.start()
        primary = cluster.wait_primary()
        wait_for(lambda: primary.status()["consensus"]["sync_set"], 15, "a synchronous standby")
        writer.start()
        writer.wait_acked(30, 20)
        for password, also in ((old, new), (new, old), (new, None)):
            primary = cluster.wait_primary()
            for node in [n for n in cluster.nodes.values() if n is not primary]:
                restart(node, password, also)
                wait_for(lambda p=primary: p.status()["consensus"]["sync_set"], 20,
                         "a synchronous standby again")
                writer.wait_acked(10, 20, since=time.monotonic())
            assert primary.post("/v1/admin/switchover", {}).status == 200
            successor = cluster.wait_primary(among=[n for n in cluster.nodes.values()
                                                    if n is not primary])
            restart(primary, password, also)
            wait_for(lambda s=successor: s.status()["consensus"]["sync_set"], 20,
                     "a synchronous standby again")
            writer.wait_acked(10, 20, node=successor.name, since=time.monotonic())
        history = writer.stop()
        final = cluster.wait_primary()
        reasons = [h["reason"] for h in final.status()["consensus"]["history"]]
        cluster.wait_converged()
    finally:
        writer.stop()
        cluster.stop()
    assert reasons == ["bootstrap"] + ["switchover"] * 3, reasons
    _, contents = read_db(final.data_dir / "db")
    verdict = check_all(history, contents["default"])
    assert verdict.ok, str(verdict)
    # At the end every node sends and accepts the new password only.
    for node in cluster.nodes.values():
        text = node.config.read_text()
        assert new in text and old not in text and "also_accepted" not in text


def hacluster(*args: str, token: str | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HACLUSTER_TOKEN"}
    if token:
        env["HACLUSTER_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "hacluster", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_operator_tools_and_hacluster_up_over_tls_with_role_tokens(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    certs.init_ca(pki, cluster="test")
    for name in ("n1", "n2", "n3"):
        certs.issue(pki, name, hosts=HOSTS)
    tokens = {role: new_token(role) for role in (Role.READ, Role.ADMIN, Role.REPLICATION)}
    (tmp_path / "replication.token").write_text(tokens[Role.REPLICATION][0])
    auth = {"tokens": [{"id": e.id, "role": e.role.value, "sha256": e.sha256}
                       for _, e in tokens.values()],
            "replication_token_file": str(tmp_path / "replication.token")}
    tls = {"cert_file": str(pki / "{node}.crt"), "key_file": str(pki / "{node}.key"),
           "ca_file": str(pki / "ca.crt")}
    read, admin = tokens[Role.READ][0], tokens[Role.ADMIN][0]
    cluster = Cluster(tmp_path / "c", consensus=True, tls=tls, auth=auth, token=admin)
    config = str(cluster.nodes["n1"].config)
    try:
        cluster.start()
        old = cluster.wait_primary()

        def status_naming_the_primary() -> dict[str, Any] | None:
            done = hacluster("status", "--config", config, "--json", token=read)
            assert done.returncode == 0, done.stderr
            view: dict[str, Any] = json.loads(done.stdout)
            return view if view["leader"] == old.name else None

        # n1, whose config the command uses, may hear of the primary a moment after it serves
        # (seen once in a full run: n1's Raft had not yet connected a second after start).
        view = wait_for(status_naming_the_primary, 15, f"`hacluster status` to name {old.name}")
        assert all(m["url"].startswith("https://127.0.0.1:") for m in view["members"])
        target = next(n for n in cluster.nodes.values() if n is not old)
        refused = hacluster("switchover", "--config", config, "--to", target.name, token=read)
        assert refused.returncode == 1 and "needs the admin role" in refused.stderr
        assert read not in refused.stderr + refused.stdout
        done = hacluster("switchover", "--config", config, "--to", target.name, token=admin)
        assert done.returncode == 0, done.stderr
        assert cluster.wait_primary() is target
        backup = tmp_path / "backup"
        done = hacluster("backup", "--config", config, str(backup), token=admin)
        assert done.returncode == 0, done.stderr
        assert (backup / "CURRENT").exists() or any(backup.iterdir())
    finally:
        cluster.stop()
    # `hacluster up` on the same config: it checks the nodes over https and prints
    # examples that verify them against the CA.
    up = subprocess.Popen([sys.executable, "-m", "hacluster", "up", "--config", config],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Ctrl-C stops all nodes." not in lines[-1:]:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        text = "\n".join(lines)
        assert "nodes running" in text, text[-3000:]
        assert f"curl -s --cacert {pki / 'ca.crt'} https://127.0.0.1:" in text
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)

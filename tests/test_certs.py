"""Certificates from hacluster.security.certs, checked with real TLS handshakes over loopback."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from hacluster.security.certs import CertError, describe, expires_in_days, init_ca, issue


def _handshake(cert: Path, key: Path, ca: Path, server_hostname: str) -> None:
    """One TLS handshake: server presents cert/key, client trusts ca; raises on client failure."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(ca)
    client_ctx.check_hostname = True

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)

        def serve() -> None:
            # The server side fails too when the client rejects it; only the client's view counts.
            try:
                conn, _ = listener.accept()
                conn.settimeout(5)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=5) as raw,
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                tls.sendall(b"x")
        finally:
            thread.join(timeout=5)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    init_ca(directory, cluster="test")
    return directory


def test_issued_cert_verifies_for_its_hosts_only(ca_dir: Path) -> None:
    cert, key = issue(ca_dir, "n1", hosts=["127.0.0.1", "localhost"])
    assert (cert, key) == (ca_dir / "n1.crt", ca_dir / "n1.key")
    for hostname in ("127.0.0.1", "localhost", "n1"):
        _handshake(cert, key, ca_dir / "ca.crt", hostname)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(cert, key, ca_dir / "ca.crt", "other.example")


def test_modes(tmp_path: Path) -> None:
    directory = tmp_path / "new" / "ca"
    _, ca_key = init_ca(directory, cluster="c")
    _, key = issue(directory, "n1")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_never_overwrites(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(CertError, match=r"ca\.key"):
        init_ca(ca_dir, cluster="test")
    assert (ca_dir / "ca.key").read_bytes() == before
    issue(ca_dir, "n1")
    key_before = (ca_dir / "n1.key").read_bytes()
    with pytest.raises(CertError, match=r"n1\.key"):
        issue(ca_dir, "n1")
    assert (ca_dir / "n1.key").read_bytes() == key_before


def test_cert_from_other_ca_is_rejected(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_ca(other, cluster="test")
    cert, key = issue(other, "n1", hosts=["127.0.0.1"])
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(cert, key, ca_dir / "ca.crt", "127.0.0.1")


@pytest.mark.parametrize("name", ["../x", "", "a/b", "-x", "n1\n", "x" * 64])
def test_bad_names_rejected(ca_dir: Path, name: str) -> None:
    with pytest.raises(CertError, match="invalid certificate name"):
        issue(ca_dir, name)
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key"]


def test_issue_without_ca(tmp_path: Path) -> None:
    with pytest.raises(CertError, match=r"ca\.(crt|key)"):
        issue(tmp_path, "n1")
    (tmp_path / "ca.crt").write_text("not a certificate")
    with pytest.raises(CertError, match=r"ca\.crt"):
        issue(tmp_path, "n1")
    assert not (tmp_path / "n1.key").exists()


def test_client_only_and_describe(ca_dir: Path) -> None:
    cert, _ = issue(ca_dir, "op", client_only=True)
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    eku = parsed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    node, _ = issue(ca_dir, "n2", hosts=["10.0.0.2", "n2.example", "::1"])
    info = describe(node)
    assert info["subject_cn"] == "n2"
    assert info["issuer_cn"] == "hacluster test CA"
    assert info["san"] == ["n2", "10.0.0.2", "n2.example", "::1"]
    assert isinstance(info["not_after"], str)
    assert 824.9 < expires_in_days(node) <= 825
    assert describe(ca_dir / "ca.crt")["san"] == []

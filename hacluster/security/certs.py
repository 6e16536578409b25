"""A minimal certificate authority for operators who have no PKI of their own.

Owns the ``ca.crt``/``ca.key`` pair of a cluster and the node and client certificates it
issues (``hacluster certs init-ca|issue|show``): EC P-256 keys, SHA-256 signatures, PEM files.

It must never overwrite an existing key or certificate silently: every file is created with
``O_EXCL``, and an existing one is a :class:`CertError`, so a re-run cannot orphan the certs
already deployed. It must never write a private key readable by anyone but its owner: key
files are created with mode 0600 from the first byte (no chmod after the fact, which would leave
a window). Keys are unencrypted on purpose: a node must start unattended after a reboot, with
no one to type a passphrase, so file permissions are the protection.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hacluster.fsutil import fsync_path

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# Tolerates nodes whose clocks run a little behind the issuer's.
_SKEW = timedelta(minutes=5)


class CertError(Exception):
    """A certificate operation failed; the message names the file involved."""


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hacluster"),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    unused = ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement")
    return x509.KeyUsage(
        digital_signature=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
        **dict.fromkeys(unused, False),
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except FileExistsError:
        raise CertError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise CertError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_pair(
    cert_path: Path, cert: x509.Certificate, key_path: Path, key: ec.EllipticCurvePrivateKey
) -> None:
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Key first: if it already exists nothing has been written yet.
    _write_new(key_path, key_pem, 0o600)
    try:
        _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except CertError:
        # A key without its certificate would block every retry; it is ours, so remove it.
        key_path.unlink(missing_ok=True)
        raise
    fsync_path(cert_path.parent)


def _check_days(days: int) -> None:
    if days < 1:
        raise CertError(f"validity must be at least 1 day, got {days}")


def init_ca(directory: Path, *, cluster: str, days: int = 3650) -> tuple[Path, Path]:
    """Create a self-signed CA in ``directory``; return ``(ca.crt, ca.key)``."""
    _check_days(days)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        # mkdir's mode is filtered by the umask; the CA directory must be owner-only regardless.
        os.chmod(directory, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"hacluster {cluster} CA")
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(now + timedelta(days=days))
        # path_length=0: this CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_pair(cert_path, cert, key_path, key)
    return cert_path, key_path


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise CertError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise CertError(f"{path} is not a PEM certificate: {exc}") from exc


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    cert = _load_cert(cert_path)
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise CertError(f"{cert_path} is not a CA certificate")
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as exc:
        raise CertError(f"cannot read {key_path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise CertError(f"{key_path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{key_path} is not an EC private key")
    if key.public_key() != cert.public_key():
        raise CertError(f"{key_path} does not belong to {cert_path}")
    return cert, key


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue(
    directory: Path,
    name: str,
    *,
    hosts: Sequence[str] = (),
    days: int = 825,
    client_only: bool = False,
) -> tuple[Path, Path]:
    """Issue ``{name}.crt``/``{name}.key`` signed by the CA in ``directory``.

    The SAN is ``name`` plus each of ``hosts`` (IP literals become IP entries). Validity is
    capped at the CA's own expiry: a certificate outliving its issuer could never verify.
    """
    if not _NAME_RE.fullmatch(name):
        raise CertError(f"invalid certificate name {name!r}: use [A-Za-z0-9_.-], max 63 chars")
    if any(not h.strip() for h in hosts):
        raise CertError(f"empty host name in hosts for {name!r}")
    _check_days(days)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    ca_cert, ca_key = _load_ca(directory)
    # dict.fromkeys: dedupe while keeping the operator's order.
    sans = [_san_entry(h) for h in dict.fromkeys([name, *hosts])]
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if not client_only:
        eku.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW)
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(aki, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_pair(cert_path, cert, key_path, key)
    return cert_path, key_path


def _cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def describe(path: Path) -> dict[str, object]:
    """Summarise a certificate for ``hacluster certs show``."""
    cert = _load_cert(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(entry.value) for entry in san]
    except x509.ExtensionNotFound:
        sans = []
    return {
        "subject_cn": _cn(cert.subject),
        "issuer_cn": _cn(cert.issuer),
        "san": sans,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def expires_in_days(path: Path, now: datetime | None = None) -> float:
    """Days until the certificate at ``path`` expires (negative once expired); ``now`` is UTC."""
    now = now or datetime.now(UTC)
    return (_load_cert(path).not_valid_after_utc - now).total_seconds() / 86400

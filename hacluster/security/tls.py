"""TLS for every HTTP channel: the server and client contexts, the peer's name, reloading.

Owns how a node's certificate, key and cluster CA become ``ssl`` contexts: the listener's
(TLS 1.2 at least; with ``peer_client_auth`` it asks for a client certificate, which must be
signed by the cluster CA when one is sent — applications connect without one), the context a
node uses towards its peers (the CA verifies the other node and its host name; with
``peer_client_auth`` the node presents its own certificate), ``peer_name`` (the common name of
a verified client certificate) and ``reload`` (new certificates for new connections, on
SIGHUP, without a restart). It must never turn verification off, and never fall back to plain
HTTP: a listener without a usable certificate does not start.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from typing import Any

from hacluster.config.model import TlsConfig

log = logging.getLogger(__name__)


class TlsError(Exception):
    """A certificate, key or CA file cannot be used; the message names the file."""


def _load_chain(ctx: ssl.SSLContext, tls: TlsConfig) -> None:
    assert tls.cert_file is not None and tls.key_file is not None
    for key, path in (("tls.cert_file", tls.cert_file), ("tls.key_file", tls.key_file)):
        if not path.is_file():      # ssl's own error names no file
            raise TlsError(f"{path}: no such file ({key})")
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"{tls.cert_file} with {tls.key_file}: cannot load the certificate and "
                       f"its key ({exc}); is the key the certificate's, both PEM?") from None


def _load_ca(ctx: ssl.SSLContext, tls: TlsConfig) -> None:
    assert tls.ca_file is not None
    try:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    except FileNotFoundError:
        raise TlsError(f"{tls.ca_file}: no such file (tls.ca_file)") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"{tls.ca_file}: not a usable CA certificate (tls.ca_file): {exc}") \
            from None


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, tls)
    if tls.peer_client_auth:
        _load_ca(ctx, tls)
        # Optional, not required: applications use tokens on the same port. A certificate
        # that is sent must verify, or the handshake fails; the replication routes then
        # insist on one (``access.authorize``).
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(tls: TlsConfig, *, present_certificate: bool) -> ssl.SSLContext:
    """What a node (or a tool) uses to reach a node: verify it against the cluster CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_ca(ctx, tls)
    if present_certificate:
        _load_chain(ctx, tls)
    return ctx


def peer_name(peercert: dict[str, Any] | None) -> str | None:
    """The common name of a client certificate that the handshake verified (None: none)."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


@dataclass
class Contexts:
    """A node's live contexts; ``reload`` swaps the certificates they hand to new connections."""

    tls: TlsConfig
    server: ssl.SSLContext
    client: ssl.SSLContext

    @classmethod
    def build(cls, tls: TlsConfig) -> Contexts:
        return cls(tls, server_context(tls),
                   client_context(tls, present_certificate=tls.peer_client_auth))

    def reload(self) -> None:
        """Load the files again into the same contexts (new connections get them; open ones
        keep theirs). A CA added to ``ca_file`` is trusted from now on; a CA removed from it
        stays trusted until the node restarts — the reason to rotate CAs by adding first."""
        _load_chain(self.server, self.tls)
        if self.tls.peer_client_auth:
            _load_ca(self.server, self.tls)
            _load_chain(self.client, self.tls)
        _load_ca(self.client, self.tls)
        log.info("TLS certificates reloaded from %s", self.tls.cert_file)

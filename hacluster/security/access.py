"""Who may call what: the role each route needs, and the verdict on one request's credentials.

Owns the route table of credentials (open probes; ``read``, ``write``, ``admin``, ``metrics``
routes; the replication routes, which only nodes use) and ``authorize``, a pure function from
a request's method, path, ``Authorization`` header and verified client certificate to a
``Principal`` or a ``Refusal`` (401 without credentials, 403 with the role that is lacking).
With mutual TLS the replication stream and acks need a member's certificate (the replication
source then checks that it names the replica the request claims to be). It must never do
I/O, and never put a secret in a refusal's message.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from aiohttp import web

from hacluster.security.tokens import Principal, Role, TokenBook

# Load balancers and orchestrators probe these without credentials; they reveal a node's role
# and position, nothing stored.
OPEN_PATHS = frozenset({"/health", "/liveness", "/readiness", "/leader", "/primary",
                        "/replica", "/read-only", "/status"})
ANONYMOUS = Principal("anonymous", frozenset())
# Where the API puts the verdict on a request, for handlers that check more (the replication
# source compares a certificate's node with the replica a request claims to be).
PRINCIPAL = web.RequestKey("principal", Principal)


@dataclass(frozen=True, slots=True)
class Need:
    roles: frozenset[Role]        # any one of them suffices; empty: open to anyone
    # Only a node may call it (the stream, acks): with mutual TLS, by its certificate. The
    # replication source compares the name it proves with the replica the request claims.
    nodes_only: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int                   # 401: no usable credentials; 403: not enough of them
    message: str


_READ = Need(frozenset({Role.READ}))
_WRITE = Need(frozenset({Role.WRITE}))
_ADMIN = Need(frozenset({Role.ADMIN}))
_METRICS = Need(frozenset({Role.METRICS}))
_STREAM = Need(frozenset({Role.REPLICATION}), nodes_only=True)
# Checkpoints also serve backups, an operator's act (``hacluster backup``).
_CHECKPOINT = Need(frozenset({Role.REPLICATION, Role.ADMIN}))


def need(method: str, path: str) -> Need:
    if path in OPEN_PATHS:
        return Need(frozenset())
    if path.startswith("/v1/replication/"):
        return _CHECKPOINT if path.startswith("/v1/replication/checkpoints") else _STREAM
    if path.startswith("/v1/admin/"):
        return _ADMIN
    if path == "/metrics":
        return _METRICS
    # /v1/wait: a managed service asks before it acknowledges its own client's write.
    if path in ("/v1/batch", "/v1/txn", "/v1/wait") or (path.startswith("/v1/kv")
                                              and method not in ("GET", "HEAD")):
        return _WRITE
    return _READ       # reads, cluster views, and any unknown path (a 404 needs a credential)


def _roles(roles: frozenset[Role]) -> str:
    return " or ".join(sorted(roles))


def authorize(method: str, path: str, authorization: str | None, *, peer_cert: str | None,
              book: TokenBook, members: Container[str], mutual_tls: bool) -> Principal | Refusal:
    """The verdict on one request. ``peer_cert``: the name in a client certificate the TLS
    layer verified against the cluster CA (None: none presented, or plain HTTP)."""
    wanted = need(method, path)
    if not wanted.roles:
        return ANONYMOUS
    if mutual_tls and Role.REPLICATION in wanted.roles:
        if peer_cert is not None and peer_cert in members:
            return Principal(f"certificate {peer_cert}", frozenset({Role.REPLICATION}),
                             node=peer_cert)
        if wanted.nodes_only:
            return Refusal(403, "the replication stream and acks need the client certificate "
                                "of a cluster member, signed by the cluster CA")
        if peer_cert is None:
            return Refusal(403, "checkpoints need a client certificate signed by the cluster CA")
        wanted = Need(frozenset({Role.ADMIN}))     # a backup: a CA-signed cert and an admin token
    if not authorization:
        return Refusal(401, "missing Authorization: Bearer <token>")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return Refusal(401, "malformed Authorization header: expected Bearer <token>")
    who = book.principal(token.strip())
    if who is None:
        return Refusal(403, "unknown token")
    if not who.roles & wanted.roles:
        held = ", ".join(sorted(who.roles)) or "none"
        return Refusal(403, f"this needs the {_roles(wanted.roles)} role; {who.who} has {held}")
    return who

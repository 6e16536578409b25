"""The node's HTTP surface: routing, authentication, and the JSON error shape.

Owns the aiohttp application of one node: authentication by role (``security.access``: 401
without credentials, 403 naming the role that is lacking; health checks and the leader query
answer without one so load balancers and probes work; an accepted verdict is remembered until
the node's credentials change, a refusal never is), the audit line of every admin action
(logger ``hacluster.audit``: who by token id or certificate, what, from where, the status), the
latency middleware, aiohttp's own 404, 405 and 413 answers turned into that JSON shape, and
which module serves which
route (``info``: health checks, status, cluster, history, metrics; ``kv``: reads and writes;
``admin``: operator actions). Requests only reach the node through here; this package decides
nothing about roles (the node and ``probes`` do) and must never write to the store except
through ``Node.write``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from hacluster.api import admin, info, kv, managed, settings, watch
from hacluster.api.common import error, handle_then
from hacluster.api.metrics import Metrics
from hacluster.security.access import OPEN_PATHS, PRINCIPAL, Need, Refusal, authorize, need
from hacluster.security.tls import peer_name
from hacluster.security.tokens import Principal, Role, TokenBook

if TYPE_CHECKING:
    from hacluster.api.port import ServedNode

__all__ = ["OPEN_PATHS", "build_app", "error"]

audit = logging.getLogger("hacluster.audit")
AUDITED = frozenset({Role.ADMIN})


# Accepted verdicts remembered per current token book (see make_auth); a bound on memory only:
# distinct (Authorization header, route class) pairs that a configured token passes.
MAX_CACHED_VERDICTS = 1024


def make_auth(node: ServedNode) -> Middleware:
    # Rebuilt when the node's credentials change (SIGHUP: node.reload), told by identity. With
    # it goes the cache of verdicts: each one stands for its own book only.
    current: list[tuple[object, str | None, TokenBook, dict[tuple[str, Need], Principal]]] = []

    def book() -> tuple[TokenBook, dict[tuple[str, Need], Principal]]:
        cfg = node.cfg
        if not current or current[0][0] is not cfg.auth or current[0][1] is not cfg.token:
            current[:] = [(cfg.auth, cfg.token, TokenBook(cfg.auth.tokens, cfg.token), {})]
        return current[0][2], current[0][3]

    class Members:
        def __contains__(self, name: object) -> bool:
            return isinstance(name, str) and node.is_member(name)

    members = Members()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in OPEN_PATHS:
            return await handler(request)
        method = request.method
        wanted = need(method, path)
        header = request.headers.get("Authorization")
        tokens, accepted = book()
        mutual_tls = node.cfg.tls.peer_client_auth
        # Without a certificate in play the verdict is a function of the book, the header and
        # the route's need alone: one that accepted is reused until the book changes (every
        # request used to pay for a SHA-256 and two constant-time compares). Refusals are
        # never cached: they take the full path each time. The lookup hashes the header with
        # the interpreter's keyed SipHash and compares strings only on equal hashes, so its
        # timing tells nothing about how much of a guessed token is right.
        key = (header, wanted) if header is not None and not (
            mutual_tls and Role.REPLICATION in wanted.roles) else None
        verdict: Principal | Refusal | None = accepted.get(key) if key is not None else None
        if verdict is None:
            peercert = (request.transport.get_extra_info("peercert")
                        if request.transport else None)
            # aiohttp decodes header bytes with surrogateescape: the token book encodes them
            # back.
            verdict = authorize(method, path, header, peer_cert=peer_name(peercert),
                                book=tokens, members=members, mutual_tls=mutual_tls)
            if key is not None and isinstance(verdict, Principal):
                if len(accepted) >= MAX_CACHED_VERDICTS:
                    accepted.clear()
                accepted[key] = verdict
        if isinstance(verdict, Refusal):
            audit.info("refused %s %s from %s: %s", method, path,
                       request.remote, verdict.message)
            if verdict.status == 401:
                return web.json_response({"error": verdict.message}, status=401,
                                         headers={"WWW-Authenticate": "Bearer"})
            return error(verdict.status, verdict.message)
        request[PRINCIPAL] = verdict
        if not wanted.roles & AUDITED or Role.REPLICATION in verdict.roles:
            return await handler(request)
        # Who, what, when (the log line's time), from where, and how it ended.
        return await handle_then(request, handler, lambda status: audit.info(
            "%s: %s %s from %s: %d", verdict.who, request.method, request.rel_url,
            request.remote, status))

    return auth


def make_json_errors(max_body_bytes: int) -> Middleware:
    """aiohttp's own answers (``404`` for an unknown path, ``405`` for a method a path does
    not have, ``413`` for a body over the limit) as the JSON error shape of every other one.

    Innermost, so authentication has answered first (an unknown path without a credential is
    still a ``401``) and the audit line and the latency histogram see the same status as
    before. An answer that is JSON already (a missing checkpoint) is left alone.
    """

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status not in (404, 405, 413) or exc.content_type == "application/json":
                raise
            if isinstance(exc, web.HTTPMethodNotAllowed):
                allowed = sorted(exc.allowed_methods)
                answer = error(405, f"method {exc.method} is not allowed on this path",
                               allowed=allowed)
                answer.headers["Allow"] = ",".join(allowed)
                return answer
            if exc.status == 413:
                return error(413, "request body is larger than limits.max_body_bytes "
                             f"({max_body_bytes} bytes)", limit=max_body_bytes)
            return error(404, "no such path", path=request.path)

    return json_errors


def build_app(node: ServedNode) -> web.Application:
    metrics = Metrics(node)
    limit = node.cfg.limits.max_body_bytes
    app = web.Application(
        middlewares=[metrics.middleware(), make_auth(node), make_json_errors(limit)],
        client_max_size=limit)
    info.add_routes(app, node, metrics)
    if node.cfg.managed:
        managed.add_routes(app, node)     # /v1/wait; the key-value API answers 409
    else:
        kv.add_routes(app, node)
        watch.add_routes(app, node, node.watches)
    admin.add_routes(app, node)
    settings.add_routes(app, node)      # /v1/admin/config: the dynamic configuration
    add_replication_routes(app, node)
    return app


def add_replication_routes(app: web.Application, node: ServedNode) -> None:
    """The data plane between nodes: served by the primary only."""

    def on_primary(pick: Callable[[ServedNode], Handler]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            if not node.is_primary or node.source is None or node.checkpoints is None:
                return error(503, f"{node.name} is not the primary", primary=node.role.primary)
            return await pick(node)(request)
        return handler

    # on_primary only calls pick() once source and checkpoints exist.
    app.router.add_get("/v1/replication/stream",
                       on_primary(lambda n: n.source.handle_stream))  # type: ignore[union-attr]
    app.router.add_get("/v1/replication/acks",
                       on_primary(lambda n: n.source.handle_acks))  # type: ignore[union-attr]
    # One request per ack: what replicas of older versions send (a rolling upgrade).
    app.router.add_post("/v1/replication/ack",
                        on_primary(lambda n: n.source.handle_ack))  # type: ignore[union-attr]
    app.router.add_post("/v1/replication/checkpoints",
                        on_primary(lambda n: n.checkpoints.handle_create))  # type: ignore[union-attr]
    app.router.add_get("/v1/replication/checkpoints/{id}/files/{name}",
                       on_primary(lambda n: n.checkpoints.handle_file))  # type: ignore[union-attr]
    app.router.add_delete("/v1/replication/checkpoints/{id}",
                          on_primary(lambda n: n.checkpoints.handle_delete))  # type: ignore[union-attr]

"""The node's HTTP surface: routing, authentication, and the JSON error shape.

Owns the aiohttp application of one node: bearer-token authentication (401 without a token, 403
with a wrong one, compared in constant time; health checks and the leader query answer without
one so load balancers and probes work), the latency middleware, and which module serves which
route (``info``: health checks, status, cluster, history, metrics; ``kv``: reads and writes;
``admin``: operator actions). Requests only reach the node through here; this package decides
nothing about roles (the node and ``probes`` do) and must never write to the store except
through ``Node.write``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from hacluster.api import admin, info, kv
from hacluster.api.common import error
from hacluster.api.metrics import Metrics

if TYPE_CHECKING:
    from hacluster.api.port import ServedNode

__all__ = ["OPEN_PATHS", "build_app", "error"]

# Load balancers and orchestrators probe these without credentials; they reveal a node's role
# and position, nothing stored.
OPEN_PATHS = frozenset({"/health", "/liveness", "/readiness", "/leader", "/primary",
                        "/replica", "/read-only", "/status"})


def make_auth(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization")
        if not given:
            return web.json_response({"error": "missing Authorization: Bearer <token>"},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
        # aiohttp decodes header bytes with surrogateescape: encode them back the same way.
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            return error(403, "wrong token")
        return await handler(request)

    return auth


def build_app(node: ServedNode) -> web.Application:
    metrics = Metrics(node)
    app = web.Application(middlewares=[metrics.middleware(), make_auth(node.cfg.token)],
                          client_max_size=node.cfg.limits.max_body_bytes)
    info.add_routes(app, node, metrics)
    kv.add_routes(app, node)
    admin.add_routes(app, node)
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
    app.router.add_post("/v1/replication/ack",
                        on_primary(lambda n: n.source.handle_ack))  # type: ignore[union-attr]
    app.router.add_post("/v1/replication/checkpoints",
                        on_primary(lambda n: n.checkpoints.handle_create))  # type: ignore[union-attr]
    app.router.add_get("/v1/replication/checkpoints/{id}/files/{name}",
                       on_primary(lambda n: n.checkpoints.handle_file))  # type: ignore[union-attr]
    app.router.add_delete("/v1/replication/checkpoints/{id}",
                          on_primary(lambda n: n.checkpoints.handle_delete))  # type: ignore[union-attr]

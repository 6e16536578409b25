"""Helpers every API module shares: the JSON error shape and the redirect to the primary.

Owns how a refusal looks on the wire (``{"error": ..., **extra}``) and how a request that only
the primary can serve is sent there (307, so method and body are kept). It must never decide who
the primary is: it asks the node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from hacluster.node import Node


def error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def to_primary(node: Node, request: web.Request) -> web.Response:
    """307 to the same path on the primary (``curl -L`` follows), or 503 with no leader."""
    leader = node.leader()
    url = node.api_url_of(leader) if leader is not None and leader != node.name else None
    if url is None:
        return error(503, "no primary is known", leader=None)
    # 307 keeps method and body; `curl --location-trusted` replays the request (with its
    # Authorization header) on the primary.
    raise web.HTTPTemporaryRedirect(location=f"{url}{request.rel_url}")

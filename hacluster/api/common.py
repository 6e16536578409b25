"""Helpers every API module shares: the JSON error shape and the redirect to the primary.

Owns how a refusal looks on the wire (``{"error": ..., **extra}``) and how a request that only
the primary can serve is sent there (307, so method and body are kept, with a JSON body naming
the primary). It must never decide who the primary is: it asks the node.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError

if TYPE_CHECKING:
    from hacluster.api.port import ServedNode


def error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


class BodyError(Exception):
    """The request body could not be read or parsed; the message is safe to show."""


async def read_body(request: web.Request) -> bytes:
    """The body, or BodyError for one that does not match its Content-Encoding."""
    try:
        return await request.read()
    except RequestPayloadError as exc:
        raise BodyError(f"request body could not be read: {exc}") from None


async def read_json(request: web.Request, default: Any = None) -> Any:
    """The JSON body (``default`` when there is none), or BodyError with a clear message."""
    if not request.can_read_body:
        return default
    raw = await read_body(request)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise BodyError("body is not valid JSON (or nests too deeply)") from None


def to_primary(node: ServedNode, request: web.Request) -> web.Response:
    """307 to the same path on the primary (``curl -L`` follows), or 503 with no leader."""
    leader = node.leader()
    url = node.api_url_of(leader) if leader is not None and leader != node.name else None
    if url is None:
        return error(503, "no primary is known", leader=None)
    # 307 keeps method and body; `curl --location-trusted` replays the request (with its
    # Authorization header) on the primary.
    location = f"{url}{request.rel_url}"
    raise web.HTTPTemporaryRedirect(
        location=location, content_type="application/json",
        text=json.dumps({"error": "not the primary", "primary": leader, "location": location}))


async def handle_then(request: web.Request, handler: Handler,
                      done: Callable[[int], None]) -> web.StreamResponse:
    """``handler(request)``, then ``done(status)`` however it ended (an HTTPException's own
    status, 500 for anything else) — for middlewares that record what came of a request."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        done(status)

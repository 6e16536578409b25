"""The HTTP surface of managed mode: ``GET /v1/wait`` and the key-value API turned away.

Owns ``/v1/wait?seq=N&timeout_ms=T``, which a managed service calls on its own node before it
acknowledges a write to its client (semi-synchronous replication by cooperation): 200 once seq
N is durable here and held per the replication mode (in sync mode: by the synchronous set while
this node holds the lock), 504 when that does not happen within the timeout, 503 on a node
that is not a primary with a valid lease. It also answers the key-value routes with 409: in
managed mode the service owns the database. It must never answer 200 for a seq the node has
not confirmed, and never redirect a wait to another node (the write happened here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from hacluster.api.common import error
from hacluster.node_errors import NotWritable, OutcomeUnknown, WaitTimeout

if TYPE_CHECKING:
    from hacluster.api.port import ServedNode

DEFAULT_TIMEOUT_MS = 5000
MAX_TIMEOUT_MS = 60_000

KV_ROUTES = ("/v1/kv/{key:.*}", "/v1/kv", "/v1/batch", "/v1/txn", "/v1/watch")


def _int_param(request: web.Request, name: str, default: int | None,
               maximum: int = 2**63 - 1) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"{name} is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw[:40]!r}") from None
    if value < 0 or value > maximum:
        raise ValueError(f"{name} out of range: {value}")
    return value


def add_routes(app: web.Application, node: ServedNode) -> None:
    async def wait(request: web.Request) -> web.Response:
        try:
            seq = _int_param(request, "seq", None)
            timeout_ms = _int_param(request, "timeout_ms", DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS)
        except ValueError as exc:
            return error(400, str(exc))
        if seq == 0:
            return error(400, "seq must be at least 1")
        try:
            held = await node.wait_held(seq, timeout_ms / 1000)
        except WaitTimeout as exc:
            return error(504, str(exc), seq=seq)
        except NotWritable as exc:
            return error(503, str(exc), seq=seq, primary=node.role.primary)
        except OutcomeUnknown as exc:
            return error(503, str(exc), seq=seq, outcome="unknown")
        return web.json_response(held)

    async def turned_away(request: web.Request) -> web.Response:
        return error(409, "managed mode: the service owns the database, hacluster's key-value "
                     "API is off (write through the service)")

    app.router.add_get("/v1/wait", wait)
    for path in KV_ROUTES:
        app.router.add_route("*", path, turned_away)

"""The node's HTTP surface: health, status, the two write endpoints and the replication routes.

Owns routing, bearer-token authentication (401 without a token, 403 with a wrong one, compared
in constant time) and turning node state and errors into HTTP answers. Requests only reach the
node through here; this module decides nothing about roles (the node does) and must never
write to the store except through ``Node.write``.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware

from hacluster.config import FRAME_OVERHEAD
from hacluster.node_errors import NotWritable, OutcomeUnknown
from hacluster.store import StoreError
from hacluster.wal.batch import PUT
from hacluster.writes import BadRequest, check_cf, check_key, check_value, parse_batch

if TYPE_CHECKING:
    from hacluster.node import Node

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/health", "/status"})


def error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


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
        if not hmac.compare_digest(given.encode(), expected):
            return error(403, "wrong token")
        return await handler(request)

    return auth


def build_app(node: Node) -> web.Application:
    limits = node.cfg.limits
    app = web.Application(middlewares=[make_auth(node.cfg.token)],
                          client_max_size=limits.max_body_bytes)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": node.name})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(node.status())

    def not_primary(request: web.Request) -> web.Response:
        url = node.primary_url()
        if url is None:
            return error(503, "no primary is known", leader=None)
        # 307 keeps method and body; `curl --location-trusted` replays the write (with its
        # Authorization header) on the primary.
        raise web.HTTPTemporaryRedirect(location=f"{url}{request.rel_url}")

    async def put_kv(request: web.Request) -> web.Response:
        if not node.is_primary:
            return not_primary(request)
        try:
            key = request.match_info["key"].encode("utf-8")
            check_key(key, limits, "key")
            cf = check_cf(request.query.get("cf", "default"), node.column_families, "cf")
            value = await request.read()
            check_value(value, limits, "value")
        except BadRequest as exc:
            return error(400, str(exc))
        return await _write(node, [(PUT, cf, key, value)])

    async def batch(request: web.Request) -> web.Response:
        if not node.is_primary:
            return not_primary(request)
        try:
            body = await request.read()
            ops = parse_batch(body, request.content_type, limits, node.column_families)
        except BadRequest as exc:
            return error(400, str(exc))
        return await _write(node, ops)

    def on_primary(pick: Callable[[Node], Handler]) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            if not node.is_primary or node.source is None or node.checkpoints is None:
                return error(503, f"{node.name} is not the primary", primary=node.role.primary)
            return await pick(node)(request)
        return handler

    async def admin_flush(request: web.Request) -> web.Response:
        store = node.current_store()
        if store is None:
            return error(503, "no database open")
        store.flush()
        return web.json_response({"flushed": store.column_families, "seq": store.latest_seq()})

    async def admin_compact(request: web.Request) -> web.Response:
        store = node.current_store()
        if store is None:
            return error(503, "no database open")
        store.compact()
        return web.json_response({"compacted": store.column_families, "seq": store.latest_seq()})

    async def admin_hash(request: web.Request) -> web.Response:
        store = node.current_store()
        if store is None:
            return error(503, "no database open")
        # Computed on the loop thread: no apply or write interleaves, so seq and hash agree.
        return web.json_response(store.content_hash())

    async def set_paused(paused: bool) -> web.Response:
        if node.control is None:
            return error(409, "no consensus in this cluster (static primary): nothing to pause")
        ok = await node.control.set_paused(paused)
        if ok is None:
            return error(503, "not committed: no Raft quorum reachable")
        log.info("%s: maintenance mode %s", node.name, "on" if paused else "off")
        return web.json_response({"paused": paused})

    async def admin_pause(request: web.Request) -> web.Response:
        return await set_paused(True)

    async def admin_resume(request: web.Request) -> web.Response:
        return await set_paused(False)

    async def admin_raft_compact(request: web.Request) -> web.Response:
        if node.control is None:
            return error(409, "no consensus in this cluster (static primary): no Raft log")
        node.control.raft.compact_log()
        return web.json_response({"compacting": True,
                                  "raft": node.control.raft.raft_status()}, status=202)

    async def admin_switchover(request: web.Request) -> web.Response:
        from hacluster.consensus.loop import SwitchoverError
        if node.control is None:
            return error(409, "no consensus in this cluster (static primary): no switchover")
        if not node.is_primary:
            return not_primary(request)
        try:
            body = await request.json() if request.can_read_body else {}
            target = body.get("to") if isinstance(body, dict) else None
        except ValueError:
            return error(400, "body must be JSON {\"to\": NAME} or empty")
        if target is not None and not isinstance(target, str):
            return error(400, "'to' must be a node name")
        try:
            successor = await node.control.switchover(target)
        except SwitchoverError as exc:
            return error(409, str(exc))
        return web.json_response({"switched_over_to": successor, "from": node.name})

    app.router.add_post("/v1/admin/switchover", admin_switchover)
    app.router.add_post("/v1/admin/pause", admin_pause)
    app.router.add_post("/v1/admin/resume", admin_resume)
    app.router.add_post("/v1/admin/raft/compact", admin_raft_compact)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/admin/flush", admin_flush)
    app.router.add_post("/v1/admin/compact", admin_compact)
    app.router.add_get("/v1/admin/hash", admin_hash)
    app.router.add_get("/status", status)
    app.router.add_put("/v1/kv/{key:.+}", put_kv)
    app.router.add_post("/v1/batch", batch)
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
    return app


async def _write(node: Node, ops: list[tuple[int, str, bytes, bytes]]) -> web.Response:
    # A WriteBatch costs each op its key and value plus at most 16 bytes of tags and varints;
    # a batch that could not travel in one replication frame is refused before it is written.
    size = 12 + sum(len(k) + len(v) + 16 for _, _, k, v in ops)
    limit = node.cfg.replication.max_frame_bytes - FRAME_OVERHEAD
    if size > limit:
        return error(413, f"write of ~{size} bytes exceeds what one replication frame carries "
                          f"({limit} bytes; replication.max_frame_bytes)")
    try:
        applied = node.write(ops)
        await node.confirm(applied.last_seq)
    except NotWritable as exc:
        return error(503, f"not accepting writes: {exc}", leader=node.role.primary)
    except OutcomeUnknown as exc:
        return error(503, str(exc), outcome="unknown")
    except StoreError as exc:
        return error(400, str(exc))
    except Exception as exc:  # rocksdict raises bare Exception for RocksDB I/O errors
        text = str(exc)
        if "No space left" in text or "ENOSPC" in text:
            log.error("write refused, disk full: %s", text)
            return error(507, f"disk full, write refused: {text}")
        log.exception("write failed")
        return error(500, f"write failed: {text}")
    return web.Response(
        text=json.dumps({"seq": applied.last_seq, "first_seq": applied.first_seq,
                         "epoch": node.role.epoch}),
        content_type="application/json")

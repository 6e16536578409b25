"""Operator actions over HTTP: ``/v1/admin/*`` (flush, compact, hash, pause, resume,
switchover, Raft log compaction).

Owns checking each action's arguments and preconditions and answering with what was done. The
actions themselves belong to the node, its store and the control loop; this module must never
change a role or the cluster state by itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from hacluster.api.common import BodyError, error, read_json, to_primary
from hacluster.backup import http as backup_http
from hacluster.consensus.errors import NotCommitted, RequestRefused
from hacluster.node_errors import NotWritable

if TYPE_CHECKING:
    from hacluster.api.port import ServedNode

log = logging.getLogger(__name__)

NO_CONSENSUS = "no consensus in this cluster (static primary)"


def add_routes(app: web.Application, node: ServedNode) -> None:
    async def flush(request: web.Request) -> web.Response:
        store = node.store
        if store is None:
            return error(503, "no database open")
        store.flush()
        return web.json_response({"flushed": store.column_families, "seq": store.latest_seq()})

    async def compact(request: web.Request) -> web.Response:
        store = node.store
        if store is None:
            return error(503, "no database open")
        store.compact()
        return web.json_response({"compacted": store.column_families,
                                  "seq": store.latest_seq()})

    async def content_hash(request: web.Request) -> web.Response:
        store = node.store
        if store is None:
            return error(503, "no database open")
        # Computed on the loop thread: no apply or write interleaves, so seq and hash agree.
        return web.json_response(store.content_hash())

    async def set_paused(paused: bool) -> web.Response:
        if node.control is None:
            return error(409, f"{NO_CONSENSUS}: nothing to pause")
        ok = await node.control.set_paused(paused)
        if ok is None:
            return error(503, "not committed: no Raft quorum reachable")
        log.info("%s: maintenance mode %s", node.name, "on" if paused else "off")
        return web.json_response({"paused": paused})

    async def pause(request: web.Request) -> web.Response:
        return await set_paused(True)

    async def resume(request: web.Request) -> web.Response:
        return await set_paused(False)

    async def raft_compact(request: web.Request) -> web.Response:
        if node.control is None:
            return error(409, f"{NO_CONSENSUS}: no Raft log")
        node.control.compact_raft_log()
        return web.json_response({"compacting": True,
                                  "raft": node.control.raft_status()}, status=202)

    async def switchover(request: web.Request) -> web.Response:
        if node.control is None:
            return error(409, f"{NO_CONSENSUS}: no switchover")
        if not node.is_primary:
            return to_primary(node, request)
        try:
            body = await read_json(request, {})
            target = body.get("to") if isinstance(body, dict) else None
        except BodyError:
            return error(400, "body must be JSON {\"to\": NAME} or empty")
        if target is not None and not isinstance(target, str):
            return error(400, "'to' must be a node name")
        try:
            successor = await node.control.switchover(target)
        except RequestRefused as exc:
            return error(409, str(exc))
        return web.json_response({"switched_over_to": successor, "from": node.name})

    async def reinit(request: web.Request) -> web.Response:
        try:
            primary = await node.reinit()
        except NotWritable as exc:
            return error(409, f"reinit refused: {exc}")
        return web.json_response({"reinit": node.name, "from": primary}, status=202)

    async def failover(request: web.Request) -> web.Response:
        if node.control is None:
            return error(409, f"{NO_CONSENSUS}: no failover")
        try:
            body = await read_json(request, {})
        except BodyError:
            return error(400, 'body must be JSON {"to": NAME, "force": false}')
        target = body.get("to") if isinstance(body, dict) else None
        force = body.get("force", False) if isinstance(body, dict) else False
        if not isinstance(target, str) or not isinstance(force, bool):
            return error(400, "'to' must be a node name and 'force' a boolean")
        try:
            epoch = await node.control.request_failover(target, force)
        except RequestRefused as exc:
            return error(409, str(exc))
        return web.json_response({"failover_to": target, "after_epoch": epoch,
                                  "force": force}, status=202)

    async def members(request: web.Request) -> web.Response:
        from hacluster.config import ConfigError, parse_address
        if node.control is None:
            return error(409, f"{NO_CONSENSUS}: no Raft membership")
        adding = request.method == "POST"
        try:
            body = await read_json(request, {})
        except BodyError:
            return error(400, 'body must be JSON {"name": NAME, "raft": "host:port"}')
        name = request.match_info.get("name") or (body.get("name") if isinstance(body, dict)
                                                  else None)
        raft = body.get("raft") if isinstance(body, dict) else None
        if raft is None and not adding:
            raft = next((str(n.raft) for n in node.cfg.nodes if n.name == name), None)
        if not isinstance(name, str) or not isinstance(raft, str):
            return error(400, "'name' and 'raft' (host:port) are required")
        try:
            address = str(parse_address(raft, node.cfg.source, "raft"))
        except ConfigError as exc:
            return error(400, str(exc))
        try:
            if adding:
                await node.control.add_member(name, address)
            else:
                await node.control.remove_member(name, address)
        except NotCommitted as exc:
            return error(503, str(exc), outcome="unknown")
        except RequestRefused as exc:
            return error(409, str(exc))
        return web.json_response({"added" if adding else "removed": name, "raft": address,
                                  "raft_members": node.control.raft_members()})

    app.router.add_post("/v1/admin/members", members)
    app.router.add_delete("/v1/admin/members/{name}", members)
    app.router.add_post("/v1/admin/failover", failover)
    app.router.add_post("/v1/admin/reinit", reinit)
    app.router.add_post("/v1/admin/flush", flush)
    app.router.add_post("/v1/admin/compact", compact)
    app.router.add_get("/v1/admin/hash", content_hash)
    app.router.add_post("/v1/admin/pause", pause)
    app.router.add_post("/v1/admin/resume", resume)
    app.router.add_post("/v1/admin/raft/compact", raft_compact)
    app.router.add_post("/v1/admin/switchover", switchover)
    backup_http.add_routes(app, node)           # POST /v1/admin/backup

"""``POST /v1/admin/backup``: an operator's base backup, now (admin role, like every
``/v1/admin/*`` route).

Owns the request's checks and the answer: 307 to the primary from a replica, 409 when backup is
off, 503 while no archiver runs, else the archiver's base backup awaited for ``wait_s`` seconds
(default 600; 0: return at once) — 200 with its summary (id, seq, epoch, bytes, seconds), 202
when it is still running, 503 with the reason when it failed. The archiver does the work; this
handler must never take a checkpoint or touch the store itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web

from hacluster.api.common import error, to_primary
from hacluster.backup import BackupError
from hacluster.backup.archiver import archiver_of

if TYPE_CHECKING:
    from hacluster.api.port import ServedNode

DEFAULT_WAIT_S = 600.0


def add_routes(app: web.Application, node: ServedNode) -> None:
    async def backup_now(request: web.Request) -> web.Response:
        try:
            wait_s = float(request.query.get("wait_s", DEFAULT_WAIT_S))
        except ValueError:
            return error(400, "wait_s: expected a number of seconds")
        if not 0 <= wait_s <= 86400:
            return error(400, "wait_s: must be from 0 to 86400")
        if not node.cfg.backup.enabled:
            return error(409, "backup is off: the config has no backup.url")
        if not node.is_primary:
            return to_primary(node, request)
        archiver = archiver_of(node)
        if archiver is None:
            return error(503, f"no archiver runs on {node.name} (managed mode, or it is "
                              "starting)")
        fut = archiver.request_base()
        summary = None              # none yet: answered 202, the base backup goes on
        try:
            if wait_s:
                async with asyncio.timeout(wait_s):
                    summary = await asyncio.shield(fut)
        except TimeoutError:
            pass
        except BackupError as exc:
            return error(503, f"base backup failed: {exc}")
        if summary is None:
            return web.json_response({"started": True, "node": node.name,
                                      "status": "running: see /status backup"}, status=202)
        return web.json_response({"base_backup": summary, "node": node.name})

    app.router.add_post("/v1/admin/backup", backup_now)

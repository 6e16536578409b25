"""The dynamic configuration over HTTP: ``GET`` and ``PATCH /v1/admin/config``.

Owns reading the request (a JSON object of ``key: value`` changes, ``null`` to go back to the
file's value, and the version the caller read, for compare-and-set) and mapping the control
loop's verdict to an answer: 200 with the new version, 400 for a key that is not dynamic or a
value the schema refuses, 409 for an unsafe change or a version that moved meanwhile, 503 when
Raft did not commit in time. Any node answers (Raft carries the change to the leader). It must
never change a setting itself: ``ControlLoop.set_settings`` validates and records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from hacluster.api.common import BodyError, error, read_json
from hacluster.config.dynamic import DYNAMIC_KEYS
from hacluster.consensus.errors import NotCommitted, RequestRefused, SettingsInvalid
from hacluster.security.access import PRINCIPAL

if TYPE_CHECKING:
    from hacluster.api.port import ServedNode

NO_CONSENSUS = "no consensus in this cluster (static primary): every setting is in the file"
USAGE = ('body must be JSON {"changes": {"KEY": VALUE or null, ...}, '
         '"expected_version": N (optional)}')


def add_routes(app: web.Application, node: ServedNode) -> None:
    def view() -> dict[str, Any]:
        assert node.control is not None
        return {**node.control.settings_status(), "keys": DYNAMIC_KEYS}

    async def show(request: web.Request) -> web.Response:
        if node.control is None:
            return error(409, NO_CONSENSUS)
        return web.json_response(view())

    async def change(request: web.Request) -> web.Response:
        if node.control is None:
            return error(409, NO_CONSENSUS)
        try:
            body = await read_json(request)
        except BodyError:
            return error(400, USAGE)
        changes = body.get("changes") if isinstance(body, dict) else None
        expected = body.get("expected_version") if isinstance(body, dict) else None
        if not isinstance(changes, dict) or not changes or not all(
                isinstance(k, str) for k in changes):
            return error(400, USAGE)
        if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)
                                     or expected < 0):
            return error(400, "'expected_version' must be a version number (from GET)")
        principal = request.get(PRINCIPAL)
        by = f"{node.name} for {principal.who if principal is not None else 'anonymous'}"
        try:
            version = await node.control.set_settings(changes.items(), by, expected)
        except NotCommitted as exc:
            return error(503, str(exc), outcome="unknown")
        except SettingsInvalid as exc:
            return error(400, str(exc))
        except RequestRefused as exc:
            return error(409, str(exc))
        return web.json_response({**view(), "changed_to_version": version})

    app.router.add_get("/v1/admin/config", show)
    app.router.add_patch("/v1/admin/config", change)

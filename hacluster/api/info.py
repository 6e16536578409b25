"""Read-only routes about the node and the cluster: health checks, status, cluster, history,
metrics.

Owns turning ``probes`` verdicts and the node's and Raft's state into HTTP answers for load
balancers (``/primary``, ``/replica``, ``/read-only``), orchestrators (``/liveness``,
``/readiness``), clients (``/leader``) and operators (``/status``, ``/cluster``, ``/history``,
``/metrics``). It must never change anything.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hacluster.api import probes
from hacluster.api.common import error
from hacluster.role import VERSION

if TYPE_CHECKING:
    from hacluster.api.metrics import Metrics
    from hacluster.api.port import ServedNode


def _answer(probe: probes.Probe) -> web.Response:
    return web.json_response(probe.body, status=probe.status)


def _lag_arg(request: web.Request) -> int | None:
    raw = request.query.get("lag")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise web.HTTPBadRequest(text='{"error": "lag must be a non-negative integer"}',
                                 content_type="application/json")
    return int(raw)


def cluster_view(node: ServedNode) -> dict[str, Any]:
    """Every member as the Raft state records it (static mode: the config, and this node)."""
    leader = node.leader()
    control = node.control
    members: list[dict[str, Any]] = []
    if control is None:
        for n in node.cfg.nodes:
            me = n.name == node.name
            store = node.store if me else None
            members.append({"name": n.name, "url": n.api.url,
                            "role": "primary" if n.name == node.role.primary else "replica",
                            "state": "running" if me else "unknown",
                            "epoch": node.role.epoch,
                            "applied_seq": store.latest_seq() if store else None,
                            "lag": None, "tags": sorted(n.tags)})
        return {"leader": leader, "epoch": node.role.epoch, "paused": False,
                "mode": node.cfg.replication.mode, "members": members}
    state = control.state()
    now = time.monotonic()
    seen = control.member_seen_at()
    top = max([m.applied_seq for m in state.members], default=0)
    by_name = {m.name: m for m in state.members}
    members = []
    raft_members = set(control.raft_members())
    configured = {n.name: n for n in node.cfg.nodes}
    # The Raft membership decides who is in the cluster: a configured node removed since is
    # left out, a node added since (not in this node's config) is shown from its reports.
    names = [n.name for n in node.cfg.nodes if str(n.raft) in raft_members or n.name in by_name]
    names += sorted(set(by_name) - set(configured))
    for name in names:
        m = by_name.get(name)
        age = now - seen[name] if name in seen else None
        fresh = age is not None and age <= control.policy.member_stale_s
        role = m.role if m else "unknown"
        if name == leader:
            role = "primary"
        elif role == "primary":
            role = "former primary"
        tags = configured[name].tags if name in configured else (m.tags if m else frozenset())
        members.append({
            "name": name, "url": node.api_url_of(name), "role": role,
            "state": ("running" if fresh else "unreachable") if m else "never reported",
            "healthy": m.healthy if m else None, "epoch": state.lock.epoch,
            # The epoch of the member's own last seq, from its last report (None: unknown).
            "member_epoch": m.last_epoch if m and m.last_epoch else None,
            "applied_seq": m.applied_seq if m else None,
            "lag": top - m.applied_seq if m else None,
            "report_age_s": round(age, 2) if age is not None else None,
            "sync": name in state.sync_set, "tags": sorted(tags)})
    return {"leader": leader, "epoch": state.lock.epoch, "paused": state.paused,
            "mode": node.cfg.replication.mode, "sync_set": sorted(state.sync_set),
            "members": members}


def history(node: ServedNode) -> list[dict[str, Any]]:
    """The epochs (``kind: epoch``) and the dynamic configuration's changes (``kind:
    settings``), oldest first."""
    if node.control is None:
        return [{"kind": "epoch", "epoch": node.role.epoch, "primary": node.role.primary,
                 "first_seq": None, "start_time": None, "reason": "configured"}]
    state = node.control.state()
    records: list[dict[str, Any]] = [
        {"kind": "epoch", "epoch": r.epoch, "primary": r.primary, "first_seq": r.start_seq,
         "start_time": r.wall_time, "reason": r.reason} for r in state.history]
    records += [{"kind": "settings", "version": c.version, "changes": dict(c.changes),
                 "by": c.by, "start_time": c.wall_time} for c in state.settings_history]
    return sorted(records, key=lambda r: r["start_time"] or 0.0)


def add_routes(app: web.Application, node: ServedNode, metrics: Metrics) -> None:
    def view() -> probes.NodeView:
        return node.view(time.monotonic())

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": node.name, "version": VERSION})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(node.status())

    async def leader(request: web.Request) -> web.Response:
        return _answer(probes.leader(view()))

    async def primary(request: web.Request) -> web.Response:
        return _answer(probes.primary(view()))

    async def replica(request: web.Request) -> web.Response:
        return _answer(probes.replica(view(), _lag_arg(request)))

    async def read_only(request: web.Request) -> web.Response:
        return _answer(probes.read_only(view(), _lag_arg(request)))

    async def liveness(request: web.Request) -> web.Response:
        return _answer(probes.liveness(view()))

    async def readiness(request: web.Request) -> web.Response:
        return _answer(probes.readiness(view()))

    async def cluster(request: web.Request) -> web.Response:
        return web.json_response(cluster_view(node))

    async def history_route(request: web.Request) -> web.Response:
        return web.json_response(history(node))

    async def metrics_route(request: web.Request) -> web.Response:
        try:
            return metrics.render()
        except Exception as exc:   # a broken collector must not look like a dead node
            return error(500, f"metrics: {exc}")

    for path, handler in (("/health", health), ("/status", status), ("/leader", leader),
                          ("/primary", primary), ("/replica", replica),
                          ("/read-only", read_only), ("/liveness", liveness),
                          ("/readiness", readiness), ("/cluster", cluster),
                          ("/history", history_route), ("/metrics", metrics_route)):
        app.router.add_get(path, handler)

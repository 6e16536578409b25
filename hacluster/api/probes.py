"""Health checks and the leader answer, decided: pure functions from a node view to an HTTP answer.

Owns what ``/leader``, ``/primary``, ``/replica``, ``/read-only``, ``/liveness`` and
``/readiness`` answer, so that a load balancer, a Kubernetes probe and a client library get the
same verdict from the same facts. ``NodeView`` is a snapshot the API takes of the node (role,
write gate, replication stream, lag, the control loop's last pass and its view of the leader);
every function here maps it to a status code and a small JSON body with the reason. It must never
read a clock, the network or the store: the caller passes ``now`` and the view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class NodeView:
    name: str
    is_primary: bool
    writable: bool                  # primary with its write gate open (valid lease)
    epoch: int
    leader: str | None              # who this node believes holds a valid lease, if anyone
    leader_url: str | None
    stream_state: str | None        # replica: connecting, streaming, bootstrapping, ...
    applied_seq: int | None
    primary_seq: int | None         # replica: the primary's latest seq, from the stream
    last_frame_age_s: float | None  # replica: seconds since the stream last said anything
    loop_age_s: float | None        # seconds since the control loop's last pass (None: static)
    lease_s: float                  # the stall bound for liveness
    stream_timeout_s: float         # a stream silent for longer is not streaming
    max_lag: int                    # sequence numbers, replication.max_replica_lag
    tags: frozenset[str] = frozenset()
    write_refusal: str | None = None   # primary: why it refuses writes now, if it does


@dataclass(frozen=True, slots=True)
class Probe:
    status: int
    body: dict[str, Any]


def lag(view: NodeView) -> int | None:
    """Sequence numbers this replica is behind the primary, as far as its stream says."""
    if view.primary_seq is None or view.applied_seq is None:
        return None
    return max(0, view.primary_seq - view.applied_seq)


def _base(view: NodeView) -> dict[str, Any]:
    return {"node": view.name, "role": "primary" if view.is_primary else "replica",
            "epoch": view.epoch, "applied_seq": view.applied_seq}


def leader(view: NodeView) -> Probe:
    if view.leader is None or view.leader_url is None:
        return Probe(503, {"error": "no valid primary is known", "node": view.name,
                           "leader": None, "epoch": view.epoch})
    return Probe(200, {"leader": view.leader, "url": view.leader_url, "epoch": view.epoch,
                       "node": view.name})


def primary(view: NodeView) -> Probe:
    body = _base(view)
    if view.writable:
        return Probe(200, body)
    why = (view.write_refusal or "primary without a valid lease") if view.is_primary \
        else "not the primary"
    return Probe(503, {**body, "reason": why, "leader": view.leader})


def replica_refusal(view: NodeView, max_lag: int) -> str | None:
    """None when this node may serve reads as a replica within ``max_lag``; else why not."""
    if view.is_primary:
        return "this node is the primary"
    if view.stream_state != "streaming":
        return f"not streaming ({view.stream_state or 'no primary to follow'})"
    if view.last_frame_age_s is None or view.last_frame_age_s > view.stream_timeout_s:
        return "the stream has been silent"
    behind = lag(view)
    if behind is None:
        return "lag unknown"
    if behind > max_lag:
        return f"{behind} behind, over the allowed {max_lag}"
    return None


def replica(view: NodeView, max_lag: int | None = None) -> Probe:
    limit = view.max_lag if max_lag is None else max_lag
    body = {**_base(view), "lag": lag(view), "max_lag": limit}
    if "noloadbalance" in view.tags:
        return Probe(503, {**body, "reason": "tagged noloadbalance"})
    why = replica_refusal(view, limit)
    return Probe(503, {**body, "reason": why}) if why else Probe(200, body)


def read_only(view: NodeView, max_lag: int | None = None) -> Probe:
    """Patroni's read pool: the primary, or a replica streaming within the allowed lag."""
    if view.writable:
        return Probe(200, _base(view))
    return replica(view, max_lag)


def liveness(view: NodeView) -> Probe:
    """Alive unless the control loop has stalled for longer than a lease."""
    body = {"node": view.name, "loop_age_s": view.loop_age_s}
    if view.loop_age_s is not None and view.loop_age_s > view.lease_s:
        return Probe(503, {**body, "reason": f"control loop stalled for "
                                             f"{view.loop_age_s:.2f} s (lease {view.lease_s} s)"})
    return Probe(200, body)


def readiness(view: NodeView) -> Probe:
    """Ready once serving its role: a writable primary, or a replica caught up."""
    if view.writable:
        return Probe(200, _base(view))
    if view.is_primary:
        return Probe(503, {**_base(view),
                           "reason": view.write_refusal or "primary without a valid lease"})
    why = replica_refusal(view, view.max_lag)
    body = {**_base(view), "lag": lag(view)}
    return Probe(503, {**body, "reason": why}) if why else Probe(200, body)

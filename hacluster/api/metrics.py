"""Prometheus metrics of one node: ``GET /metrics`` in the text exposition format.

Owns the node's registry: request latency histograms (observed by an aiohttp middleware, by
route template so label values stay bounded) and a collector that reads the node's state at
scrape time — role, epoch, applied seq, lag per replica, writes, failovers, fencing events,
divergent writes, bootstrap bytes, Raft log figures, peer clock drift. It must never change
node state, and never label by anything unbounded (keys, client addresses, raw paths).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from hacluster.api import probes
from hacluster.lineage.tails import list_divergent_tails
from hacluster.security import certs

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler, Middleware

    from hacluster.api.port import ServedNode

MAX_CACHED_CHILDREN = 512
LONG_LIVED = frozenset({"/v1/replication/stream", "/v1/replication/acks"})
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeCollector(Collector):
    def __init__(self, node: ServedNode) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        node = self.node
        seq = node.latest_seq()      # a managed primary's: what it read of the service's WAL
        role = GaugeMetricFamily("hacluster_role", "1 for this node's current role",
                                 labels=["role"])
        for name in ("primary", "replica"):
            role.add_metric([name], 1.0 if (name == "primary") == node.is_primary else 0.0)
        yield role
        # The node's view: the same "writable" as /status, the probes and the KV answers
        # (a primary whose disk is full is not writable, whatever its lease).
        yield GaugeMetricFamily("hacluster_writable", "1 while this node acknowledges writes",
                                value=1.0 if node.view(time.monotonic()).writable else 0.0)
        yield GaugeMetricFamily("hacluster_epoch", "the epoch this node is in",
                                value=node.status_epoch())
        if node.cfg.tls.enabled:
            cert = node.cfg.tls.for_node(node.name).cert_file
            if cert is not None:
                try:
                    left = certs.expires_in_days(cert) * 86400.0
                except (OSError, certs.CertError):
                    left = float("nan")      # unreadable now: alert-worthy too
                yield GaugeMetricFamily("hacluster_tls_cert_expiry_seconds", "seconds until "
                                        "this node's TLS certificate expires (its file now)",
                                        value=left)
        yield GaugeMetricFamily("hacluster_applied_seq", "latest sequence number in this "
                                "node's database", value=seq)
        yield CounterMetricFamily("hacluster_writes", "write requests applied locally as "
                                  "primary (acknowledged, or answered outcome unknown)",
                                  value=node.writes)
        yield CounterMetricFamily("hacluster_fencing_events", "times this node's write gate "
                                  "was closed while open (demotion, lost quorum, switchover, "
                                  "disk full)",
                                  value=node.gate.closes)
        yield CounterMetricFamily("hacluster_unknown_outcomes", "writes answered 'outcome "
                                  "unknown' (written, but the lease or sync ack ran out)",
                                  value=node.unknown_outcomes)
        lag = GaugeMetricFamily("hacluster_replica_lag", "primary: sequence numbers each "
                                "replica is behind", labels=["replica"])
        if node.is_primary:
            for r in node.positions.snapshot(seq):
                if r.get("lag") is not None:
                    lag.add_metric([str(r["name"])], float(r["lag"]))
        yield lag
        follower = node.follower
        own_lag = GaugeMetricFamily("hacluster_replication_lag", "replica: sequence numbers "
                                    "behind the primary, as its stream reports")
        boot = CounterMetricFamily("hacluster_bootstrap_bytes", "bytes of checkpoint files "
                                   "this node downloaded")
        if follower is not None:
            st = follower.status
            behind = probes.lag(node.view(time.monotonic()))
            if behind is not None:
                own_lag.add_metric([], float(behind))
            boot.add_metric([], float(st.bootstrap_bytes))
        else:
            boot.add_metric([], 0.0)
        yield own_lag
        yield boot
        service = node.service
        if service is not None:
            svc = service.status()
            state = GaugeMetricFamily("hacluster_service_state", "managed mode: 1 for the "
                                      "service's current state", labels=["state"])
            for name in ("running", "starting", "stopped", "failed", "given_up"):
                state.add_metric([name], 1.0 if svc["state"] == name else 0.0)
            yield state
            yield CounterMetricFamily("hacluster_service_restarts", "managed mode: restarts "
                                      "of the service after it exited on its own",
                                      value=float(service.restarts))
        tails = list_divergent_tails(node.data_dir)
        watches = node.watches
        yield GaugeMetricFamily("hacluster_watches_open", "watches this node serves now",
                                value=watches.open)
        ended = CounterMetricFamily("hacluster_watches_ended", "watches the node ended, by "
                                    "reason (slow: the client stopped reading; else the "
                                    "status of the last line)", labels=["reason"])
        for reason, count in sorted(watches.ended.items()):
            ended.add_metric([reason], count)
        yield ended
        yield GaugeMetricFamily("hacluster_divergent_ops", "ops kept in divergent-tail files "
                                "(written by a former primary, not in the cluster's history)",
                                value=float(sum(int(t.get("ops") or 0) for t in tails)))
        control = node.control
        if control is not None:
            fo = CounterMetricFamily("hacluster_epoch_changes", "epoch changes this node saw, "
                                     "by reason", labels=["reason"])
            for reason, count in sorted(control.epoch_changes.items()):
                fo.add_metric([reason], float(count))
            yield fo
            yield CounterMetricFamily(
                "hacluster_failovers", "failovers (automatic or manual) this node saw",
                value=float(sum(n for r, n in control.epoch_changes.items()
                                if r in ("failover", "manual failover"))))
            raft = control.raft_status()
            for key, help_text in (("log_len", "entries in the Raft log"),
                                   ("term", "the Raft term"),
                                   ("commit_idx", "the Raft commit index")):
                if raft.get(key) is not None:
                    yield GaugeMetricFamily(f"hacluster_raft_{key}", help_text,
                                            value=float(raft[key]))
            yield CounterMetricFamily("hacluster_raft_compactions", "Raft log compactions",
                                      value=float(raft["compactions"]))
            yield CounterMetricFamily(
                "hacluster_raft_torn_records_truncated",
                "torn final Raft journal records cut at start (a power loss mid-append)",
                value=float(raft.get("torn_records_truncated") or 0))
            yield GaugeMetricFamily("hacluster_paused", "1 in maintenance mode",
                                    value=1.0 if control.state().paused else 0.0)
            drift = GaugeMetricFamily("hacluster_clock_drift", "how much faster (negative: "
                                      "slower) each peer's monotonic clock runs than this "
                                      "node's, as a fraction (0.05 = 5 %)", labels=["peer"])
            for peer, est in sorted(control.clocks.estimates.items()):
                if est.drift is not None:
                    drift.add_metric([peer], est.drift)
            yield drift
            yield GaugeMetricFamily("hacluster_clock_drift_beyond_bound", "peers whose clock "
                                    "rate differs from this node's by more than "
                                    "consensus.drift", value=float(len(control.clocks.beyond())))


class Metrics:
    def __init__(self, node: ServedNode) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
        self.requests = Histogram(
            "hacluster_http_request_seconds", "HTTP request latency by route",
            ["method", "route", "status"], buckets=BUCKETS, registry=self.registry)

    def middleware(self) -> Middleware:
        requests = self.requests
        # The histogram's child per (method, route, status): labels() validates and locks on
        # every call; this is a dict lookup. Bounded like the labels themselves (and capped).
        children: dict[tuple[str, str, int], Histogram] = {}

        @web.middleware
        async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
            # handle_then's logic, inline: no closure to build per request.
            start = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as exc:
                status = exc.status
                raise
            finally:
                resource = request.match_info.route.resource
                route = resource.canonical if resource else "unmatched"
                # The replication stream and ack channel live for hours; their duration is
                # not a latency.
                if route not in LONG_LIVED:
                    key = (request.method, route, status)
                    child = children.get(key)
                    if child is None:
                        child = requests.labels(request.method, route, str(status))
                        if len(children) < MAX_CACHED_CHILDREN:
                            children[key] = child
                    child.observe(time.perf_counter() - start)
        return timed

    def render(self) -> web.Response:
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

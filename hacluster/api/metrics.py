"""Prometheus metrics of one node: ``GET /metrics`` in the text exposition format.

Owns the node's registry: request latency histograms (observed by an aiohttp middleware, by
route template so label values stay bounded), the standard ``process_*`` and ``python_*``
collectors, and a collector that reads the node's state at scrape time — role, epoch, build,
applied seq, lag per replica (seqs and seconds), writes, failovers, fencing events, divergent
writes, bootstrap bytes, disk space, Raft log figures, peer clock drift. Names follow
Prometheus' naming guide: base units in the name, ``_total`` on counters. It must never change
node state (it only notes the newest seq in the seq-time records, as a write does), and never
label by anything unbounded (keys, client addresses, raw paths).
"""

from __future__ import annotations

import platform
import shutil
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from hacluster.api import probes
from hacluster.backup.metrics import backup_metrics
from hacluster.lineage.tails import list_divergent_tails
from hacluster.replication.positions import SeqTimes
from hacluster.role import VERSION
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
        # A replica's own record of when it heard of the primary's seqs, fed by each scrape:
        # its lag in seconds at the scrapes' resolution (the primary's record is per write).
        self.heard = SeqTimes()

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
        build = GaugeMetricFamily("hacluster_build_info", "always 1: the hacluster version "
                                  "and Python version of this process",
                                  labels=["version", "python"])
        build.add_metric([VERSION, platform.python_version()], 1.0)
        yield build
        yield from disk_space(node)
        yield from backup_metrics(node)
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
        yield CounterMetricFamily("hacluster_wal_syncs", "group-commit rounds: WAL syncs "
                                  "that acknowledgements waited for (storage.durability: "
                                  "fsync), each covering every write before it",
                                  value=node.wal_sync.syncs)
        lag = GaugeMetricFamily("hacluster_replication_lag_seqs", "sequence numbers a "
                                "replica is behind the primary (primary: each replica; "
                                "replica: itself, as its stream reports)", labels=["replica"])
        lag_s = GaugeMetricFamily("hacluster_replication_lag_seconds", "seconds since the "
                                  "primary wrote the first seq a replica lacks, 0 when it "
                                  "lacks none (primary: each replica; replica: itself)",
                                  labels=["replica"])
        follower = node.follower
        boot = CounterMetricFamily("hacluster_bootstrap_bytes", "bytes of checkpoint files "
                                   "this node downloaded")
        if node.is_primary:
            written = node.positions.written
            written.note(seq)         # a managed primary's writes are not noted per write
            for r in node.positions.snapshot(seq):
                lag.add_metric([str(r["name"])], float(r["lag"]))
                secs = written.lag_s(int(r["applied_seq"]), seq)
                if secs is not None:
                    lag_s.add_metric([str(r["name"])], secs)
        elif follower is not None:
            view = node.view(time.monotonic())
            behind = probes.lag(view)
            if behind is not None and view.primary_seq is not None:
                lag.add_metric([node.name], float(behind))
                self.heard.note(view.primary_seq)
                secs = self.heard.lag_s(view.primary_seq - behind, view.primary_seq)
                if secs is not None:
                    lag_s.add_metric([node.name], secs)
        yield lag
        yield lag_s
        boot.add_metric([], float(follower.status.bootstrap_bytes) if follower else 0.0)
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
            for key, name, help_text in (("log_len", "log_entries", "entries in the Raft log"),
                                         ("term", "term", "the Raft term"),
                                         ("commit_idx", "commit_index",
                                          "the Raft commit index")):
                if raft.get(key) is not None:
                    yield GaugeMetricFamily(f"hacluster_raft_{name}", help_text,
                                            value=float(raft[key]))
            yield CounterMetricFamily("hacluster_raft_compactions", "Raft log compactions",
                                      value=float(raft["compactions"]))
            yield CounterMetricFamily(
                "hacluster_raft_torn_records_truncated",
                "torn final Raft journal records cut at start (a power loss mid-append)",
                value=float(raft.get("torn_records_truncated") or 0))
            yield GaugeMetricFamily("hacluster_paused", "1 in maintenance mode",
                                    value=1.0 if control.state().paused else 0.0)
            drift = GaugeMetricFamily("hacluster_clock_drift_ratio", "how much faster (negative: "
                                      "slower) each peer's monotonic clock runs than this "
                                      "node's, as a fraction (0.05 = 5 %)", labels=["peer"])
            for peer, est in sorted(control.clocks.estimates.items()):
                if est.drift is not None:
                    drift.add_metric([peer], est.drift)
            yield drift
            yield GaugeMetricFamily("hacluster_clock_drift_beyond_bound", "peers whose clock "
                                    "rate differs from this node's by more than "
                                    "consensus.drift", value=float(len(control.clocks.beyond())))


def disk_space(node: ServedNode) -> Iterator[Metric]:
    """The data directory's file system: free and total bytes, and whether this node refuses
    writes (or, a replica, stops applying) for lack of space now."""
    try:
        usage = shutil.disk_usage(node.data_dir)
    except OSError:
        free = total = float("nan")        # no data directory (yet): unknown, not 0
    else:
        free, total = float(usage.free), float(usage.total)
    yield GaugeMetricFamily("hacluster_disk_free_bytes", "bytes free on the data "
                            "directory's file system (for unprivileged users)", value=free)
    yield GaugeMetricFamily("hacluster_disk_total_bytes", "size in bytes of the data "
                            "directory's file system", value=total)
    # Not every node the API serves has a space guard (the API's unit tests use a stand-in).
    space = getattr(node, "space", None)
    low = getattr(node, "disk_full", None) or (space.low if space is not None else None)
    yield GaugeMetricFamily("hacluster_disk_low", "1 while this node is below "
                            "storage.min_free_mb or RocksDB ran out of space: writes refused, "
                            "a replica stops applying", value=1.0 if low else 0.0)


class Metrics:
    def __init__(self, node: ServedNode) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
        # The collectors every Prometheus exporter has: process_* (CPU, memory, file
        # descriptors, start time), python_info, python_gc_*.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Histogram(
            "hacluster_http_request_duration_seconds", "HTTP request latency by route",
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

"""Failover benchmark: take the primary away under a steady write load, round after round.

A three-node consensus cluster of real processes. A client process writes unique keys, one PUT
at a time, to whichever node is primary, and records every acknowledgement (CLOCK_MONOTONIC
time, node, epoch, key). Each round waits for steady writes, takes the primary away, waits for
a new one, brings the old node back (it rejoins as a replica) and waits for it to follow.
Failover time (RTO) per round is the client's view: from the last acknowledgement by the old
primary to the first by the new one. At the end every acknowledged key is looked up in the
final primary's database (read after a clean stop).

Faults (``--fault``):

- ``kill`` (the default): SIGKILL of the primary's process, nodes on loopback. The kernel
  answers for the dead process: connections are reset, connects refused.
- ``isolate``: the primary's host vanishes (power off, cable pulled): every node runs in its
  own network namespace on a bridge, and the primary's link is taken down. Nothing answers,
  nothing is reset: every peer and client must notice by itself. Needs root.

The client follows the rule of docs/operations.md ("Clients and a vanished primary"): connect
within ``lease_s``; a request still unanswered after ``lease_s / 2`` makes it ask the other
nodes' ``/leader`` every 0.1 s, and it gives the request up (outcome unknown; the same key is
retried, a PUT of the same value is idempotent) as soon as one of them no longer names that
node in that epoch as leader. So it never waits on a vanished primary much past the lease.

In sync mode (the default) no acknowledged write may be lost; with ``--mode async`` writes
acknowledged but not yet shipped when the primary dies are lost and must all be found in
divergent-tail files. Both are counted, not hidden. ``--timeline`` prints, per round, when each
node's log shows the steps of the failover (from the nodes' logs, relative to the fault).

``--json`` prints one JSON object as the last line; ``--quick`` runs 3 rounds. The exit status
is 1 when a goal is missed (each one missed is printed): RTO p50 <= 1.2 s and p99 <= 2 s, no
acknowledged write lost in sync mode, none lost unreported in async mode.

``--managed``: the same rounds against a managed cluster running examples/kvservice, written
through the service's own API; see bench/failover_managed.py for what it measures and its goals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacluster.config import ConsensusConfig
from hacluster.testing.harness import TOKEN, Cluster, NodeProc, read_db, wait_for
from hacluster.testing.netns import Netns, namespaces_unavailable

GOAL_P50_S = 1.2
GOAL_P99_S = 2.0
LEADER_POLL_S = 0.1      # how often a client re-asks /leader while it waits
ANSWER_GRACE_S = 0.05    # once one node answered /leader, how long the others get
# Longest a live primary may take to answer a write: replication.sync_timeout_s (5 s by
# default) plus slack. Only a primary the other nodes still follow is waited on this long.
REQUEST_CAP_S = 10.0


# -- the client (its own process) ------------------------------------------------------------

@dataclass
class Target:
    name: str
    epoch: int


class LoadClient:
    """One writer following the client rule: see the module docstring."""

    def __init__(self, urls: dict[str, str], lease_s: float) -> None:
        self.urls = urls
        self.lease_s = lease_s
        self.headers = {"Authorization": f"Bearer {TOKEN}"}
        self.acks: list[tuple[float, str, int, str]] = []
        self.failed: list[tuple[float, float, str]] = []   # (start, seconds, why)
        self.ok_latency: list[float] = []
        self.abandoned = 0

    async def _leader_of(self, session: aiohttp.ClientSession, name: str
                         ) -> tuple[str | None, int] | None:
        """What ``name`` says about the leader: (leader or None, epoch); None: no answer."""
        try:
            async with session.get(f"{self.urls[name]}/leader",
                                   timeout=aiohttp.ClientTimeout(total=self.lease_s)) as resp:
                doc = await resp.json(content_type=None)
                return doc.get("leader"), int(doc.get("epoch") or 0)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    async def find_leader(self, session: aiohttp.ClientSession, stop: Any,
                          gone: Target | None = None) -> Target | None:
        """Ask every node at once and take the highest epoch that names a leader. Answers
        come in milliseconds from the nodes that are there: once one came, the others get
        ``ANSWER_GRACE_S`` more, so a vanished node is never waited for. An answer that only
        names ``gone`` again (the primary just given up on, still named by a node that has not
        seen the change) is taken only after a quarter second without anything newer."""
        floor = gone.epoch if gone is not None else -1
        first_asked = time.monotonic()
        while not stop.is_set():
            best: Target | None = None
            for answer in await self._ask(session, list(self.urls)):
                if answer[0] in self.urls and (best is None or answer[1] > best.epoch):
                    best = Target(str(answer[0]), answer[1])
            if best is not None and (best.epoch > floor
                                     or time.monotonic() - first_asked > 0.25):
                return best
            await asyncio.sleep(0.02)
        return None

    async def _still_leader(self, session: aiohttp.ClientSession, target: Target) -> bool:
        """Does every other node that answers still name ``target`` (same epoch) as leader?"""
        answers = await self._ask(session, [n for n in self.urls if n != target.name])
        return all(a == (target.name, target.epoch) for a in answers)

    async def _ask(self, session: aiohttp.ClientSession, names: list[str]
                   ) -> list[tuple[str | None, int]]:
        """``/leader`` of every node in ``names`` at once: the answers that came. Once one
        came, the others get ``ANSWER_GRACE_S`` more, so a vanished node is never waited for."""
        tasks = [asyncio.ensure_future(self._leader_of(session, n)) for n in names]
        done, pending = await asyncio.wait(tasks, timeout=min(0.25, self.lease_s),
                                           return_when=asyncio.FIRST_COMPLETED)
        if pending and done:
            more, pending = await asyncio.wait(pending, timeout=ANSWER_GRACE_S)
            done |= more
        for task in pending:
            task.cancel()
        return [a for a in (t.result() for t in done) if a is not None]

    async def put(self, session: aiohttp.ClientSession, target: Target, key: str
                  ) -> tuple[int | None, str]:
        """One PUT to ``target``: (epoch acknowledged, "") or (None, why it failed)."""
        async def send() -> tuple[int | None, str]:
            async with session.put(f"{self.urls[target.name]}/v1/kv/{key}", data=b"x" * 100,
                                   headers=self.headers) as resp:
                body = await resp.read()
                if resp.status == 200:
                    return int(json.loads(body)["epoch"]), ""
                try:
                    error = str(json.loads(body).get("error", ""))[:60]
                except (ValueError, AttributeError):
                    error = ""
                return None, f"HTTP {resp.status} {error}".strip()

        task = asyncio.ensure_future(send())
        started = time.monotonic()
        try:
            # Wait half a lease; after that, a primary the others no longer follow is gone
            # (or overtaken) and its answer, if any, could only be "outcome unknown".
            wait = self.lease_s / 2
            while True:
                done, _ = await asyncio.wait({task}, timeout=wait)
                if done:
                    return task.result()
                if time.monotonic() - started > REQUEST_CAP_S:
                    return None, "no answer within the request cap"
                if not await self._still_leader(session, target):
                    self.abandoned += 1
                    return None, f"abandoned: the others no longer follow {target.name}"
                wait = LEADER_POLL_S
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError) as exc:
            return None, type(exc).__name__
        finally:
            if not task.done():
                task.cancel()

    async def run(self, stop: Any, ready: Any) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.lease_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            target: Target | None = None
            gone: Target | None = None
            i = 0
            while not stop.is_set():
                if target is None:
                    target = await self.find_leader(session, stop, gone)
                    if target is None:
                        break
                key = f"k{i:08d}"
                started = time.monotonic()
                epoch, why = await self.put(session, target, key)
                took = time.monotonic() - started
                if epoch is not None:
                    self.acks.append((time.monotonic(), target.name, epoch, key))
                    ready.set()
                    self.ok_latency.append(took)
                    target.epoch = max(target.epoch, epoch)
                    i += 1
                else:
                    self.failed.append((started, took, why))
                    gone, target = target, None


def _client(urls: dict[str, str], lease_s: float, stop: Any, ready: Any, out: Any) -> None:
    client = LoadClient(urls, lease_s)
    asyncio.run(client.run(stop, ready))
    out.put({"acks": client.acks, "failed": client.failed, "ok_latency": client.ok_latency,
             "abandoned": client.abandoned})


# -- the faults ---------------------------------------------------------------------------

# The config's defaults, not the test harness's faster ones: figures for a production config.
REPLICATION = {"heartbeat_interval": 0.5, "reconnect_backoff_min": 0.1,
               "reconnect_backoff_max": 5.0}


class Kill:
    name = "kill"
    hold_s = 0.0        # how long the node stays away at least (it restarts at once)

    def __init__(self, root: Path, mode: str, timing: dict[str, Any]) -> None:
        self.cluster = Cluster(root, consensus=True, consensus_timing=timing,
                               replication={**REPLICATION, "mode": mode})

    def up(self) -> None:
        self.cluster.start()

    def urls(self) -> dict[str, str]:
        return {n.name: f"http://{n.host}:{n.port}" for n in self.cluster.nodes.values()}

    def inject(self, node: NodeProc) -> None:
        node.signal(signal.SIGKILL)
        node.proc.wait(10)  # type: ignore[union-attr]

    def heal(self, node: NodeProc) -> None:
        node.start()

    def down(self) -> None:
        self.cluster.stop()


class Isolate(Kill):
    """Each node in its own namespace; the fault takes the primary's link down."""

    name = "isolate"
    hold_s = 2.0

    def __init__(self, root: Path, mode: str, timing: dict[str, Any]) -> None:
        self.net = Netns(["n1", "n2", "n3"])
        self.cluster = Cluster(root, consensus=True, consensus_timing=timing,
                               replication={**REPLICATION, "mode": mode}, hosts=self.net.ip,
                               prefixes={n: self.net.prefix(n) for n in self.net.ns})

    def up(self) -> None:
        self.net.up()
        self.cluster.start()

    def inject(self, node: NodeProc) -> None:
        self.net.cut(node.name)

    def heal(self, node: NodeProc) -> None:
        self.net.heal(node.name)

    def down(self) -> None:
        try:
            self.net.heal_all()
            self.cluster.stop()
        finally:
            self.net.down()


# -- the timeline from the nodes' logs ----------------------------------------------------

STEPS = [   # (label, pattern in a log line): the first match after the fault, per node
    ("raft leader", re.compile(r"Raft leader is now (\S+)")),
    ("lease expired", re.compile(r"lease expired")),
    ("promoting", re.compile(r": promoting, epoch")),
    ("promoted", re.compile(r": promoted, epoch")),
    ("is primary", re.compile(r" is primary: epoch")),
    ("service started", re.compile(r"service started as primary")),
    ("follows new", re.compile(r": following (\S+) \(epoch")),
    ("stream lost", re.compile(r"cannot stream from|replication stopped")),
    ("streaming", re.compile(r": streaming from")),
    ("sync set", re.compile(r"synchronous set is now")),
]
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def timeline(nodes: list[NodeProc], start_wall: float, end_wall: float) -> list[str]:
    """The steps each node logged between the fault and ``end_wall``, in time order."""
    events: list[tuple[float, str]] = []
    for node in nodes:
        seen: set[str] = set()
        for line in node.log().splitlines():
            m = LOG_TIME.match(line)
            if m is None:
                continue
            at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if not start_wall - 0.2 <= at <= end_wall:
                continue
            for label, pattern in STEPS:
                if label not in seen and pattern.search(line):
                    seen.add(label)
                    events.append((at - start_wall, f"{node.name} {label}: "
                                   f"{line[m.end():].split(': ', 1)[-1][:110]}"))
    return [f"  {t:+7.3f} s  {what}" for t, what in sorted(events)]


# -- the run ------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def goals_missed(report: dict[str, Any]) -> list[str]:
    """Each goal this run missed, as a sentence (empty: all met)."""
    missed = []
    if report["rounds"] == 0:
        return ["no round measured a failover"]
    if report["rto_p50_s"] > GOAL_P50_S:
        missed.append(f"RTO p50 {report['rto_p50_s']} s > {GOAL_P50_S} s")
    if report["rto_p99_s"] > GOAL_P99_S:
        missed.append(f"RTO p99 {report['rto_p99_s']} s > {GOAL_P99_S} s")
    if report["mode"] == "sync" and report["lost_acked"]:
        missed.append(f"{report['lost_acked']} acknowledged writes lost in sync mode")
    if report["lost_unreported"]:
        missed.append(f"{report['lost_unreported']} lost writes in no divergent-tail file")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, help="failovers to cause (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--fault", choices=["kill", "isolate"], default="kill",
                        help="kill: SIGKILL the primary (default); isolate: take its network "
                             "link down (network namespaces, root)")
    parser.add_argument("--mode", choices=["sync", "async"], default="sync",
                        help="replication.mode (default sync)")
    parser.add_argument("--lease", type=float, help="consensus.lease_s (default: config default)")
    parser.add_argument("--renew", type=float, help="consensus.renew_interval_s")
    parser.add_argument("--timeline", action="store_true",
                        help="print each round's steps from the nodes' logs")
    parser.add_argument("--managed", action="store_true",
                        help="managed mode: examples/kvservice under hacluster, written through "
                             "its own API (bench/failover_managed.py; --fault kill only)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 20)
    if args.managed:
        if args.fault != "kill":
            print("--managed: only --fault kill is supported", file=sys.stderr)
            return 2
        from bench.failover_managed import run_managed
        return run_managed(args, rounds, REPLICATION, timeline)
    if args.fault == "isolate" and (why := namespaces_unavailable()):
        print(f"--fault isolate: {why}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="hacluster-failover-"))
    timing_args = {k: v for k, v in (("lease_s", args.lease), ("renew_interval_s", args.renew))
                   if v is not None}
    lease_s = args.lease or ConsensusConfig().lease_s
    fault: Kill = (Isolate if args.fault == "isolate" else Kill)(root, args.mode, timing_args)
    cluster = fault.cluster
    timing = cluster.config_doc()["consensus"] or {}
    ctx = mp.get_context("spawn")
    stop, ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
    rtos: list[float] = []
    faults: list[tuple[float, str, int]] = []
    result: dict[str, Any] = {}
    try:
        fault.up()
        primary = cluster.wait_primary(30)
        client = ctx.Process(target=_client, args=(fault.urls(), lease_s, stop, ready, out))
        client.start()
        if not ready.wait(60):
            raise RuntimeError("the client acknowledged no write within 60 s")
        for r in range(rounds):
            time.sleep(1.0)  # steady writes
            epoch = primary.status()["epoch"]
            wall = time.time()
            fault.inject(primary)
            at = time.monotonic()
            faults.append((at, primary.name, epoch))
            survivors = [n for n in cluster.nodes.values() if n is not primary]
            new = cluster.wait_primary(30, among=survivors)
            server_s = time.monotonic() - at
            # A vanished host stays away a while (the soak holds it 1.5-4 s): clients and
            # peers must give up on it by themselves, not be rescued by its return.
            time.sleep(max(0.0, at + fault.hold_s - time.monotonic()))
            fault.heal(primary)
            wait_for(lambda p=primary, n=new: p.status()["primary"] == n.name, 30,
                     "the old primary to rejoin")
            print(f"round {r + 1}: {args.fault} {primary.name} (epoch {epoch}); {new.name} is "
                  f"primary after {server_s:.2f} s (server view)", flush=True)
            if args.timeline:
                print("\n".join(timeline(list(cluster.nodes.values()), wall, wall + 5.0)),
                      flush=True)
            primary = new
        time.sleep(1.0)
        stop.set()
        result = out.get(timeout=60)
        client.join(10)
        cluster.wait_converged(timeout=60)
    finally:
        stop.set()
        fault.down()
    acks = result["acks"]
    for r, (at, name, epoch) in enumerate(faults):
        old = [t for t, n, e, _ in acks if n == name and e == epoch and t <= at]
        new = [t for t, _, e, _ in acks if e > epoch]
        if old and new:
            rtos.append(min(new) - max(old))
            print(f"round {r + 1}: RTO {rtos[-1]:.3f} s (last ack {at - max(old):.3f} s "
                  f"before the fault, first new one {min(new) - at:.3f} s after)")
    _, contents = read_db(cluster.primary.data_dir / "db")
    stored = contents["default"]
    lost = [k for _, _, _, k in acks if k.encode() not in stored]
    # Every write lost in async mode must be in some node's divergent-tail file.
    kept: set[str] = set()
    for node in cluster.nodes.values():
        for path in (node.data_dir / "divergent").glob("*.cbor"):
            with open(path, "rb") as f:
                doc = cbor2.load(f)
            kept.update(op[2].decode() for b in doc["batches"] for op in b["ops"])
    unreported = [k for k in lost if k not in kept]
    failed = result["failed"]
    reasons = Counter(why for _, _, why in failed)
    waits = [took for _, took, _ in failed]
    ok = result["ok_latency"]
    report = {
        "rounds": len(rtos),
        "rto_p50_s": round(statistics.median(rtos), 3) if rtos else None,
        "rto_p99_s": round(percentile(rtos, 0.99), 3) if rtos else None,
        "rto_max_s": round(max(rtos), 3) if rtos else None,
        "lost_acked": len(lost), "lost_unreported": len(unreported),
        "mode": args.mode, "fault": args.fault, "quick": bool(args.quick),
        "acked": len(acks), "errors": len(failed), "abandoned": result["abandoned"],
        # Latency of acknowledged writes, and apart from them how long failed ones waited.
        "ok_p50_ms": round(statistics.median(ok) * 1000, 1) if ok else None,
        "ok_p99_ms": round(percentile(ok, 0.99) * 1000, 1) if ok else None,
        "failed_wait_max_s": round(max(waits), 3) if waits else 0.0,
        "lease_s": lease_s,
    }
    print(f"\n{len(acks):,} writes acknowledged, {len(failed):,} failed ({result['abandoned']} "
          f"given up on a primary the others no longer followed); the longest failed request "
          f"waited {report['failed_wait_max_s']:.3f} s; timing: "
          f"{json.dumps(timing) if timing else 'consensus defaults'}")
    if rtos:
        print(f"failover ({args.fault}; client view, last ack on the old primary -> first on "
              f"the new one) over {len(rtos)} rounds: p50 {report['rto_p50_s']:.3f} s, p99 "
              f"{report['rto_p99_s']:.3f} s, max {report['rto_max_s']:.3f} s (goal p50 <= "
              f"{GOAL_P50_S} s, p99 <= {GOAL_P99_S} s)")
    print(f"acknowledged writes lost: {len(lost)} (mode {report['mode']}), of which "
          f"{len(unreported)} are in no divergent-tail file")
    if reasons:
        print("failed requests: " + ", ".join(f"{n} x {why}" for why, n in reasons.most_common(6)))
    missed = goals_missed(report)
    for why in missed:
        print(f"GOAL MISSED: {why}")
    if args.json:
        print(json.dumps(report))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Failover benchmark in managed mode (``bench/failover.py --managed``).

A three-node consensus cluster of real processes; every node runs examples/kvservice under
hacluster (``application:``, its own service port, ``KVSERVICE_WAIT=1``: the service answers
200 only once hacluster's ``/v1/wait`` said the write is held). A writer process asks the
nodes' ``/leader`` which node is primary and writes unique keys through *that node's service*
(``PUT /kv/{key}``), one at a time; a write counts as acknowledged only on a 200. Each round
waits for steady writes, SIGKILLs the primary node's hacluster process (its service dies with
it: ``PR_SET_PDEATHSIG``), and measures:

- RTO: from the kill to the first 200 from the new primary's service (it includes the
  service's own start);
- the service's start: from the new primary's promotion to its service answering ``/health``.
  The promotion time is the timestamp of the node's log line ``<node> is primary: epoch N``
  (written just before the gate opens and the service is started). ``/status``
  ``service.since`` is not used: it is the time of the service's *last* state change, which
  is "running" (after the health check passed) by the time it can be read, not the promotion;
- then every key acknowledged so far is read back from the new primary's service: a key
  missing or with another value is an acknowledged write lost.

The killed node is restarted, and the round ends once it follows the new primary and caught
up. Goals: ``rto_minus_service_start_p99_s`` <= 2.0 (RTO p99 within 2 s plus the service's own
start) and, in sync mode, no acknowledged write lost.
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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from hacluster.config import ConsensusConfig
from hacluster.testing.harness import TOKEN, Cluster, NodeProc, free_ports, request, wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "kvservice" / "service.py"
GOAL_RTO_MINUS_START_P99_S = 2.0
LEASE_FREEZE = re.compile(r"with no renewal: service frozen \(SIGSTOP\)")
PROMOTED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .* is primary: epoch (\d+)")


# -- the writer (its own process) ------------------------------------------------------------

async def _leader(session: aiohttp.ClientSession, urls: dict[str, str]) -> str | None:
    """The leader named in the highest epoch by the nodes that answer within 0.25 s."""
    async def ask(url: str) -> tuple[str | None, int] | None:
        try:
            async with session.get(f"{url}/leader",
                                   timeout=aiohttp.ClientTimeout(total=0.25)) as resp:
                doc = await resp.json(content_type=None)
                return doc.get("leader"), int(doc.get("epoch") or 0)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None

    answers = [a for a in await asyncio.gather(*(ask(u) for u in urls.values()))
               if a is not None and a[0] in urls]
    return max(answers, key=lambda a: a[1])[0] if answers else None


async def _write_loop(urls: dict[str, str], ports: dict[str, int], acks_path: str,
                      stop: Any, ready: Any) -> dict[str, Any]:
    failed: Counter[str] = Counter()
    ok_latency: list[float] = []
    timeout = aiohttp.ClientTimeout(total=15, sock_connect=1.0)
    with open(acks_path, "a") as acks:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            i, target = 0, None
            while not stop.is_set():
                if target is None:
                    target = await _leader(session, urls)
                    if target is None:
                        await asyncio.sleep(0.02)
                        continue
                key = f"k{i:08d}"
                started = time.monotonic()
                try:
                    async with session.put(f"http://127.0.0.1:{ports[target]}/kv/{key}",
                                           data=f"value-{key}".encode()) as resp:
                        await resp.read()
                        why = "" if resp.status == 200 else f"HTTP {resp.status}"
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    why = type(exc).__name__
                if not why:
                    acks.write(f"{time.monotonic():.6f} {target} {key}\n")
                    acks.flush()
                    ok_latency.append(time.monotonic() - started)
                    ready.set()
                    i += 1
                    continue
                failed[why] += 1
                target = None
                await asyncio.sleep(0.01)
    return {"failed": dict(failed), "ok_latency": ok_latency}


def _writer(urls: dict[str, str], ports: dict[str, int], acks_path: str, stop: Any,
            ready: Any, out: Any) -> None:
    out.put(asyncio.run(_write_loop(urls, ports, acks_path, stop, ready)))


def read_acks(path: Path) -> list[tuple[float, str, str]]:
    """(monotonic time, node, key) of every acknowledged write so far."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((float(parts[0]), parts[1], parts[2]))
    return rows


# -- the cluster ------------------------------------------------------------------------------

def managed_cluster(root: Path, mode: str, replication: dict[str, Any],
                    timing: dict[str, Any]) -> tuple[Cluster, dict[str, int]]:
    names = ("n1", "n2", "n3")
    ports = dict(zip(names, free_ports(3), strict=True))

    def per_node(name: str) -> dict[str, Any]:
        return {"application": {
            "db_path": str(root / "svc" / "{node}" / "db"),
            "primary_command": [sys.executable, str(EXAMPLE)],
            "stop_timeout_s": 5, "start_timeout_s": 30, "health_interval_s": 0.1,
            "health_url": f"http://127.0.0.1:{ports[name]}/health",
            "env": {"KVSERVICE_PORT": str(ports[name]), "KVSERVICE_WAIT": "1",
                    "KVSERVICE_TOKEN": TOKEN, "KVSERVICE_WAIT_TIMEOUT_MS": "5000"},
        }}

    for name in names:
        (root / "svc" / name).mkdir(parents=True, exist_ok=True)
    cluster = Cluster(root, names, consensus=True, consensus_timing=timing,
                      replication={**replication, "mode": mode}, node_extra=per_node)
    return cluster, ports


def service_up(port: int) -> bool:
    try:
        return request(port, "GET", "/health", token=None, timeout=1).status == 200
    except OSError:
        return False


def first_health(ports: dict[str, int], names: list[str], timeout: float) -> tuple[str, float]:
    """Poll the services of ``names`` every 5 ms: (the first to answer /health, wall time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name in names:
            if service_up(ports[name]):
                return name, time.time()
        time.sleep(0.005)
    raise RuntimeError(f"no service answered /health within {timeout} s of the kill")


def promoted_at(node: NodeProc, above_epoch: int) -> float | None:
    """Wall time of the node's first "is primary: epoch N" line with N > ``above_epoch``."""
    for line in node.log().splitlines():
        m = PROMOTED.match(line)
        if m and int(m.group(2)) > above_epoch:
            return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


async def _check(port: int, keys: list[str]) -> tuple[list[str], list[str]]:
    """(keys the service at ``port`` does not return with the value written, keys it did not
    answer for: it is down, e.g. stopped by its node's lease watch)."""
    sem = asyncio.Semaphore(16)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def missing(key: str) -> bool | None:
            try:
                async with sem, session.get(f"http://127.0.0.1:{port}/kv/{key}") as resp:
                    return resp.status != 200 or await resp.read() != f"value-{key}".encode()
            except (aiohttp.ClientError, TimeoutError, OSError):
                return None
        found = await asyncio.gather(*(missing(k) for k in keys))
    return ([k for k, gone in zip(keys, found, strict=True) if gone],
            [k for k, gone in zip(keys, found, strict=True) if gone is None])


def lost_keys(port: int, keys: list[str], timeout: float = 60.0) -> tuple[list[str], list[str]]:
    """(lost, unverified): keys the service did not answer for are asked again once it is up,
    until ``timeout``."""
    deadline = time.monotonic() + timeout
    lost, left = asyncio.run(_check(port, keys))
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        if service_up(port):
            more, left = asyncio.run(_check(port, left))
            lost += more
    return lost, left


# -- the run ----------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def goals_missed(report: dict[str, Any]) -> list[str]:
    """Each goal of a managed run it missed, as a sentence (empty: all met)."""
    if report["rounds"] == 0:
        return ["no round measured a failover"]
    missed = []
    if report["rto_minus_service_start_p99_s"] > GOAL_RTO_MINUS_START_P99_S:
        missed.append(f"RTO minus the service's start p99 "
                      f"{report['rto_minus_service_start_p99_s']} s > "
                      f"{GOAL_RTO_MINUS_START_P99_S} s")
    if report["mode"] == "sync" and report["lost_acked"]:
        missed.append(f"{report['lost_acked']} acknowledged writes lost in sync mode")
    if report["unverified_acked"]:
        missed.append(f"{report['unverified_acked']} acknowledged writes could not be read "
                      "back (the service did not answer)")
    return missed


def run_managed(args: argparse.Namespace, rounds: int, replication: dict[str, Any],
                timeline: Callable[[list[NodeProc], float, float], list[str]]) -> int:
    root = Path(tempfile.mkdtemp(prefix="hacluster-failover-managed-"))
    timing = {k: v for k, v in (("lease_s", args.lease), ("renew_interval_s", args.renew))
              if v is not None}
    lease_s = args.lease or ConsensusConfig().lease_s
    cluster, ports = managed_cluster(root, args.mode, replication, timing)
    urls = {n.name: f"http://{n.host}:{n.port}" for n in cluster.nodes.values()}
    acks_path = root / "acks.txt"
    acks_path.touch()
    ctx = mp.get_context("spawn")
    stop, ready, out = ctx.Event(), ctx.Event(), ctx.Queue()
    rtos: list[float] = []
    starts: list[float] = []
    lost: set[str] = set()
    unverified: set[str] = set()
    result: dict[str, Any] = {"failed": {}, "ok_latency": []}
    began = time.monotonic()
    try:
        cluster.start()
        primary = wait_for(lambda: (p := cluster.writable_primary()) is not None
                           and service_up(ports[p.name]) and p, 60,
                           "a primary with its service up")
        client = ctx.Process(target=_writer,
                             args=(urls, ports, str(acks_path), stop, ready, out))
        client.start()
        if not ready.wait(60):
            raise RuntimeError("the writer had no write acknowledged within 60 s")
        for r in range(rounds):
            time.sleep(1.0)  # steady writes
            epoch = primary.status()["epoch"]
            wall = time.time()
            primary.signal(signal.SIGKILL)   # SIGKILL: the service dies with its hacluster
            at = time.monotonic()
            primary.proc.wait(10)  # type: ignore[union-attr]
            survivors = [n for n in cluster.nodes.values() if n is not primary]
            name, healthy_wall = first_health(ports, [n.name for n in survivors], 60)
            new = cluster.nodes[name]
            first = wait_for(lambda n=new.name, a=at: next(
                (t for t, node, _ in read_acks(acks_path) if node == n and t > a), None),
                30, f"a write acknowledged by {name}'s service")
            rtos.append(first - at)
            promoted = promoted_at(new, epoch)
            start_s = healthy_wall - promoted if promoted is not None else float("nan")
            starts.append(start_s)
            keys = [k for _, _, k in read_acks(acks_path)]
            missing, unchecked = lost_keys(ports[name], keys)
            lost.update(missing)
            unverified.update(unchecked)
            print(f"round {r + 1}: kill {primary.name} (epoch {epoch}); {name}'s service "
                  f"acknowledged after {rtos[-1]:.3f} s (service start {start_s:.3f} s); "
                  f"{len(keys)} acknowledged keys checked, {len(missing)} missing"
                  + (f", {len(unchecked)} unanswered" if unchecked else ""), flush=True)
            if args.timeline:
                print("\n".join(timeline(list(cluster.nodes.values()), wall, wall + 5.0)),
                      flush=True)
            cluster.primary_name = name
            primary.start()
            seq = new.status()["applied_seq"]
            wait_for(lambda p=primary, n=new, s=seq: (st := p.status())["primary"] == n.name
                     and (st.get("applied_seq") or 0) >= s, 60,
                     "the old primary to rejoin and catch up")
            primary = new
        stop.set()
        result = out.get(timeout=60)
        client.join(10)
    finally:
        stop.set()
        cluster.stop()
    acks = read_acks(acks_path)
    ok = result["ok_latency"]
    errors = sum(result["failed"].values())
    valid = [(rto, s) for rto, s in zip(rtos, starts, strict=True) if s == s]   # not NaN
    minus = [rto - s for rto, s in valid]
    report = {
        "rounds": len(rtos),
        "rto_p50_s": round(statistics.median(rtos), 3) if rtos else None,
        "rto_p99_s": round(percentile(rtos, 0.99), 3) if rtos else None,
        "rto_max_s": round(max(rtos), 3) if rtos else None,
        "service_start_p50_s": round(statistics.median(s for _, s in valid), 3)
        if valid else None,
        "service_start_max_s": round(max(s for _, s in valid), 3) if valid else None,
        "rto_minus_service_start_p99_s": round(percentile(minus, 0.99), 3) if minus else None,
        "lost_acked": len(lost), "unverified_acked": len(unverified - lost),
        # The lease watch freezing a primary's service for want of a renewal (thawed when a
        # late one came): each one a pause of the service, not a restart.
        "service_lease_freezes": sum(len(LEASE_FREEZE.findall(n.log()))
                                     for n in cluster.nodes.values()),
        "mode": args.mode, "fault": "kill", "managed": True,
        "quick": bool(args.quick), "acked": len(acks), "errors": errors,
        "ok_p50_ms": round(statistics.median(ok) * 1000, 1) if ok else None,
        "ok_p99_ms": round(percentile(ok, 0.99) * 1000, 1) if ok else None,
        "promotion_time_from": "log line 'is primary: epoch'", "lease_s": lease_s,
        "elapsed_s": round(time.monotonic() - began, 1),
    }
    if len(valid) < len(rtos):
        report["rounds_without_promotion_line"] = len(rtos) - len(valid)
    print(f"\n{len(acks):,} writes acknowledged by the service (200 after /v1/wait), {errors:,} "
          f"failed: " + ", ".join(f"{n} x {why}" for why, n in
                                  Counter(result["failed"]).most_common(5)))
    if rtos:
        print(f"failover (managed; SIGKILL of the primary's hacluster -> first 200 from the new "
              f"primary's service) over {len(rtos)} rounds: p50 {report['rto_p50_s']} s, p99 "
              f"{report['rto_p99_s']} s, max {report['rto_max_s']} s; the service's start "
              f"(promotion -> /health) p50 {report['service_start_p50_s']} s; RTO minus it "
              f"p99 {report['rto_minus_service_start_p99_s']} s "
              f"(goal <= {GOAL_RTO_MINUS_START_P99_S} s)")
    print(f"acknowledged writes lost: {len(lost)} (mode {args.mode})")
    missed = goals_missed(report)
    for why in missed:
        print(f"GOAL MISSED: {why}")
    if args.json:
        print(json.dumps(report))
    return 1 if missed else 0

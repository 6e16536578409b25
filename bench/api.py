"""API write-path benchmark: what applications see, against a real three-node cluster.

For each replication mode (sync, then async) a fresh three-node consensus cluster runs on
loopback. A load process (its own interpreter, asyncio + aiohttp, keep-alive connections) runs
32 concurrent clients, each sending single-key PUTs to the primary one after another; it records
every latency. Then the same clients send ``POST /v1/batch`` with 100 ops per request (sync
mode). The ceiling is measured in the same run: raw local rocksdict puts in this process, and
the idle RSS of a node process.

A third cluster runs sync mode with ``storage.durability: os_buffer`` (acknowledged once in the
page cache), to show what the default ``fsync`` (acknowledged once on disk, group commit) costs.
A fourth runs sync mode with TLS on every channel (https for the clients' keep-alive
connections, mutual TLS between the nodes), to show what TLS costs.

Printed as figures and as ratios against the same run's baselines: sync/async throughput (goal
>= 0.5), sync p99 / async p99 (goal <= 2), fsync/os_buffer throughput (goal >= 0.5), TLS/plain
sync throughput (goal >= 0.8), idle RSS (goal <= 80 MB). ``--json`` prints one JSON
object as the last line; ``--quick`` shortens every phase so the run ends within 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2
import psutil
import rocksdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacluster.security import certs
from hacluster.testing.harness import TOKEN, Cluster, wait_for

CLIENTS = 32


def _load(port: int, seconds: float, clients: int, batch: int, prefix: str, out: Any,
          ca_file: str | None = None) -> None:
    """Runs in its own process: ``clients`` loops of PUT (or batch) for ``seconds`` (over
    https, verifying the node against ``ca_file``, when one is given)."""
    import ssl

    import aiohttp

    async def main() -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        headers = {"Authorization": f"Bearer {TOKEN}"}
        url = f"{'https' if ca_file else 'http'}://127.0.0.1:{port}"
        tls = ssl.create_default_context(cafile=ca_file) if ca_file else None
        # Keep-alive connections: the handshake is paid once per client, as by a real pool.
        connector = aiohttp.TCPConnector(limit=clients, ssl=tls if tls else True)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            end = time.monotonic() + seconds

            async def one(c: int) -> None:
                nonlocal errors
                i = 0
                while time.monotonic() < end:
                    key = f"{prefix}{c:02d}-{i:08d}"
                    i += 1
                    start = time.perf_counter()
                    if batch:
                        body = cbor2.dumps({"ops": [
                            {"op": "put", "key": f"{key}-{j:03d}", "value": b"v" * 100}
                            for j in range(batch)]})
                        req = session.post(f"{url}/v1/batch", data=body,
                                           headers={"Content-Type": "application/cbor"})
                    else:
                        req = session.put(f"{url}/v1/kv/{key}", data=b"v" * 100)
                    async with req as resp:
                        await resp.read()
                        ok = resp.status == 200
                    if ok:
                        latencies.append(time.perf_counter() - start)
                    else:
                        errors += 1

            started = time.monotonic()
            await asyncio.gather(*(one(c) for c in range(clients)))
            took = time.monotonic() - started
        return {"latencies": latencies, "errors": errors, "seconds": took}

    out.put(asyncio.run(main()))


def run_load(port: int, seconds: float, batch: int, prefix: str,
             ca_file: str | None = None) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_load, args=(port, seconds, CLIENTS, batch, prefix, q, ca_file))
    p.start()
    result = q.get(timeout=seconds + 120)
    p.join(30)
    lat = sorted(result["latencies"])
    if not lat:
        raise RuntimeError(f"no request succeeded ({result['errors']} errors)")
    per_request = len(lat) / result["seconds"]
    return {"rate": per_request * (batch or 1), "requests_s": per_request,
            "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "errors": result["errors"]}


def raw_put_rate(root: Path, seconds: float) -> float:
    db = rocksdict.Rdict(str(root / "raw"), rocksdict.Options(raw_mode=True))
    n, end = 0, time.perf_counter() + seconds
    value = b"v" * 100
    start = time.perf_counter()
    while time.perf_counter() < end:
        for _ in range(1000):
            db.put(f"k{n:010d}".encode(), value)
            n += 1
    rate = n / (time.perf_counter() - start)
    db.close()
    return rate


def make_pki(root: Path) -> dict[str, Any]:
    """A CA and one certificate per node; the cluster's ``tls`` section (mutual TLS)."""
    pki = root / "pki"
    certs.init_ca(pki, cluster="bench")
    for name in ("n1", "n2", "n3"):
        certs.issue(pki, name, hosts=["127.0.0.1"])
    return {"cert_file": str(pki / "{node}.crt"), "key_file": str(pki / "{node}.key"),
            "ca_file": str(pki / "ca.crt"), "peer_client_auth": True}


def cluster_phase(root: Path, mode: str, seconds: float, with_batch: bool,
                  log: Any, durability: str = "fsync",
                  tls: dict[str, Any] | None = None) -> dict[str, Any]:
    label = durability + ("-tls" if tls else "")
    cluster = Cluster(root / f"{mode}-{label}", consensus=True, tls=tls,
                      replication={"mode": mode}, storage={"durability": durability})
    log = (lambda text, log=log: log(f"{label}: {text}")) if label != "fsync" else log
    ca_file = tls["ca_file"] if tls else None
    cluster.start()
    try:
        primary = cluster.wait_primary(30)
        if mode == "sync":
            wait_for(lambda: primary.status()["consensus"]["sync_set"], 15, "a sync standby")
        time.sleep(1.0)   # idle: every node has started, elected and settled
        rss = max(psutil.Process(n.proc.pid).memory_info().rss   # type: ignore[union-attr]
                  for n in cluster.nodes.values()) / 1e6
        warm = run_load(primary.port, min(1.0, seconds / 3), 0, "warm", ca_file)
        log(f"{mode}: warm-up {warm['rate']:.0f} puts/s")
        puts = run_load(primary.port, seconds, 0, "put", ca_file)
        log(f"{mode}: {puts['rate']:.0f} acknowledged PUTs/s with {CLIENTS} clients, "
            f"p50 {puts['p50_ms']:.2f} ms, p99 {puts['p99_ms']:.2f} ms, "
            f"{puts['errors']} errors")
        result: dict[str, Any] = {"puts": puts, "idle_rss_mb": rss}
        if with_batch:
            batch = run_load(primary.port, seconds, 100, "batch")
            log(f"{mode}: {batch['rate']:.0f} ops/s through POST /v1/batch (100 ops each, "
                f"{batch['requests_s']:.0f} requests/s), p99 {batch['p99_ms']:.2f} ms")
            result["batch"] = batch
        return result
    finally:
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short phases (under 60 s)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--seconds", type=float, help="length of each load phase")
    args = parser.parse_args()
    seconds = args.seconds or (4.0 if args.quick else 15.0)

    def log(text: str) -> None:
        print(text, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        root = Path(tmp)
        raw = raw_put_rate(root, 1.0 if args.quick else 3.0)
        log(f"raw local rocksdict: {raw:.0f} puts/s (the ceiling)")
        sync = cluster_phase(root, "sync", seconds, True, log)
        asyn = cluster_phase(root, "async", seconds, False, log)
        buffered = cluster_phase(root, "sync", seconds, False, log, "os_buffer")
        # TLS on every channel (clients and nodes, mutual TLS between nodes), in the same run
        # as the plain sync phase it is compared with.
        secure = cluster_phase(root, "sync", seconds, False, log, tls=make_pki(root))
    s, a, b, t = sync["puts"], asyn["puts"], buffered["puts"], secure["puts"]
    figures = {
        "put_rate_sync": round(s["rate"], 1), "put_rate_async": round(a["rate"], 1),
        "put_p50_ms_sync": round(s["p50_ms"], 3), "put_p50_ms_async": round(a["p50_ms"], 3),
        "put_p99_ms_sync": round(s["p99_ms"], 3), "put_p99_ms_async": round(a["p99_ms"], 3),
        "sync_async_rate_ratio": round(s["rate"] / a["rate"], 3),
        "sync_async_p99_ratio": round(s["p99_ms"] / a["p99_ms"], 3),
        "batch_ops_rate_sync": round(sync["batch"]["rate"], 1),
        "put_rate_sync_os_buffer": round(b["rate"], 1),
        "put_p99_ms_sync_os_buffer": round(b["p99_ms"], 3),
        "fsync_os_buffer_rate_ratio": round(s["rate"] / b["rate"], 3),
        "fsync_os_buffer_p99_ratio": round(s["p99_ms"] / b["p99_ms"], 3),
        "put_rate_sync_tls": round(t["rate"], 1),
        "put_p99_ms_sync_tls": round(t["p99_ms"], 3),
        "tls_plain_rate_ratio": round(t["rate"] / s["rate"], 3),
        "raw_put_rate": round(raw, 1),
        "put_raw_ratio_async": round(a["rate"] / raw, 4),
        "idle_rss_mb": round(max(sync["idle_rss_mb"], asyn["idle_rss_mb"]), 1),
    }
    log(f"sync/async throughput {figures['sync_async_rate_ratio']} (goal >= 0.5), "
        f"sync/async p99 {figures['sync_async_p99_ratio']} (goal <= 2), fsync/os_buffer "
        f"throughput {figures['fsync_os_buffer_rate_ratio']} (goal >= 0.5), TLS/plain "
        f"throughput {figures['tls_plain_rate_ratio']} (goal >= 0.8), idle RSS "
        f"{figures['idle_rss_mb']} MB (goal <= 80)")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

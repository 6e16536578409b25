"""Failover benchmark: SIGKILL the primary under a steady write load, round after round.

A three-node consensus cluster (real processes on loopback). A client process writes unique
keys, one PUT at a time, to whichever node accepts them, and records every acknowledgement
(CLOCK_MONOTONIC time, node, epoch, key). Each round waits for steady writes, SIGKILLs the
primary, waits for a new one, restarts the killed node (it rejoins as a replica) and waits for
the cluster to converge. Failover time (RTO) per round is the client's view: from the last
acknowledgement by the old primary to the first by the new one. At the end every acknowledged
key is looked up in the final primary's database (read after a clean stop).

In sync mode (the default) no acknowledged write may be lost; with `--mode async` writes
acknowledged but not yet shipped when the primary dies are lost and must all be found in
divergent-tail files. Both are counted, not hidden.
`--json` prints one JSON object as the last line; `--quick` runs 3 rounds in well under 60 s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacluster.testing.harness import TOKEN, Cluster, read_db, wait_for


def _client(ports: dict[str, int], stop: Any, out: Any) -> None:
    """Runs in its own process: write k0, k1, ... to whoever accepts, record every ack."""
    acks: list[tuple[float, str, int, str]] = []
    errors = 0
    conns: dict[str, http.client.HTTPConnection] = {}
    current: str | None = None
    i = 0
    headers = {"Authorization": f"Bearer {TOKEN}"}
    names = sorted(ports)
    while not stop.is_set():
        candidates = [current] if current else names
        acked = False
        for name in candidates:
            if name is None:
                continue
            key = f"k{i:08d}"
            try:
                conn = conns.get(name) or http.client.HTTPConnection("127.0.0.1", ports[name],
                                                                     timeout=2)
                conns[name] = conn
                conn.request("PUT", f"/v1/kv/{key}", body=b"x" * 100, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status == 200:
                    acks.append((time.monotonic(), name, json.loads(body)["epoch"], key))
                    current = name
                    i += 1
                    acked = True
                    break
            except (OSError, http.client.HTTPException):
                conns.pop(name, None)
        if not acked:
            errors += 1
            current = None
            time.sleep(0.005)
    out.put({"acks": acks, "errors": errors})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, help="failovers to cause (default 20)")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--mode", choices=["sync", "async"], default="sync",
                        help="replication.mode (default sync)")
    parser.add_argument("--lease", type=float, help="consensus.lease_s (default: config default)")
    parser.add_argument("--renew", type=float, help="consensus.renew_interval_s")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 20)
    root = Path(tempfile.mkdtemp(prefix="hacluster-failover-"))
    timing_args = {k: v for k, v in (("lease_s", args.lease), ("renew_interval_s", args.renew))
                   if v is not None}
    cluster = Cluster(root, consensus=True, consensus_timing=timing_args,
                      replication={"mode": args.mode})
    timing = cluster.config_doc()["consensus"] or {}
    cluster.start()
    ctx = mp.get_context("spawn")
    stop, out = ctx.Event(), ctx.Queue()
    rtos: list[float] = []
    kills: list[tuple[float, str, int]] = []
    try:
        primary = cluster.wait_primary(30)
        client = ctx.Process(target=_client, args=(cluster.addresses, stop, out))
        client.start()
        for r in range(rounds):
            time.sleep(1.0)  # steady writes
            epoch = primary.status()["epoch"]
            primary.signal(signal.SIGKILL)
            primary.proc.wait(10)  # type: ignore[union-attr]
            killed_at = time.monotonic()
            kills.append((killed_at, primary.name, epoch))
            survivors = [n for n in cluster.nodes.values() if n is not primary]
            new = cluster.wait_primary(30, among=survivors)
            print(f"round {r + 1}: {primary.name} killed (epoch {epoch}); {new.name} is "
                  f"primary after {time.monotonic() - killed_at:.2f} s (server view)",
                  flush=True)
            primary.start()
            wait_for(lambda p=primary, n=new: p.status()["primary"] == n.name, 30,
                     "the old primary to rejoin")
            primary = new
        time.sleep(1.0)
        stop.set()
        result = out.get(timeout=60)
        client.join(10)
        cluster.wait_converged(timeout=60)
    finally:
        stop.set()
        cluster.stop()
    acks = result["acks"]
    for killed_at, name, epoch in kills:
        old = [t for t, n, e, _ in acks if n == name and e == epoch and t <= killed_at]
        new = [t for t, _, e, _ in acks if e > epoch]
        if old and new:
            rtos.append(min(new) - max(old))
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
    rtos.sort()
    report = {
        "rounds": len(rtos), "rto_p50_s": round(statistics.median(rtos), 3),
        "rto_p99_s": round(rtos[min(len(rtos) - 1, int(len(rtos) * 0.99))], 3),
        "rto_max_s": round(rtos[-1], 3), "lost_acked": len(lost), "mode": args.mode,
        "lost_unreported": len(unreported),
    }
    print(f"\n{len(acks):,} writes acknowledged, {result['errors']:,} client retries; "
          f"timing: {json.dumps(timing) if timing else 'consensus defaults'}")
    print(f"failover (client view, last ack on the old primary -> first on the new one) over "
          f"{len(rtos)} rounds: p50 {report['rto_p50_s']:.3f} s, p99 {report['rto_p99_s']:.3f} s,"
          f" max {report['rto_max_s']:.3f} s (goal p50 <= 1.2 s, p99 <= 2 s)")
    print(f"acknowledged writes lost: {len(lost)} (mode {report['mode']}), of which "
          f"{len(unreported)} are in no divergent-tail file")
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Clock-fault experiment: a cut-off primary against candidates whose clocks run fast.

Three consensus nodes in network namespaces (root), async replication so the cut-off primary
can acknowledge on its own until its lease ends. n1 (normal clock) is made the primary; n2 and
n3 run under libfaketime with every clock, ``time.monotonic()`` included, ``--rate`` times as
fast. A writer inside n1's namespace writes to n1, one outside writes to n2/n3; n1's link is
cut. Reported per run: when n1 last acknowledged and when the new primary first did (seconds
after the cut, host clock), the gap between them (negative: both primaries acknowledged at
once) and check_all's split-brain findings. The leases assume rates differ by at most
``consensus.drift``; this measures how far past that the real failover path still holds.
Results are in docs/reliability.md ("Clock faults").

    sudo python bench/clock_faults.py --rates 1.0,1.15,1.5,2.0 --runs 2 [--json] [--quick]

Each run prints one JSON line as before, now with ``errors`` (the writers' writes that were
not acknowledged: refused, timed out or unanswered, expected once n1 is cut off; the ack times
above are of acknowledged writes only, so failed ones are counted apart) and ``attempts``.
``--json`` ends with one summary object: ``mode`` ("async": consensus nodes with
``replication.mode: async``, not the default deployment, so that a cut-off primary can
acknowledge alone), ``consensus`` (true), ``quick``, ``errors`` (summed), ``safe_below`` (the
rate ratio up to which the lease arithmetic holds with the default timings), ``runs`` and
``goals_missed``. ``--quick``: rates 1.0 and 1.15, one run each (under 60 s).

Goal (checked after the output; exit status 1 when missed, each miss named on stderr): no
split brain in a run whose rate is below ``safe_below``. Faster rates are measured, not
judged: past the bound the cluster runs on luck.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hacluster.testing.harness import Cluster, wait_for
from hacluster.testing.history import History, Writer, check_all
from hacluster.testing.netns import Netns, namespaces_unavailable

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def run(rate: float, root: Path, write_s: float = 4.0) -> dict[str, Any]:
    names = ["n1", "n2", "n3"]
    net = Netns(names)
    net.up()
    cluster = Cluster(root, names, consensus=True, hosts=net.ip, replication={"mode": "async"},
                      prefixes={n: ["ip", "netns", "exec", ns] for n, ns in net.ns.items()})
    for name in ("n2", "n3"):
        # "+0 x<rate>": no offset, only the rate (libfaketime 0.9.10 hangs sleeps without
        # the offset); monotonic clocks are faked only with FAKETIME_DONT_FAKE_MONOTONIC=0.
        cluster.nodes[name].env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": f"+0 x{rate}",
                                   "FAKETIME_DONT_FAKE_MONOTONIC": "0"}
    try:
        cluster.start()
        old = cluster.wait_primary(30)
        if old.name != "n1":
            resp = old.post("/v1/admin/switchover", {"to": "n1"})
            assert resp.status == 200, resp.body
            old = cluster.wait_primary(30)
        others = [cluster.nodes["n2"], cluster.nodes["n3"]]
        inside_file = root / "inside.json"
        writes_before = old.status()["writes"]
        inside = subprocess.Popen(
            ["ip", "netns", "exec", net.ns["n1"], sys.executable, "-m",
             "hacluster.testing.history", "--seconds", str(write_s), "--out",
             str(inside_file), "--prefix", "p", "--timeout", "1", "--pause", "0",
             f"n1={old.host}:{old.port}"], stdout=subprocess.DEVNULL)
        # The inside writer's interpreter takes a while to start on a busy machine: cut only
        # once n1 has acknowledged some of its writes, or n1's side of the figures is empty.
        wait_for(lambda: old.status()["writes"] > writes_before + 10, 15,
                 "the writer inside n1's namespace to write")
        outside = Writer(others, prefix="q", pause=0.0, threads=2).start()
        try:
            time.sleep(1.0)
            cut_at = time.monotonic()
            net.cut("n1")
            new = cluster.wait_primary(20, among=others)
            inside.wait(30)
            outside.wait_acked(20, 20, node=new.name)
        finally:
            history = outside.stop()
            inside.wait(30)
        history.extend(History.load(inside_file))
        old_acks = [op.end for op in history.acked() if op.node == "n1"] or [cut_at]
        new_acks = [op for op in history.acked() if op.node == new.name
                    and (op.epoch or 0) > 1] or [op for op in history.acked()
                                                 if op.node == new.name]
        verdict = check_all(history)
        puts = [op for op in history.ops() if op.kind == "put"]
        return {"rate": rate, "errors": sum(1 for op in puts if not op.acked),
                "attempts": len(puts), "new_primary": new.name, "epochs": verdict.epochs,
                "n1_last_ack_s": round(max(old_acks) - cut_at, 3),
                "new_first_ack_s": round(min(op.end for op in new_acks) - cut_at, 3),
                "gap_s": round(min(op.start for op in new_acks) - max(old_acks), 3),
                "split_brain": verdict.violations["split_brain"][:1]}
    finally:
        cluster.stop()
        net.down()


def safe_below() -> float:
    """The rate ratio r_o / r_h past which the lease arithmetic fails (default timings)."""
    from hacluster.config import ConsensusConfig
    c = ConsensusConfig()
    return ((1 + c.drift) * c.lease_s + c.drift_margin_s) / ((1 - c.drift) * c.lease_s)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default=None, help="default 1.0,1.15,1.5,2.0 (--quick: 1.0,1.15)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="rates 1.0 and 1.15, one run each")
    ap.add_argument("--json", action="store_true", help="last line: one summary JSON object")
    args = ap.parse_args(argv)
    rates = args.rates or ("1.0,1.15" if args.quick else "1.0,1.15,1.5,2.0")
    why = namespaces_unavailable() or (None if LIBFAKETIME.exists() else
                                       f"{LIBFAKETIME} is missing (apt-get install libfaketime)")
    if why:
        print(f"clock_faults: {why}", file=sys.stderr)
        return 2
    bound = safe_below()
    runs = []
    for rate in (float(r) for r in rates.split(",")):
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="hacluster-clock-") as tmp:
                runs.append(run(rate, Path(tmp)))
                print(json.dumps(runs[-1]), flush=True)
    missed = [r for r in runs if r["rate"] < bound and r["split_brain"]]
    if args.json:
        print(json.dumps({"mode": "async", "consensus": True, "quick": args.quick,
                          "errors": sum(r["errors"] for r in runs),
                          "safe_below": round(bound, 4), "runs": runs,
                          "goals_missed": [f"split_brain at rate {r['rate']}" for r in missed]}))
    for r in missed:
        print(f"goal missed: no split brain below rate {bound:.3f}: rate {r['rate']} had "
              f"{r['split_brain']}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())

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

    sudo python bench/clock_faults.py --rates 1.0,1.15,1.5,2.0 --runs 2
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

from hacluster.testing.harness import Cluster
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
        inside = subprocess.Popen(
            ["ip", "netns", "exec", net.ns["n1"], sys.executable, "-m",
             "hacluster.testing.history", "--seconds", str(write_s), "--out",
             str(inside_file), "--prefix", "p", "--timeout", "1", "--pause", "0",
             f"n1={old.host}:{old.port}"], stdout=subprocess.DEVNULL)
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
        return {"rate": rate, "new_primary": new.name, "epochs": verdict.epochs,
                "n1_last_ack_s": round(max(old_acks) - cut_at, 3),
                "new_first_ack_s": round(min(op.end for op in new_acks) - cut_at, 3),
                "gap_s": round(min(op.start for op in new_acks) - max(old_acks), 3),
                "split_brain": verdict.violations["split_brain"][:1]}
    finally:
        cluster.stop()
        net.down()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="1.0,1.15,1.5,2.0")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args(argv)
    why = namespaces_unavailable() or (None if LIBFAKETIME.exists() else
                                       f"{LIBFAKETIME} is missing (apt-get install libfaketime)")
    if why:
        print(f"clock_faults: {why}", file=sys.stderr)
        return 2
    for rate in (float(r) for r in args.rates.split(",")):
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="hacluster-clock-") as tmp:
                print(json.dumps(run(rate, Path(tmp))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

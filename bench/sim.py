"""Simulator benchmark: many seeds of the deterministic cluster simulator, judged and counted.

Each seed runs N simulated nodes (the real ``decide`` and ``apply_command``) through faults
drawn from the seed, for ``--seconds`` of simulated time plus a settle period, and is judged by
``hacluster.testing.history.check_all`` and a replicas-identical check. Prints each failing
seed with the tail of its decision trace, and one JSON object as the last line: seeds,
seeds_per_min, sim_seconds_per_seed, violations (seeds with any), failovers, lost_acked,
split_brain_windows, failing_seeds, stuck_seeds (no primary at the end: liveness only).
``--revert-fix`` runs with the stale-tail fix taken out
(``hacluster.testing.sim.revert``), which must find violations. ``--quick``: 300 seeds of 60
simulated seconds (about 15 s). ``--trace SEED`` replays one seed and prints its trace.

The JSON line also has ``mode`` (the simulated replication mode, ``--mode``, sync by
default: the default deployment), ``quick``, ``errors`` (always 0: the simulator makes no
real request; its simulated clients' writes that were not acknowledged are counted apart in
``sim_unacked``, expected during simulated faults) and ``goals_missed``. It reports no
latency.

Goals (checked after the JSON line; exit status 1 when one is missed, each named on stderr):
no seed with a violation and no stuck seed; with ``--revert-fix``, the reverse: some seed must
find a violation (the check bites).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacluster.testing.sim import Config, Result, World, stale_tail_fix_reverted


def _one(args: tuple[int, Config, bool]) -> tuple[Result, int]:
    seed, cfg, revert = args
    world = World(seed, cfg)
    if revert:
        with stale_tail_fix_reverted():
            result = world.run()
    else:
        result = world.run()
    if result.ok:
        # Only a failing seed's trace is printed; a thousand kept traces slow the collector
        # (and a worker's pickling) more than the runs themselves.
        result.trace = []
    return result, world.stale_elected


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 seeds of 60 simulated seconds")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=None, help="simulated seconds per seed")
    ap.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    ap.add_argument("--mode", default="sync", choices=("sync", "async"))
    ap.add_argument("--revert-fix", action="store_true",
                    help="seq-only ranking, no lineage check in elections")
    ap.add_argument("--fine", action="store_true",
                    help="the product's default timings (lease 0.6 s, renewals every 0.1 s) "
                         "instead of the coarser lease 3 s / 0.75 s")
    ap.add_argument("--lease-changes", action="store_true",
                    help="add dynamic changes of consensus.lease_s to the faults, each "
                         "reaching the nodes at different times")
    ap.add_argument("--trace", type=int, metavar="SEED", default=None,
                    help="run one seed and print its whole decision trace and verdict")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="only the JSON line")
    a = ap.parse_args(argv)
    seeds = a.seeds if a.seeds is not None else (300 if a.quick else 1000)
    seconds = a.seconds if a.seconds is not None else (60.0 if a.quick else 200.0)
    cfg = (Config.fine(nodes=a.nodes, seconds=seconds, mode=a.mode,
                       lease_changes=a.lease_changes) if a.fine else
           Config(nodes=a.nodes, seconds=seconds, mode=a.mode, lease_changes=a.lease_changes))
    if a.trace is not None:
        result, _ = _one((a.trace, cfg, a.revert_fix))
        print("\n".join(result.trace))
        print(f"seed {a.trace}: {'ok' if result.ok else 'VIOLATIONS'} {result.violations}; "
              f"{result.acked} acknowledged of {result.attempts}, {result.failovers} failovers"
              + ("; no primary at the end" if result.stuck else ""))
        return 0 if result.ok else 1
    jobs = [(s, cfg, a.revert_fix) for s in range(a.first_seed, a.first_seed + seeds)]
    started = time.perf_counter()
    if a.workers > 1:
        with Pool(a.workers) as pool:
            results = pool.map(_one, jobs)
    else:
        results = [_one(j) for j in jobs]
    elapsed = time.perf_counter() - started
    failing = [r for r, _ in results if not r.ok]
    if not a.json:
        for r in failing[:3]:
            print(f"seed {r.seed}: {sorted(r.violations)}")
            for name, found in r.violations.items():
                for line in found[:2]:
                    print(f"  {name}: {line}")
            print("  trace:")
            print("\n".join("    " + line for line in r.short_trace(25).splitlines()))
    out: dict[str, Any] = {
        "seeds": seeds, "nodes": a.nodes, "mode": a.mode, "revert_fix": a.revert_fix,
        "lease_changes": a.lease_changes,
        "sim_seconds_per_seed": seconds, "seconds": round(elapsed, 2),
        "seeds_per_min": round(seeds / elapsed * 60, 1), "workers": a.workers,
        "violations": len(failing),
        "failovers": sum(r.failovers for r, _ in results),
        "acked": sum(r.acked for r, _ in results),
        "lost_acked": sum(len(r.violations.get("lost_acked", []))
                          + len(r.violations.get("unreported_losses", []))
                          for r, _ in results),
        "split_brain_windows": sum(r.split_brain_windows for r, _ in results),
        "switchovers": sum(r.switchovers for r, _ in results),
        "replicas_differ": sum(1 for r, _ in results if "replicas_differ" in r.violations),
        "stale_elected": sum(s for _, s in results),
        "stuck_seeds": [r.seed for r, _ in results if r.stuck][:20],
        "failing_seeds": [r.seed for r in failing][:20],
    }
    out = {"mode": a.mode, "quick": a.quick, "errors": 0,
           "sim_unacked": sum(r.attempts - r.acked for r, _ in results), **out}
    if a.revert_fix:
        goals = [("violations", "> 0 (the reverted fix must be found)", out["violations"] > 0)]
    else:
        goals = [("violations", "== 0", out["violations"] == 0),
                 ("stuck_seeds", "== [] (liveness)", not out["stuck_seeds"])]
    missed = [(name, goal) for name, goal, ok in goals if not ok]
    out["goals_missed"] = [name for name, _ in missed]
    print(json.dumps(out))
    for name, goal in missed:
        print(f"goal missed: {name} {goal} (measured {out[name]})", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())

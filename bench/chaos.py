"""Chaos soak: N seeded faults against a real cluster in network namespaces, then the verdicts.

Runs ``hacluster.testing.chaos.ChaosRun``: 3 or 5 node processes, one network namespace each
and each data dir on its own LazyFS mount over a tmpfs (root and /dev/fuse needed), writers in
every namespace and on the host (unique keys with hot keys read back, and a register workload:
writes and primary reads of shared keys), and a random but seeded schedule of faults (SIGKILL
and restart, SIGSTOP longer than the lease, the primary cut off, a minority / majority split,
one-way loss with iptables, restart of every node, a full disk, a wiped replica, a switchover
under load, and power losses: of the primary, of a synchronous standby right after it
confirmed a write and then a SIGKILL of the primary, of every node at once, of the new primary
and one more node right after a failover), each healed before the next, every kind at least
once when there are enough faults (``--no-cover``: drawn at random only). Prints one line per
fault, then a summary table; writes a JSON report and, when matplotlib is installed (``pip
install matplotlib``, or the ``plot`` extra), a timeline picture (PNG: primaries per epoch,
faults, power losses, client errors). ``--json`` prints one JSON object as the last line with
``faults``, ``lost_acked``, ``split_brain_windows``, ``stale_reads``, ``diverged_unreported``,
``converged``, ``availability``, ``failover_p50_s``, ``failover_max_s``, ``power_losses`` (power
-loss faults), ``lost_acked_power`` (acknowledged writes lost that were acknowledged before a
power loss), ``durable_gaps`` (acknowledged writes missing from the disk of a primary or
synchronous standby right after its power loss), ``epoch_reuse`` (an epoch number or seq given
out twice), ``linearizable`` (1 when the register check passed on every key), ``seed``,
``mode``, ``nodes``, then ``quick``, ``errors`` (client writes that failed: refused, timed out
or unanswered; expected while faults are active, so not a goal; their times are inside the
failover figures, which run from the last acknowledgement of one epoch to the first of the
next whatever failed in between), ``attempts`` and ``acked`` (client requests, reads included,
and acknowledged writes) and ``goals_missed``. Exit status 0 only when every checker is green;
each red one is named on stderr (after the JSON line). ``--quick``: 3 faults of the kinds
kill, pause and switchover (no FUSE needed), under 60 s; ``--faults`` and ``--kinds`` still
override it. While it runs, its progress goes to stderr (``hacluster.tools.progress``): faults
done of the run's, elapsed time and ETA, and the seq the primary reached; a bar on a terminal,
a line every few seconds otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacluster.testing.chaos import (
    KINDS,
    POWER_KINDS,
    ChaosResult,
    ChaosRun,
    Fault,
    plot,
    unavailable_reason,
    write_report,
)
from hacluster.tools.progress import progress

# The --json line: every key earlier versions printed, then the power-loss verdicts.
JSON_KEYS = ("faults", "lost_acked", "split_brain_windows", "stale_reads", "diverged_unreported",
             "converged", "availability", "failover_p50_s", "failover_max_s", "power_losses",
             "lost_acked_power", "durable_gaps", "epoch_reuse", "linearizable")
QUICK_KINDS = ("kill", "pause", "switchover")
NO_PLOT = ("no timeline picture: matplotlib is not installed (pip install matplotlib, or "
           "pip install -e '.[plot]'); the JSON report is written all the same")


def write_outputs(result: ChaosResult, report: Path, png: Path) -> str:
    """Write the JSON report, then the picture if matplotlib is there; say what was written.

    The report comes first and never depends on matplotlib: a long run must not lose its
    verdicts to a missing plotting library.
    """
    write_report(result, report)
    if importlib.util.find_spec("matplotlib") is None:
        print(f"chaos: {NO_PLOT}", file=sys.stderr)
        return f"report: {report}   timeline: not drawn (matplotlib missing)"
    plot(result, png)
    return f"report: {report}   timeline: {png}"


def soak_note(run: ChaosRun) -> str:
    """How far the writes got, as the primary shows it (the writers' own counts of
    acknowledged writes are only known once they stop)."""
    primary = run.primary()
    if primary is None:
        return "no primary"
    try:
        seq = primary.status().get("applied_seq")
    except (OSError, ValueError):
        return "primary not answering"
    return f"primary {primary.name} at seq {seq}"


# Every checker behind ChaosResult.ok, as (summary key, goal, met).
def goals(summary: dict[str, Any]) -> list[tuple[str, str, bool]]:
    zero = ("lost_acked", "split_brain_windows", "stale_reads", "diverged_unreported",
            "unrecovered", "crashes", "durable_gaps", "epoch_reuse", "nonlinearizable",
            "linearizability_unknown")
    return ([("converged", "true", summary["converged"] is True)]
            + [(key, "== 0", not summary[key]) for key in zero])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faults", type=int, default=None, help="default 20 (--quick: 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nodes", type=int, choices=[3, 5], default=3)
    parser.add_argument("--mode", choices=["sync", "async"], default="sync")
    parser.add_argument("--kinds", default=None,
                        help=f"comma-separated fault kinds (default all: {','.join(KINDS)}; "
                             f"--quick: {','.join(QUICK_KINDS)})")
    parser.add_argument("--quick", action="store_true",
                        help="3 faults of quick kinds without FUSE, under 60 s")
    parser.add_argument("--report", type=Path, default=Path("chaos-report.json"))
    parser.add_argument("--png", type=Path, default=Path("chaos-timeline.png"))
    parser.add_argument("--no-cover", action="store_true",
                        help="draw every fault at random (default: each kind at least once "
                             "when there are at least as many faults as kinds)")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.faults is None:
        args.faults = 3 if args.quick else 20
    if args.kinds is None:
        args.kinds = ",".join(QUICK_KINDS if args.quick else KINDS)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown fault kinds: {sorted(unknown)}")
    reason = unavailable_reason(kinds)
    if reason:
        print(f"chaos: cannot run here: {reason}"
              + (" (--kinds without the power_* kinds runs without FUSE)"
                 if any(k in POWER_KINDS for k in kinds) else ""), file=sys.stderr)
        return 2
    if importlib.util.find_spec("matplotlib") is None:
        print(f"chaos: {NO_PLOT}", file=sys.stderr)     # said now, not only after the run
    root = Path(tempfile.mkdtemp(prefix="hacluster-chaos-"))
    # Progress on stderr (a bar on a terminal, a line every few seconds otherwise): faults done
    # of the run's, elapsed and ETA, and how far the primary got; the fault lines go above it.
    with progress(args.faults, "soak", unit="faults") as bar:
        def one_more(run: ChaosRun, _: Fault) -> None:
            bar.note(soak_note(run))
            bar.update(1)

        run = ChaosRun(root, nodes=args.nodes, mode=args.mode, seed=args.seed, kinds=kinds,
                       cover=not args.no_cover, say=bar.write, on_fault=one_more)
        try:
            result = run.run(args.faults)
        finally:
            run.close()
    written = write_outputs(result, args.report, args.png)
    summary = result.summary()
    width = max(len(k) for k in summary)
    print("\n" + "\n".join(f"{k:<{width}}  {v}" for k, v in summary.items()))
    details = result.verdicts.get("details", {})
    if any(details.values()):
        print("violations:\n" + json.dumps(details, indent=1, default=str))
    print(f"{written}   run dir: {root}")
    if not args.keep and result.ok:      # a failed run keeps its logs and histories
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    missed = [(key, goal) for key, goal, ok in goals(summary) if not ok]
    if not result.ok and not missed:        # a checker this list does not know yet
        missed = [("ok", "true")]
    if args.json:
        print(json.dumps({k: summary[k] for k in JSON_KEYS} | {
            "seed": args.seed, "mode": args.mode, "nodes": args.nodes, "quick": args.quick,
            "errors": sum(n for _, n in result.errors_over_time),
            "attempts": result.verdicts.get("attempts", 0), "acked": summary["acked"],
            "goals_missed": [key for key, _ in missed]}))
    for key, goal in missed:
        print(f"goal missed: {key} {goal} (measured {summary.get(key, result.ok)})",
              file=sys.stderr)
    return 0 if result.ok and not missed else 1


if __name__ == "__main__":
    sys.exit(main())

"""The chaos soak's end: converging the cluster and judging the merged client histories.

Owns the ``Judging`` mixin of ``ChaosRun``: healing, waiting for one content hash on every
node, comparing the stopped databases, and turning ``check_all`` and the soak's own checks
(``verdicts``) into a ``ChaosResult``. It must never inject a fault, and never count a check
that did not apply as passed (linearizability is judged in sync mode only).
"""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING

from hacluster.testing.chaos.results import ChaosResult, Fault
from hacluster.testing.chaos.verdicts import (
    availability,
    durable_gaps,
    epoch_reuse,
    failover_times,
    recheck_linearizability,
)
from hacluster.testing.harness import Cluster, NodeProc, read_db, request
from hacluster.testing.history import REG, History, check_all, divergent_tail_keys, stale_reads
from hacluster.testing.netns import Netns


class Judging:
    """The end of ``ChaosRun`` (which provides what is declared here)."""

    if TYPE_CHECKING:
        seed: int
        names: list[str]
        mode: str
        net: Netns
        cluster: Cluster
        faults: list[Fault]
        unrecovered: list[str]
        crashes: list[str]
        epoch_records: dict[int, tuple[str, int]]
        epoch_problems: dict[str, None]

        def primary(self) -> NodeProc | None: ...

        def _restart_crashed(self) -> None: ...

        def _note_epochs(self) -> None: ...

    def judge(self, history: History, started: float, ended: float) -> ChaosResult:
        result = ChaosResult(self.seed, len(self.names), self.mode, self.faults, started, ended)
        converged, final_keys = self._converge()
        result.converged = converged
        tails = (divergent_tail_keys([n.data_dir for n in self.cluster.nodes.values()])
                 if self.mode == "async" else None)
        ops = history.ops()
        verdict = check_all(ops, final_keys, tail_keys=tails)
        v = verdict.violations
        # Judged in sync mode only: an async failover may lose acknowledged writes, and a
        # read then sees an older value (check_all only counts those in its notes).
        wrong: list[str] = v.get("nonlinearizable", [])
        unknown: list[str] = []
        if tails is None:
            unknown = verdict.notes.get("linearizability_unknown", [])
            if unknown:
                wrong, unknown = recheck_linearizability(ops, wrong, unknown)
        acks = [op for op in ops if op.acked]
        cuts = [cut for f in self.faults for cut in f.power]
        lost = [op for op in acks if op.key.encode() not in final_keys
                and (tails is None or op.key.encode() not in tails)]
        last_cut = max((cut.at for cut in cuts), default=-1.0)
        lost_power = [op for op in lost if op.end < last_cut]
        gaps = durable_gaps(acks, cuts)
        reuse = [*self.epoch_problems, *epoch_reuse(acks, self.epoch_records, cuts,
                                                    sync=self.mode == "sync")]
        reg_reads = sum(1 for op in ops if op.answered and op.key.startswith(REG))
        result.verdicts = {
            "acked": verdict.acked, "attempts": verdict.attempts,
            "lost_acked": len(v.get("lost_acked", [])),
            "split_brain_windows": len(v.get("split_brain", [])),
            "stale_reads": len(v.get("stale_reads", [])),
            "diverged_unreported": len(v.get("unreported_losses", [])),
            "seq_anomalies": len(v.get("seq_anomalies", [])),
            "unrecovered": len(self.unrecovered),
            "crashes": len(self.crashes),
            "lost_acked_power": len(lost_power),
            "durable_gaps": sum(n for n, _ in gaps),
            "epoch_reuse": len(reuse),
            "epochs_seen": len(self.epoch_records),
            "register_reads": reg_reads,
            "linearizability_checked": verdict.notes.get("reads", 0) if tails is None else 0,
            "nonlinearizable": len(wrong),
            "linearizability_unknown": len(unknown),
            "details": {**{k: x[:5] for k, x in v.items() if x and k != "nonlinearizable"},
                        "nonlinearizable": wrong[:3], "linearizability_unknown": unknown[:5],
                        "lost_acked_power": [op.describe() for op in lost_power[:5]],
                        "durable_gaps": [text for _, text in gaps[:5]],
                        "epoch_reuse": reuse[:5],
                        "unrecovered": self.unrecovered[:5], "crashes": self.crashes[:5]},
            "notes": {k: x for k, x in verdict.notes.items()
                      if k != "linearizability_unknown"},
        }
        if self.mode == "async":
            result.verdicts["async_stale_reads_after_loss"] = len(stale_reads(history))
        result.availability, result.errors_over_time = availability(history, started, ended)
        ends = sorted(op.end for op in acks)
        result.longest_outage = max((b - a for a, b in itertools.pairwise(ends)), default=0.0)
        result.failovers, result.epochs_over_time = failover_times(history)
        return result

    def _converge(self) -> tuple[bool, set[bytes]]:
        """Heal, wait for one content hash everywhere, stop, and compare the databases."""
        self.net.heal_all()
        self._restart_crashed()
        deadline = time.monotonic() + 90
        nodes = list(self.cluster.nodes.values())
        same = False
        while time.monotonic() < deadline and not same:
            try:
                hashes = [request(n.port, "GET", "/v1/admin/hash", host=n.host,
                                  timeout=5).json() for n in nodes]
                same = self.primary() is not None and all(h == hashes[0] for h in hashes)
            except (OSError, ValueError):
                same = False
            if not same:
                time.sleep(0.3)
        primary = self.primary()
        self._note_epochs()
        self.cluster.stop()
        dbs: list[tuple[int, dict[str, dict[bytes, bytes]]]] = []
        for n in nodes:
            try:
                dbs.append(read_db(n.data_dir / "db"))
            except Exception as exc:   # rocksdict: a missing or unreadable database
                self.unrecovered.append(f"{n.name} has no readable database at the end: {exc}")
                dbs.append((-1, {}))
        identical = all(db == dbs[0] for db in dbs)
        if not identical:
            self.unrecovered.append("stopped databases differ: seqs "
                                    + ", ".join(f"{n.name}={db[0]}" for n, db in
                                                zip(nodes, dbs, strict=True)))
        final = dbs[nodes.index(primary)] if primary in nodes else max(dbs, key=lambda d: d[0])
        return same and identical, set(final[1].get("default", {}))

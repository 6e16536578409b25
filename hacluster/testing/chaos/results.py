"""What a chaos soak records: each power cut, each fault, and the run's result with its verdicts.

Owns ``PowerCut`` (one node's power loss and what its disk kept), ``Fault`` (one injected
fault: when it was healed, when a write was acknowledged again), ``ChaosResult`` (the verdict
figures, ``ok``, ``linearizable`` and the summary ``bench/chaos.py`` prints) and
``describe_cut``. Plain records: it must never run anything, touch a node, or judge a history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hacluster.testing.chaos.kinds import POWER_KINDS


@dataclass
class PowerCut:
    """One node's power loss, and what its disk held after it (read before the node restarts).

    ``role`` says what the disk must still hold (rule 5: nothing is acknowledged before it is
    on disk): a ``primary`` every write it acknowledged in ``epoch`` (all before ``at``); a
    ``sync_standby`` every write acknowledged in ``epoch`` before ``confirmed`` (when its
    primary's status showed it in the synchronous set: it joined that set only holding every
    write, and confirmed each one after), and the probe write of seq ``probe_seq`` it
    confirmed just before; ``other`` (or an unknown epoch) nothing.
    """

    node: str
    at: float                      # monotonic, once its process was SIGKILLed and reaped
    role: str = "other"
    epoch: int | None = None
    confirmed: float = 0.0
    probe_seq: int | None = None
    disk_seq: int | None = None    # the database's latest seq after the loss; None: unreadable
    disk_error: str = ""
    bytes_dropped: int = 0
    files_affected: int = 0
    forced: bool = False           # something still held the mount (it should not)


@dataclass
class Fault:
    kind: str
    nodes: list[str]
    start: float                 # monotonic, injected
    healed: float = 0.0          # monotonic, healed
    recovered: float = 0.0       # monotonic, a primary acknowledged again (host writer view)
    note: str = ""
    power: list[PowerCut] = field(default_factory=list)


@dataclass
class ChaosResult:
    seed: int
    nodes: int
    mode: str
    faults: list[Fault]
    started: float
    ended: float
    verdicts: dict[str, Any] = field(default_factory=dict)
    failovers: list[dict[str, Any]] = field(default_factory=list)
    availability: float = 0.0
    longest_outage: float = 0.0      # the longest time with no write acknowledged
    converged: bool = False
    errors_over_time: list[tuple[float, int]] = field(default_factory=list)
    epochs_over_time: list[tuple[float, int, str]] = field(default_factory=list)

    @property
    def linearizable(self) -> bool:
        """The register check ran, found no violation and decided every key."""
        v = self.verdicts
        return (v.get("linearizability_checked", 0) > 0 and not v.get("nonlinearizable")
                and not v.get("linearizability_unknown"))

    @property
    def ok(self) -> bool:
        v = self.verdicts
        return (self.converged and not v.get("lost_acked") and not v.get("split_brain_windows")
                and not v.get("stale_reads") and not v.get("diverged_unreported")
                and not v.get("unrecovered") and not v.get("crashes")
                and not v.get("durable_gaps") and not v.get("epoch_reuse")
                and not v.get("nonlinearizable") and not v.get("linearizability_unknown"))

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        times = sorted(f["seconds"] for f in self.failovers)
        v = self.verdicts
        return {
            "faults": len(self.faults), "faults_by_kind": kinds, "seed": self.seed,
            "nodes": self.nodes, "mode": self.mode,
            "duration_s": round(self.ended - self.started, 1),
            "acked": v.get("acked", 0),
            "lost_acked": v.get("lost_acked", 0),
            "split_brain_windows": v.get("split_brain_windows", 0),
            "stale_reads": v.get("stale_reads", 0),
            "diverged_unreported": v.get("diverged_unreported", 0),
            "unrecovered": v.get("unrecovered", 0),
            "crashes": v.get("crashes", 0),
            "power_losses": sum(1 for f in self.faults if f.kind in POWER_KINDS),
            "disks_power_cut": sum(len(f.power) for f in self.faults),
            "lost_acked_power": v.get("lost_acked_power", 0),
            "durable_gaps": v.get("durable_gaps", 0),
            "epoch_reuse": v.get("epoch_reuse", 0),
            "seq_anomalies": v.get("seq_anomalies", 0),
            "register_reads": v.get("register_reads", 0),
            "nonlinearizable": v.get("nonlinearizable", 0),
            "linearizability_unknown": v.get("linearizability_unknown", 0),
            "linearizable": int(self.linearizable),
            "converged": self.converged, "availability": round(self.availability, 4),
            "longest_outage_s": round(self.longest_outage, 3),
            "failovers": len(times),
            "failover_p50_s": round(times[len(times) // 2], 3) if times else None,
            "failover_max_s": round(times[-1], 3) if times else None,
        }


def describe_cut(cut: PowerCut) -> str:
    kept = (f"disk seq {cut.disk_seq}" if cut.disk_seq is not None
            else f"no readable database ({cut.disk_error})")
    role = f"{cut.role} of epoch {cut.epoch}" if cut.role != "other" else "not a guardian"
    return (f"power loss of {cut.node} ({role}): {cut.bytes_dropped} unsynced bytes in "
            f"{cut.files_affected} files dropped, {kept}"
            + (", the mount was still in use" if cut.forced else ""))

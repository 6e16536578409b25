"""The chaos soak: a seeded nemesis against a real cluster in network namespaces, judged by the
clients' histories.

Owns one soak run: a cluster of 3 or 5 node processes, each in its own namespace, each data dir
(RocksDB and the Raft journal) on its own LazyFS mount (``hacluster.testing.lazyfs``, which
drops what was never synced at a power loss) over its own small tmpfs (for the disk-full
fault); writer processes in every namespace and on the host, recording every write, hot-key
overwrite and read-back, and every write and primary read of a few shared register keys, with
CLOCK_MONOTONIC times; a randomized, seeded schedule of faults (each kind at least once when
there are enough), each injected, held, and healed before the next; every epoch record the
nodes show, sampled after each fault and before each power loss; what each powered-off disk
still holds, read before its node restarts; and at the end the verdicts: no acknowledged write
lost (sync), none lost from the disk of a primary or synchronous standby by a power loss, no
split brain, no stale read, no read that no order of the writes explains, no epoch given out
twice, every async loss in a divergent-tail file, every node identical (content and sequence
number), availability and failover times. ``bench/chaos.py`` prints and plots a run;
``tests/test_chaos.py`` runs a short one. It must never fake the network, the store or the
disk, and never leave a fault unhealed, a process, a namespace or a mount behind.

The package: ``kinds`` (the fault kinds, fixed figures, ``unavailable_reason``), ``results``
(``PowerCut``, ``Fault``, ``ChaosResult``), ``run`` (``ChaosRun``) with its mixins ``power``
(the power losses) and ``judging`` (convergence and verdicts), ``verdicts`` (the soak's own
checks) and ``report`` (the JSON report and the picture). This ``__init__`` only re-exports
their public names; it must never hold logic of its own.
"""

from __future__ import annotations

from hacluster.testing.chaos.kinds import (
    KINDS,
    POWER_KINDS,
    RECHECK_SECONDS,
    RECHECK_STATES,
    REGISTER_KEYS,
    RESTART_S,
    TMPFS_MB,
    unavailable_reason,
)
from hacluster.testing.chaos.report import plot, write_report
from hacluster.testing.chaos.results import ChaosResult, Fault, PowerCut, describe_cut
from hacluster.testing.chaos.run import ChaosRun
from hacluster.testing.chaos.verdicts import (
    availability,
    disk_seq,
    durable_gaps,
    epoch_reuse,
    failover_times,
    recheck_linearizability,
)

__all__ = [
    "KINDS",
    "POWER_KINDS",
    "RECHECK_SECONDS",
    "RECHECK_STATES",
    "REGISTER_KEYS",
    "RESTART_S",
    "TMPFS_MB",
    "ChaosResult",
    "ChaosRun",
    "Fault",
    "PowerCut",
    "availability",
    "describe_cut",
    "disk_seq",
    "durable_gaps",
    "epoch_reuse",
    "failover_times",
    "plot",
    "recheck_linearizability",
    "unavailable_reason",
    "write_report",
]

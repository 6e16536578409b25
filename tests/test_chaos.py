"""A CI-sized chaos soak: about 20 seeded faults against three nodes in network namespaces.

The same harness as ``bench/chaos.py`` (``hacluster.testing.chaos``): SIGKILL and restart,
SIGSTOP past the lease, the primary cut off, a split, one-way loss, a restart of every node, a
full disk, a wiped replica and a switchover, with writers in every namespace. Every checker must
be green: nothing acknowledged lost, no split brain, no stale read, every node identical at the
end. Skips, saying why, where namespaces (root) are not available.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hacluster.testing.chaos import ChaosRun, unavailable_reason, write_report

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

FAULTS = int(os.environ.get("HACLUSTER_CHAOS_FAULTS", "20"))
SEED = int(os.environ.get("HACLUSTER_CHAOS_SEED", "20261126"))


def test_chaos_soak_keeps_every_acknowledged_write(tmp_path: Path) -> None:
    lines: list[str] = []
    run = ChaosRun(tmp_path / "run", nodes=3, mode="sync", seed=SEED, say=lines.append)
    try:
        result = run.run(FAULTS)
    finally:
        run.close()
    write_report(result, tmp_path / "report.json")
    summary = result.summary()
    details = result.verdicts.get("details")
    assert summary["faults"] == FAULTS
    assert summary["acked"] > 1000, summary
    assert summary["lost_acked"] == 0, details
    assert summary["split_brain_windows"] == 0, details
    assert summary["stale_reads"] == 0, details
    assert summary["unrecovered"] == 0, details
    assert summary["crashes"] == 0, details
    assert result.converged, details
    assert result.verdicts["notes"].get("reads", 0) > 100     # the stale-read check had reads
    assert len(summary["faults_by_kind"]) >= 5, summary       # a mix, not one kind

"""A CI-sized chaos soak: 20 seeded faults against three nodes in network namespaces, every
data dir on a LazyFS mount so that power losses drop what was never synced.

The same harness as ``bench/chaos.py`` (``hacluster.testing.chaos``): SIGKILL and restart,
SIGSTOP past the lease, the primary cut off, a split, one-way loss, a restart of every node, a
full disk, a wiped replica, a switchover, and the four power losses (the primary; a synchronous
standby right after it confirmed a write, then a SIGKILL of the primary; every node at once;
the new primary and one more node right after a failover), each kind at least once, with
writers in every namespace (unique keys, hot keys read back, and shared register keys written
and read on the primary). Every checker must be green: nothing acknowledged lost, nothing
acknowledged missing from a primary's or synchronous standby's disk after its power loss, no
epoch given out twice, no split brain, no stale read, every register read explained by one
order of the writes, every node identical at the end. A short run with ``durability:
os_buffer`` shows the disk check bites; the checkers themselves are tested on made-up
histories. The soaks skip, saying why, where namespaces (root) or /dev/fuse are missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hacluster.testing.chaos import (
    KINDS,
    POWER_KINDS,
    ChaosRun,
    PowerCut,
    durable_gaps,
    epoch_reuse,
    unavailable_reason,
    write_report,
)
from hacluster.testing.history import Op

REASON = unavailable_reason()
needs_soak = pytest.mark.skipif(REASON is not None, reason=REASON or "")

FAULTS = int(os.environ.get("HACLUSTER_CHAOS_FAULTS", "20"))
SEED = int(os.environ.get("HACLUSTER_CHAOS_SEED", "20261126"))


@needs_soak
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
    # Every kind, the power losses included, was injected (the schedule covers them all).
    assert set(summary["faults_by_kind"]) == set(run.kinds), summary
    assert summary["power_losses"] >= len(POWER_KINDS), summary
    assert summary["lost_acked_power"] == 0, details
    assert summary["durable_gaps"] == 0, details
    assert summary["epoch_reuse"] == 0, details
    assert result.verdicts["epochs_seen"] >= 2, result.verdicts
    assert summary["register_reads"] > 50, summary       # the register check had reads
    assert summary["nonlinearizable"] == 0, details
    assert summary["linearizable"] == 1, details
    assert result.ok, details
    # Guardian disks were read back after each power loss (the check above is not vacuous),
    # and LazyFS passed the full tmpfs through to the node (ENOSPC and its statvfs).
    guardians = [c for f in result.faults for c in f.power if c.role != "other"]
    assert guardians and all(c.disk_seq is not None for c in guardians), guardians
    for f in result.faults:
        if f.kind == "disk_full":
            assert "No space left on device" in f.note and "node reported" in f.note, f.note


@needs_soak
def test_without_syncs_a_power_loss_of_the_primary_loses_acknowledged_writes_from_its_disk(
        tmp_path: Path) -> None:
    """The fault bites: with ``durability: os_buffer`` the primary acknowledges from the page
    cache, so its disk lacks the last writes it acknowledged once its power is cut. The
    standby (not cut) still has them, so the cluster loses nothing; the disk check sees it."""
    run = ChaosRun(tmp_path / "run", nodes=3, mode="sync", seed=SEED, kinds=("power_primary",),
                   storage={"durability": "os_buffer"}, say=lambda _: None)
    try:
        result = run.run(2)
    finally:
        run.close()
    details = result.verdicts["details"]
    assert result.verdicts["durable_gaps"] > 0, details
    assert "had to keep" in details["durable_gaps"][0], details
    assert result.verdicts["lost_acked"] == 0, details
    assert not result.ok


# --- the checkers, on made-up histories ---------------------------------------------------------


def ack(key: str, node: str, start: float, epoch: int, seq: int) -> Op:
    return Op(key, node, start, start + 0.01, 200, epoch, seq)


def test_durable_gaps_names_acknowledged_writes_a_guardian_disk_lacks() -> None:
    acks = [ack(f"k{i}", "n1", float(i), 2, 10 + i) for i in range(5)]   # seqs 10..14
    kept_all = PowerCut("n1", at=10.0, role="primary", epoch=2, confirmed=10.0, disk_seq=14)
    assert durable_gaps(acks, [kept_all]) == []
    lost_two = PowerCut("n1", at=10.0, role="primary", epoch=2, confirmed=10.0, disk_seq=12)
    [(count, text)] = durable_gaps(acks, [lost_two])
    assert count == 2 and "kept seq 12" in text and "'k4'" in text
    # A standby answers for what was acknowledged before it was seen in the sync set, and for
    # the probe it confirmed; a node of neither role for nothing.
    standby = PowerCut("n2", at=10.0, role="sync_standby", epoch=2, confirmed=2.5,
                       probe_seq=15, disk_seq=12)
    [(count, _)] = durable_gaps(acks, [standby])
    assert count == 1                              # the probe only: k3, k4 came after 2.5
    other = PowerCut("n3", at=10.0, role="other", epoch=2, disk_seq=0)
    assert durable_gaps(acks, [other]) == []
    unreadable = PowerCut("n1", at=10.0, role="primary", epoch=2, disk_error="Corruption")
    assert "no readable database" in durable_gaps(acks, [unreadable])[0][1]


def test_epoch_reuse_finds_an_epoch_or_seq_given_out_twice() -> None:
    good = [ack("a", "n1", 0.0, 1, 5), ack("b", "n1", 1.0, 1, 6), ack("c", "n2", 3.0, 2, 7)]
    records = {1: ("n1", 1), 2: ("n2", 7)}
    assert epoch_reuse(good, records, [], sync=True) == []
    two_nodes = [*good, ack("d", "n3", 4.0, 2, 8)]
    assert "epoch 2 acknowledged writes on n2, n3" in epoch_reuse(two_nodes, records, [],
                                                                  sync=True)
    wrong_holder = [ack("a", "n3", 0.0, 1, 5)]
    assert "belongs to n1" in epoch_reuse(wrong_holder, records, [], sync=True)[0]
    same_seq = [*good, ack("e", "n2", 4.0, 2, 7)]
    assert any("seq 7 acknowledged for two writes" in p
               for p in epoch_reuse(same_seq, records, [], sync=True))
    seq_again = [*good, ack("f", "n3", 5.0, 3, 6)]
    found = epoch_reuse(seq_again, records, [], sync=True)
    assert any("not above seq 7" in p for p in found), found
    assert not any("not above" in p for p in epoch_reuse(seq_again, records, [], sync=False))
    # A holder that lost power at t=2 acknowledges nothing more in its epoch.
    cut = PowerCut("n1", at=2.0, role="primary", epoch=1, confirmed=2.0, disk_seq=6)
    late = [*good, ack("g", "n1", 2.5, 1, 7)]
    assert any("lost power" in p for p in epoch_reuse(late, records, [cut], sync=False))


def test_the_schedule_covers_every_kind_when_there_are_enough_faults(tmp_path: Path) -> None:
    run = ChaosRun(tmp_path, seed=1, kinds=KINDS)
    kinds = run.kinds
    schedule = run.schedule(len(kinds))
    assert sorted(schedule) == sorted(kinds)
    assert set(ChaosRun(tmp_path, seed=2, kinds=KINDS).schedule(40)) == set(kinds)
    assert len(ChaosRun(tmp_path, seed=3, kinds=KINDS, cover=False).schedule(40)) == 40

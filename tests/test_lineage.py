"""Lineage: which epoch wrote a node's data, and the divergence check against the history."""

from __future__ import annotations

import json
from pathlib import Path

from hacluster.consensus.state import EpochRecord
from hacluster.lineage.labels import Divergence, Lineage, find_divergence


def history(*starts: tuple[int, str, int]) -> list[EpochRecord]:
    return [EpochRecord(e, p, s, "failover", 0.0) for e, p, s in starts]


def test_records_are_durable_and_only_move_forward(tmp_path: Path) -> None:
    lin = Lineage(tmp_path)
    lin.record(1, 1)
    lin.record(2, 51)
    lin.record(2, 60)      # same epoch again: nothing new
    lin.record(1, 70)      # older epoch: ignored
    assert json.loads((tmp_path / "lineage.json").read_text()) == [[1, 1], [2, 51]]
    again = Lineage(tmp_path)
    assert again.transitions == [(1, 1), (2, 51)]
    assert (again.last_epoch(50), again.last_epoch(51), again.last_epoch(0)) == (1, 2, None)


def test_a_transition_that_never_got_data_is_superseded(tmp_path: Path) -> None:
    lin = Lineage(tmp_path)
    lin.record(1, 1)
    lin.record(2, 51)      # promoted at 51 but wrote nothing
    lin.record(3, 51)      # then followed epoch 3 from 51
    assert lin.transitions == [(1, 1), (3, 51)]


def test_prefix_of_the_history_is_not_divergent(tmp_path: Path) -> None:
    lin = Lineage(tmp_path)
    lin.record(1, 1)
    h = history((1, "n1", 1), (2, "n2", 51))
    assert find_divergence(lin, 50, h) is None
    assert find_divergence(lin, 0, h) is None


def test_writes_past_the_next_epoch_start_are_divergent(tmp_path: Path) -> None:
    lin = Lineage(tmp_path)
    lin.record(1, 1)
    h = history((1, "n1", 1), (2, "n2", 21), (3, "n3", 40))
    assert find_divergence(lin, 35, h) == Divergence(1, 21, 35)
    lin.record(2, 21)
    assert find_divergence(lin, 35, h) is None          # it followed epoch 2: a prefix
    assert find_divergence(lin, 45, h) == Divergence(2, 40, 45)


def test_rule_1_unknown_lineage_is_not_trusted_under_an_epoch_history(tmp_path: Path) -> None:
    # Data with no lineage (a copied-in database) is vouched for only below every epoch start;
    # past that no one can tell which primary wrote it, so the node must bootstrap.
    assert find_divergence(Lineage(tmp_path), 2, history((1, "n1", 3))) is None
    assert find_divergence(Lineage(tmp_path), 100, history((1, "n1", 3))) == Divergence(0, 3,
                                                                                        100)
    assert find_divergence(Lineage(tmp_path), 100, []) is None      # a cluster's first data


def test_rule_1_lineage_older_than_the_kept_history_bootstraps(tmp_path: Path) -> None:
    lin = Lineage(tmp_path)
    lin.record(2, 1)
    # Raft keeps epochs 5.. only: where epochs 3 and 4 took over is forgotten.
    assert find_divergence(lin, 10, history((5, "n2", 300))) == Divergence(2, 1, 10)
    # Epoch 4's record kept: epoch 3 forgotten, still unverifiable.
    assert find_divergence(lin, 10, history((4, "n1", 200), (5, "n2", 300))) == \
        Divergence(2, 1, 10)
    # Epoch 3 kept: every later start is known and none is at or below 10.
    assert find_divergence(lin, 10, history((3, "n3", 100), (4, "n1", 200))) is None

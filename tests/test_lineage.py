"""Lineage: which epoch wrote a node's data, and the divergence check against the history."""

from __future__ import annotations

import json
from pathlib import Path

from hacluster.consensus.lineage import Divergence, Lineage, find_divergence
from hacluster.consensus.state import EpochRecord


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


def test_unknown_lineage_is_never_guessed_divergent(tmp_path: Path) -> None:
    assert find_divergence(Lineage(tmp_path), 100, history((5, "n2", 3))) is None

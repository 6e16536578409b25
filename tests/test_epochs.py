"""Rule 1's arithmetic: which history a labelled position lies on, checked against histories
built seq by seq (each seq tagged with the epoch that wrote it)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hacluster.consensus.epochs import conflict, same_history, writer_epoch
from hacluster.consensus.state import EpochRecord


def record(epoch: int, start: int) -> EpochRecord:
    return EpochRecord(epoch, f"n{epoch}", start, "failover", 0.0)


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[EpochRecord], dict[int, list[int]]]:
    """Epochs 1..n; epoch k takes over at a seq within epoch k-1's data (what the rules
    enforce) and writes some more. Returns the records and, per epoch, the writer of each seq
    of the history its primary serves."""
    served: dict[int, list[int]] = {}
    records = []
    prev: list[int] = []
    for epoch in range(1, draw(st.integers(1, 7)) + 1):
        start = draw(st.integers(1, len(prev) + 1))
        mine = prev[:start - 1] + [epoch] * draw(st.integers(0, 6))
        records.append(record(epoch, start))
        served[epoch] = mine
        prev = mine
    return records, served


@given(histories(), st.data())
def test_rule_1_conflict_matches_the_seq_by_seq_histories(
        h: tuple[list[EpochRecord], dict[int, list[int]]], data: st.DataObject) -> None:
    records, served = h
    newest = served[len(records)]
    label = data.draw(st.sampled_from(sorted(served)))
    mine = served[label]
    for seq in range(1, len(mine) + 1):
        agrees = mine[:seq] == newest[:seq]
        found = conflict(label, seq, records)
        assert (found is None) == agrees, (label, seq, mine, newest, found)
        if found is not None:
            # It names the first seq where the two differ.
            padded = newest + [0] * len(mine)
            first = next(i for i, (a, b) in enumerate(zip(mine, padded[:len(mine)],
                                                          strict=True), 1) if a != b)
            assert found.first_seq == first
        assert writer_epoch(label, seq, records) == mine[seq - 1]
        other = data.draw(st.sampled_from(sorted(served)))
        theirs = served[other]
        if seq <= len(theirs):
            assert same_history(label, other, seq, records) == (mine[:seq] == theirs[:seq])


def test_rule_1_the_review_case() -> None:
    records = [record(5, 1), record(6, 81)]
    found = conflict(5, 500, records)
    assert found is not None and (found.first_seq, found.taken_by) == (81, 6)
    assert str(found) == "its seqs 81..500 came from epoch 5, but epoch 6 took over at seq 81"
    assert conflict(5, 80, records) is None
    assert conflict(6, 90, records) is None
    assert not same_history(5, 6, 90, records)
    assert same_history(5, 6, 80, records)


def test_rule_1_positions_older_than_the_kept_records_are_unverifiable() -> None:
    found = conflict(2, 10, [record(5, 300), record(6, 400)])
    assert found is not None and not found.verifiable
    assert "older than the oldest epoch record kept" in str(found)
    assert conflict(4, 10, [record(5, 300), record(6, 400)]) is None
    assert conflict(0, 0, [record(5, 300)]) is None

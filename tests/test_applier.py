"""The replica's apply decision: a decision table with exact reasons, and the APPLY property."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacluster.replication.applier import FrameCheck, Verdict, check_frame
from hacluster.replication.frames import BatchFrame


def frame(seq: int, count: int = 1, epoch: int = 5) -> BatchFrame:
    # check_frame() never looks at the WriteBatch bytes.
    return BatchFrame(epoch=epoch, seq=seq, count=count, wb=b"")


TABLE: list[tuple[str, int, int, BatchFrame, Verdict, str]] = [
    ("next single", 10, 5, frame(11), Verdict.APPLY, "batch [11, 11] follows seq 10"),
    ("next multi", 10, 5, frame(11, 4), Verdict.APPLY, "batch [11, 14] follows seq 10"),
    ("first ever", 0, 0, frame(1, 3, epoch=0), Verdict.APPLY, "batch [1, 3] follows seq 0"),
    ("newer epoch", 10, 5, frame(11, epoch=9), Verdict.APPLY, "batch [11, 11] follows seq 10"),
    ("resent last", 10, 5, frame(10), Verdict.SKIP, "batch [10, 10] already applied (at seq 10)"),
    ("resent multi ending here", 10, 5, frame(8, 3), Verdict.SKIP,
     "batch [8, 10] already applied (at seq 10)"),
    ("old batch", 10, 5, frame(2, 2), Verdict.SKIP, "batch [2, 3] already applied (at seq 10)"),
    ("gap of one", 10, 5, frame(12), Verdict.GAP,
     "batch starts at seq 12 but this node is at seq 10: seqs 11..11 missing"),
    ("gap of many", 10, 5, frame(20, 5), Verdict.GAP,
     "batch starts at seq 20 but this node is at seq 10: seqs 11..19 missing"),
    ("gap from empty", 0, 1, frame(7), Verdict.GAP,
     "batch starts at seq 7 but this node is at seq 0: seqs 1..6 missing"),
    ("straddles by one", 10, 5, frame(10, 2), Verdict.OVERLAP,
     "batch [10, 11] straddles this node's position 10: histories differ"),
    ("straddles wide", 10, 5, frame(3, 20), Verdict.OVERLAP,
     "batch [3, 22] straddles this node's position 10: histories differ"),
    ("stale next", 10, 5, frame(11, epoch=4), Verdict.STALE_EPOCH,
     "batch at seq 11 is from epoch 4, older than epoch 5 this node knows"),
    # the epoch check comes first, whatever the position says
    ("stale and applied", 10, 5, frame(3, epoch=1), Verdict.STALE_EPOCH,
     "batch at seq 3 is from epoch 1, older than epoch 5 this node knows"),
    ("stale and gap", 10, 5, frame(99, epoch=0), Verdict.STALE_EPOCH,
     "batch at seq 99 is from epoch 0, older than epoch 5 this node knows"),
    ("stale and overlap", 10, 5, frame(9, 5, epoch=2), Verdict.STALE_EPOCH,
     "batch at seq 9 is from epoch 2, older than epoch 5 this node knows"),
]


@pytest.mark.parametrize(("applied", "epoch", "batch", "verdict", "reason"),
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_decision_table(applied: int, epoch: int, batch: BatchFrame, verdict: Verdict,
                        reason: str) -> None:
    assert check_frame(applied, epoch, batch) == FrameCheck(verdict, reason)


def test_verdict_values() -> None:
    assert {v.value for v in Verdict} == {"apply", "skip", "gap", "overlap", "stale-epoch"}


_seq = st.integers(0, 2**63)


@given(applied=_seq, known=st.integers(0, 100), seq=st.integers(1, 2**63),
       count=st.integers(1, 1000), epoch=st.integers(0, 100))
def test_apply_iff_next_seq_and_current_epoch(applied: int, known: int, seq: int, count: int,
                                              epoch: int) -> None:
    d = check_frame(applied, known, frame(seq, count, epoch))
    assert (d.verdict is Verdict.APPLY) == (seq == applied + 1 and epoch >= known)


@given(applied=st.integers(0, 50), known=st.integers(0, 3), seq=st.integers(1, 60),
       count=st.integers(1, 20), epoch=st.integers(0, 3))
def test_every_verdict_matches_its_definition(applied: int, known: int, seq: int, count: int,
                                              epoch: int) -> None:
    last = seq + count - 1
    d = check_frame(applied, known, frame(seq, count, epoch))
    if epoch < known:
        expected = Verdict.STALE_EPOCH
    elif seq == applied + 1:
        expected = Verdict.APPLY
    elif last <= applied:
        expected = Verdict.SKIP
    elif seq > applied + 1:
        expected = Verdict.GAP
    else:
        expected = Verdict.OVERLAP
        assert seq <= applied < last
    assert d.verdict is expected
    assert d.reason  # every decision explains itself


@given(applied=st.integers(0, 10**6), steps=st.lists(st.integers(1, 50), max_size=30))
def test_applying_in_order_always_applies(applied: int, steps: list[int]) -> None:
    for count in steps:
        d = check_frame(applied, 1, frame(applied + 1, count, epoch=1))
        assert d.verdict is Verdict.APPLY
        applied += count
        # resending the batch just applied is skipped, never re-applied
        assert check_frame(applied, 1, frame(applied - count + 1, count, 1)).verdict is Verdict.SKIP

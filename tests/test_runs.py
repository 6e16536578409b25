"""``split_runs``: which frames of one read a replica writes together. Pure, no I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hacluster.replication.frames import BatchFrame, Frame, Heartbeat, Hello
from hacluster.replication.runs import split_runs


def b(seq: int, size: int = 10, epoch: int = 1) -> BatchFrame:
    return BatchFrame(epoch, seq, 1, b"x" * size)


def test_consecutive_batches_are_one_run_and_other_frames_stand_alone_in_order() -> None:
    hello, hb = Hello(1, "p", 0, ("default",)), Heartbeat(1, 3)
    got = split_runs([hello, b(1), b(2), hb, b(3)], 1000)
    assert got == [hello, [b(1), b(2)], hb, [b(3)]]


def test_an_epoch_change_cuts_a_run() -> None:
    assert split_runs([b(1), b(2, epoch=2), b(3, epoch=2)], 1000) == [
        [b(1)], [b(2, epoch=2), b(3, epoch=2)]]


def test_a_run_stays_within_the_byte_limit_and_a_big_frame_is_a_run_of_its_own() -> None:
    assert split_runs([b(1, 40), b(2, 40), b(3, 40), b(4, 500), b(5, 10)], 100) == [
        [b(1, 40), b(2, 40)], [b(3, 40)], [b(4, 500)], [b(5, 10)]]


frame = st.one_of(
    st.builds(b, st.integers(1, 100), st.integers(0, 60), st.integers(1, 3)),
    st.just(Heartbeat(1, 1)))


@given(st.lists(frame, max_size=30), st.integers(1, 200))
def test_runs_keep_every_frame_in_order_one_epoch_each_within_the_limit(
        frames: list[Frame], limit: int) -> None:
    got = split_runs(frames, limit)
    flat: list[Frame] = []
    for item in got:
        if isinstance(item, list):
            assert item and all(isinstance(f, BatchFrame) for f in item)
            assert len({f.epoch for f in item}) == 1
            assert len(item) == 1 or sum(len(f.wb) for f in item) <= limit
            flat.extend(item)
        else:
            assert not isinstance(item, BatchFrame)
            flat.append(item)
    assert flat == frames

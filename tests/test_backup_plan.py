"""Continuous backup, pure parts: the object envelope, the archive's names and segment format,
and the decisions (which archived ranges the epoch history keeps, where archiving continues,
what a restore replays, what retention deletes). No sockets, no processes."""

from __future__ import annotations

import os

import pytest

from hacluster.backup import BackupError
from hacluster.backup.envelope import Codec, open_sealed, seal
from hacluster.backup.layout import (
    BaseRef,
    Segment,
    SegmentRef,
    decode_segment,
    encode_segment,
    parse_bases,
    parse_segments,
)
from hacluster.backup.plan import (
    Epoch,
    chain,
    kept_through,
    next_seq,
    restore_plan,
    retention,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def seg(first: int, last: int, epoch: int = 1, t0: float = 100.0, t1: float = 101.0) -> SegmentRef:
    return SegmentRef(first, last, epoch, t0, t1)


def base(seq: int, epoch: int = 1, created: float = 1000.0, complete: bool = True) -> BaseRef:
    return BaseRef(f"{seq:020d}-e{epoch:010d}-x", seq, epoch, created, complete)


# -- the envelope ------------------------------------------------------------------------------

@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
@pytest.mark.parametrize("key", [None, KEY])
def test_a_sealed_object_opens_to_its_data(compression: str, key: bytes | None) -> None:
    data = os.urandom(1000) + b"a" * 5000
    codec = Codec(compression, key)
    assert open_sealed(seal(data, codec), codec, "obj") == data


def test_a_flipped_byte_is_reported_as_corruption_naming_the_object() -> None:
    for key in (None, KEY):
        codec = Codec("none", key)
        blob = bytearray(seal(b"hello world" * 100, codec))
        blob[-5] ^= 0xFF
        with pytest.raises(BackupError, match=r"wal/x: (checksum mismatch|corrupted)"):
            open_sealed(bytes(blob), codec, "wal/x")


def test_a_truncated_object_is_reported() -> None:
    blob = seal(b"x" * 1000, Codec("zstd"))
    with pytest.raises(BackupError, match="obj"):
        open_sealed(blob[:20], Codec("zstd"), "obj")
    with pytest.raises(BackupError, match="not a hacluster archive object"):
        open_sealed(b"garbage", Codec("zstd"), "obj")


def test_a_wrong_key_is_named_as_the_wrong_key() -> None:
    blob = seal(b"secret data", Codec("zstd", KEY))
    with pytest.raises(BackupError, match=r"encrypted with another key.*wrong key"):
        open_sealed(blob, Codec("zstd", OTHER_KEY), "obj")
    with pytest.raises(BackupError, match=r"no backup\.encryption_key is configured"):
        open_sealed(blob, Codec("zstd", None), "obj")


def test_the_key_never_appears_in_the_object() -> None:
    blob = seal(b"data" * 100, Codec("none", KEY))
    assert KEY not in blob and KEY.hex().encode() not in blob


# -- names and the segment format ----------------------------------------------------------------

def test_segment_names_round_trip_and_sort_by_seq() -> None:
    refs = [seg(101, 200, 2), seg(1, 100, 1), seg(201, 250, 2)]
    parsed = parse_segments([(r.name, 10) for r in refs] + [("wal/junk", 1)])
    assert [(s.first, s.last, s.epoch) for s in parsed] == [(1, 100, 1), (101, 200, 2),
                                                            (201, 250, 2)]


def test_base_listing_groups_objects_and_sees_the_manifest() -> None:
    bid = "00000000000000000042-e0000000003-20261204T101500Z"
    listing = [(f"base/{bid}/files/CURRENT.00000", 10), (f"base/{bid}/manifest.json", 5),
               ("base/00000000000000000050-e0000000003-20261204T101600Z/files/a.00000", 7)]
    bases = parse_bases(listing)
    assert [(b.seq, b.epoch, b.complete, b.size) for b in bases] == [(42, 3, True, 15),
                                                                     (50, 3, False, 7)]
    assert bases[0].created == 1796379300.0


def test_a_segment_round_trips_and_is_checked_against_its_name() -> None:
    s = Segment(2, ["default", "_hacluster_seq"], "n1",
                [(10, 2, 5.0, b"wb1"), (12, 1, 6.0, b"wb2")])
    ref = SegmentRef(10, 12, 2, 5.0, 6.0)
    assert s.name == ref.name
    back = decode_segment(encode_segment(s), ref, "x")
    assert back.batches == s.batches
    with pytest.raises(BackupError, match="its name says"):
        decode_segment(encode_segment(s), SegmentRef(10, 13, 2, 5.0, 6.0), "x")
    gappy = Segment(2, ["default"], "n1", [(10, 2, 5.0, b"a"), (13, 1, 6.0, b"b")])
    with pytest.raises(BackupError, match="not contiguous"):
        decode_segment(encode_segment(gappy), SegmentRef(10, 13, 2, 5.0, 6.0), "x")


# -- which ranges the history keeps --------------------------------------------------------------

def test_a_range_archived_past_a_later_epochs_start_is_cut_there() -> None:
    # Async mode: epoch 1's primary archived up to 350, but epoch 2 took over at 320.
    history = [Epoch(1, 1), Epoch(2, 320)]
    old = seg(300, 350, 1)
    assert kept_through(old, history, [old]) == 319
    beyond = seg(330, 360, 1)
    assert kept_through(beyond, history, [beyond]) < beyond.first      # superseded


def test_without_a_history_record_a_later_epochs_first_archived_seq_cuts() -> None:
    old, new = seg(1, 100, 1), seg(90, 150, 2)
    assert kept_through(old, [], [old, new]) == 89
    assert kept_through(new, [], [old, new]) == 150


def test_the_chain_continues_across_a_failover_with_no_gap() -> None:
    history = [Epoch(1, 1), Epoch(2, 201)]
    segments = [seg(1, 100, 1), seg(101, 180, 1), seg(181, 260, 2)]
    c = chain(segments, history, 1)
    assert c.top == 260 and c.gap is None
    assert [(s.first, s.last) for s in c.steps] == [(1, 100), (101, 180), (181, 260)]


def test_the_chain_reports_the_first_missing_range() -> None:
    segments = [seg(1, 100), seg(151, 200)]
    c = chain(segments, [], 1)
    assert c.top == 100 and c.gap == (101, 150)


def test_the_chain_ignores_a_superseded_range_and_uses_the_survivor() -> None:
    history = [Epoch(1, 1), Epoch(2, 320)]
    segments = [seg(1, 299, 1), seg(300, 350, 1), seg(320, 400, 2)]
    c = chain(segments, history, 1)
    assert [(s.segment.epoch, s.first, s.last) for s in c.steps] == [
        (1, 1, 299), (1, 300, 319), (2, 320, 400)]


def test_archiving_continues_after_the_chain_from_the_newest_base_backup() -> None:
    history = [Epoch(1, 1), Epoch(2, 201)]
    assert next_seq([], [seg(1, 50)], history) is None            # no base: take one first
    assert next_seq([base(0)], [], history) == 1
    assert next_seq([base(0)], [seg(1, 100), seg(101, 180)], history) == 181
    assert next_seq([base(0), base(500, epoch=2)], [seg(1, 100)], history) == 501
    # A base backup a later epoch superseded (async mode) is not continued from.
    assert next_seq([base(0), base(250, epoch=1)], [seg(1, 100)], history) == 101


# -- restore plans ---------------------------------------------------------------------------------

def test_a_restore_starts_from_the_newest_base_backup_at_or_before_the_target() -> None:
    bases = [base(0, created=10), base(150, created=20)]
    segments = [seg(1, 100, t0=11, t1=12), seg(101, 200, t0=19, t1=25)]
    p = restore_plan(bases, segments, [], to_seq=120)
    assert p.base.seq == 0 and p.target == 120 and p.steps[-1].last == 120
    p = restore_plan(bases, segments, [], to_seq=180)
    assert p.base.seq == 150 and [(s.first, s.last) for s in p.steps] == [(151, 180)]
    p = restore_plan(bases, segments, [])
    assert p.base.seq == 150 and p.target == 200
    p = restore_plan(bases, segments, [], to_time=15)
    assert p.base.seq == 0 and p.target == 100


def test_a_restore_to_a_time_never_starts_from_a_base_of_that_same_second() -> None:
    # A base named for second 20 was taken somewhere in [20, 21): at 20.5 it may hold writes
    # made after 20.4 (a CI-like run restored seq 240 for a time before seq 161 was written).
    bases = [base(0, created=10), base(150, created=20)]
    segments = [seg(1, 100, t0=11, t1=12), seg(101, 200, t0=19.9, t1=20.6)]
    assert restore_plan(bases, segments, [], to_time=20.4).base.seq == 0
    assert restore_plan(bases, segments, [], to_time=21).base.seq == 150
    with pytest.raises(BackupError, match="no base backup at or before that time"):
        restore_plan(bases, segments, [], to_time=10.5)


def test_a_restore_across_a_gap_is_refused_naming_the_range() -> None:
    bases = [base(0)]
    segments = [seg(1, 100), seg(151, 200)]
    with pytest.raises(BackupError, match=r"seqs 101\.\.150 are missing"):
        restore_plan(bases, segments, [], to_seq=180)
    with pytest.raises(BackupError, match=r"seqs 101\.\.150 are missing.*--to-seq 100"):
        restore_plan(bases, segments, [])
    assert restore_plan(bases, segments, [], to_seq=90).target == 90


def test_a_restore_past_the_archive_is_refused() -> None:
    with pytest.raises(BackupError, match="seq 500 is not archived: the archive reaches seq 100"):
        restore_plan([base(0)], [seg(1, 100)], [], to_seq=500)
    with pytest.raises(BackupError, match="no complete base backup"):
        restore_plan([base(0, complete=False)], [seg(1, 100)], [], to_seq=50)


# -- retention -----------------------------------------------------------------------------------

DAY = 86400.0


def test_retention_keeps_the_newest_and_the_young_and_the_wal_they_need() -> None:
    now = 100 * DAY
    bases = [base(100, created=now - 30 * DAY), base(200, created=now - 20 * DAY),
             base(300, created=now - 2 * DAY), base(400, created=now - 1 * DAY)]
    segments = [seg(101, 200), seg(201, 300), seg(301, 400), seg(401, 500)]
    r = retention(bases, segments, [], keep_last=1, keep_days=7, now=now)
    assert [b.seq for b in r.bases] == [100, 200]
    assert [(s.first, s.last) for s in r.segments] == [(101, 200), (201, 300)]
    assert r.oldest_kept_seq == 300
    r = retention(bases, segments, [], keep_last=3, keep_days=0, now=now)
    assert [b.seq for b in r.bases] == [100]


def test_retention_never_deletes_the_only_base_backup_nor_a_fresh_unfinished_one() -> None:
    now = 100 * DAY
    bases = [base(100, created=now - 300 * DAY), base(150, created=now - 10, complete=False),
             base(120, created=now - 3 * DAY, complete=False)]
    r = retention(bases, [seg(101, 200)], [], keep_last=1, keep_days=0, now=now)
    assert [b.seq for b in r.bases] == [120] and r.segments == ()

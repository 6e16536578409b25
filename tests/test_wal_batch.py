"""WriteBatch payload decoding: round trips, truncation, fuzzing, unsupported tags."""

from __future__ import annotations

import pickle
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacluster.wal.batch import (
    DELETE,
    DELETE_RANGE,
    PUT,
    SINGLE_DELETE,
    Op,
    WalBatch,
    cut_batch,
    decode_batch,
    encode_batch,
)
from hacluster.wal.errors import WalCorruption, WalError, WalUnsupported

PATH = "/x/000012.log"


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _slice(b: bytes) -> bytes:
    return _varint(len(b)) + b


def _raw(seq: int, count: int, *entries: bytes) -> bytes:
    return struct.pack("<QI", seq, count) + b"".join(entries)


_keys = st.binary(min_size=0, max_size=40)
_values = st.one_of(st.binary(max_size=40), st.binary(min_size=100, max_size=600))
# CF ids beyond 127 exercise multi-byte varints on the CF path.
_cfs = st.sampled_from([0, 1, 2, 3, 200, 70000])


@st.composite
def _op(draw: st.DrawFn) -> Op:
    kind = draw(st.sampled_from([PUT, DELETE, SINGLE_DELETE, DELETE_RANGE]))
    cf = draw(_cfs)
    key = draw(_keys)
    value = draw(_values) if kind == PUT else draw(_keys) if kind == DELETE_RANGE else b""
    if kind == DELETE_RANGE:  # an end before the start is refused (test_fuzz_batch.py)
        key, value = min(key, value), max(key, value)
    return (kind, cf, key, value)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(seq=st.integers(min_value=0, max_value=2**56), ops=st.lists(_op(), max_size=30))
def test_round_trip(seq: int, ops: list[Op]) -> None:
    payload = encode_batch(seq, ops)
    batch = decode_batch(payload, path=PATH, offset=99, log_number=12)
    assert batch == WalBatch(seq, len(ops), ops, 12, 99)
    assert batch.last_seq == seq + len(ops) - 1


def test_memoryview_and_bytearray_payloads() -> None:
    ops: list[Op] = [(PUT, 1, b"k", b"v" * 300), (DELETE_RANGE, 0, b"a", b"b")]
    payload = encode_batch(7, ops)
    assert decode_batch(memoryview(payload)).ops == ops  # type: ignore[arg-type]
    assert decode_batch(bytearray(payload)).ops == ops  # type: ignore[arg-type]


def test_large_lengths_use_multibyte_varints() -> None:
    ops: list[Op] = [
        (PUT, 0, b"k" * 200, b"v" * 20000),  # 3-byte value length
        (PUT, 5, b"k" * 127, b"v" * 128),  # 1-byte key length, 2-byte value length
        (DELETE_RANGE, 300, b"a" * 130, b"b" * 20000),
    ]
    assert decode_batch(encode_batch(1, ops)).ops == ops


def test_every_truncation_is_corruption() -> None:
    ops: list[Op] = [
        (PUT, 0, b"key-0", b"value"),
        (PUT, 3, b"key-1", b"v" * 200),
        (DELETE, 0, b"key-2", b""),
        (DELETE, 2, b"key-3", b""),
        (SINGLE_DELETE, 0, b"key-4", b""),
        (SINGLE_DELETE, 1, b"key-5", b""),
        (DELETE_RANGE, 0, b"a", b"b"),
        (DELETE_RANGE, 200, b"c", b"d"),
    ]
    payload = encode_batch(10, ops)
    # A LogData entry in the middle must be just as robust.
    payload = payload[:12] + b"\x03" + _slice(b"blob" * 40) + payload[12:]
    assert decode_batch(payload).ops == ops
    for cut in range(len(payload)):
        with pytest.raises(WalCorruption) as info:
            decode_batch(payload[:cut], path=PATH, offset=40321)
        assert info.value.path == PATH
        assert info.value.offset == 40321
        assert str(info.value).startswith(f"corrupt WAL record in {PATH} at offset 40321: ")


@settings(max_examples=500)
@given(data=st.binary(max_size=200))
def test_random_bytes_only_raise_wal_errors(data: bytes) -> None:
    try:
        decode_batch(data)
    except WalError:
        pass


@settings(max_examples=500)
@given(count=st.integers(0, 5), body=st.binary(max_size=120))
def test_random_bodies_behind_a_valid_header(count: int, body: bytes) -> None:
    try:
        batch = decode_batch(_raw(1, count, body))
    except WalError:
        return
    assert len(batch.ops) == count


@settings(max_examples=200)
@given(
    ops=st.lists(_op(), min_size=1, max_size=5), pos=st.integers(0, 10**6), bit=st.integers(0, 7)
)
def test_bit_flips_never_crash(ops: list[Op], pos: int, bit: int) -> None:
    payload = bytearray(encode_batch(1, ops))
    payload[pos % len(payload)] ^= 1 << bit
    try:
        decode_batch(bytes(payload))
    except WalError:
        pass


def test_merge_is_unsupported() -> None:
    payload = _raw(5, 1, b"\x02" + _slice(b"k") + _slice(b"v"))
    with pytest.raises(WalUnsupported) as info:
        decode_batch(payload, path=PATH, offset=40321)
    exc = info.value
    assert exc.tag == 0x2
    assert exc.path == PATH and exc.offset == 40321
    assert str(exc) == f"unsupported WriteBatch entry in {PATH} at offset 40321: tag 0x2 (merge)"


@pytest.mark.parametrize(
    ("tag", "name"),
    [
        (0x6, "column family merge"),
        (0x9, "begin prepare xid"),
        (0xA, "end prepare xid"),
        (0xB, "commit xid"),
        (0xC, "rollback xid"),
        (0xD, "noop"),
        (0x10, "column family blob index"),
        (0x11, "blob index"),
        (0x12, "begin persisted prepare xid"),
        (0x13, "begin unprepare xid"),
        (0x14, "deletion with timestamp"),
        (0x15, "commit xid and timestamp"),
        (0x16, "wide column entity"),
        (0x17, "column family wide column entity"),
        (0x18, "value preferred seqno"),
        (0x7F, "unknown"),
        (0xFF, "unknown"),
    ],
)
def test_other_tags_are_unsupported(tag: int, name: str) -> None:
    # A supported entry first, so the check is not only for the first entry.
    payload = _raw(5, 2, b"\x01" + _slice(b"k") + _slice(b"v"), bytes([tag]) + _slice(b"k"))
    with pytest.raises(WalUnsupported) as info:
        decode_batch(payload, path=PATH, offset=7)
    assert info.value.tag == tag
    assert f"tag {tag:#x} ({name})" in str(info.value)


def test_log_data_is_skipped_and_not_counted() -> None:
    payload = _raw(
        100,
        2,
        b"\x03" + _slice(b"hello"),
        b"\x05" + _varint(2) + _slice(b"k") + _slice(b"v"),
        b"\x03" + _slice(b"x" * 300),
        b"\x07" + _slice(b"gone"),
    )
    batch = decode_batch(payload)
    assert batch.seq == 100 and batch.count == 2 and batch.last_seq == 101
    assert batch.ops == [(PUT, 2, b"k", b"v"), (SINGLE_DELETE, 0, b"gone", b"")]


def test_cf_tags_with_cf_zero_and_plain_tags() -> None:
    payload = _raw(
        1,
        4,
        b"\x04" + _varint(0) + _slice(b"a"),
        b"\x00" + _slice(b"b"),
        b"\x08" + _varint(3) + _slice(b"c"),
        b"\x0e" + _varint(1) + _slice(b"d") + _slice(b"e"),
    )
    assert decode_batch(payload).ops == [
        (DELETE, 0, b"a", b""),
        (DELETE, 0, b"b", b""),
        (SINGLE_DELETE, 3, b"c", b""),
        (DELETE_RANGE, 1, b"d", b"e"),
    ]


@pytest.mark.parametrize("count", [0, 1, 3])
def test_count_mismatch_is_corruption(count: int) -> None:
    payload = _raw(1, count, b"\x01" + _slice(b"k") + _slice(b"v"), b"\x00" + _slice(b"k"))
    with pytest.raises(WalCorruption, match="count mismatch"):
        decode_batch(payload, path=PATH, offset=3)


def test_empty_batch_is_returned() -> None:
    batch = decode_batch(_raw(42, 0))
    assert batch == WalBatch(42, 0, [], 0, 0)
    assert batch.last_seq == 41
    # LogData alone is still an empty batch.
    assert decode_batch(_raw(42, 0, b"\x03" + _slice(b"x"))).ops == []


def test_short_header_and_bad_varint() -> None:
    with pytest.raises(WalCorruption, match="shorter than"):
        decode_batch(b"\x00" * 11, path=PATH)
    too_long = b"\x05" + b"\xff" * 5 + b"\x01" + _slice(b"k") + _slice(b"v")
    with pytest.raises(WalCorruption, match="varint32"):
        decode_batch(_raw(1, 1, too_long))
    over_32_bits = b"\x01" + b"\xff\xff\xff\xff\x7f" + b"k"
    with pytest.raises(WalCorruption):
        decode_batch(_raw(1, 1, over_32_bits))


def test_encode_rejects_bad_ops() -> None:
    with pytest.raises(ValueError):
        encode_batch(1, [(9, 0, b"k", b"")])
    with pytest.raises(ValueError):
        encode_batch(1, [(DELETE, 0, b"k", b"not empty")])


def test_errors_pickle() -> None:
    for exc in (
        WalCorruption(PATH, 5, "checksum mismatch"),
        WalUnsupported(PATH, 6, "tag 0x2 (merge)", 2),
    ):
        clone = pickle.loads(pickle.dumps(exc))
        assert type(clone) is type(exc)
        assert str(clone) == str(exc)
        assert (clone.path, clone.offset) == (exc.path, exc.offset)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(seq=st.integers(min_value=1, max_value=2**56), ops=st.lists(_op(), min_size=2,
                                                                    max_size=30),
       data=st.data())
def test_a_cut_batch_is_the_rest_of_the_batch_from_its_seq(seq: int, ops: list[Op],
                                                           data: st.DataObject) -> None:
    """What a reader starting inside a record sends: the ops from there, as RocksDB would
    have written them alone; checked (and with no ops decoded) as well as decoded."""
    skip = data.draw(st.integers(1, len(ops) - 1))
    whole = decode_batch(encode_batch(seq, ops), offset=5, log_number=3)
    cut = cut_batch(whole, seq + skip)
    assert cut == WalBatch(seq + skip, len(ops) - skip, ops[skip:], 3, 5)
    assert cut.payload == encode_batch(seq + skip, ops[skip:])
    bare = WalBatch(seq, len(ops), [], 3, 5, encode_batch(seq, ops))
    assert cut_batch(bare, seq + skip).payload == cut.payload


def test_a_cut_skips_log_data_before_its_seq_and_keeps_what_follows() -> None:
    payload = _raw(100, 3, b"\x03" + _slice(b"hello"), b"\x01" + _slice(b"a") + _slice(b"1"),
                   b"\x03" + _slice(b"mid"), b"\x0e" + _varint(300) + _slice(b"b") + _slice(b"c"),
                   b"\x03" + _slice(b"end"), b"\x00" + _slice(b"d"))
    cut = cut_batch(decode_batch(payload), 101)
    assert cut.payload == _raw(101, 2, b"\x0e" + _varint(300) + _slice(b"b") + _slice(b"c"),
                               b"\x03" + _slice(b"end"), b"\x00" + _slice(b"d"))
    assert cut.ops == [(DELETE_RANGE, 300, b"b", b"c"), (DELETE, 0, b"d", b"")]
    for outside in (99, 100, 103):
        with pytest.raises(ValueError):
            cut_batch(decode_batch(payload), outside)
    short = WalBatch(100, 3, [], 0, 0, payload[:30])
    with pytest.raises(WalCorruption):
        cut_batch(short, 102)

"""Replication frames: round trips, stream splitting, corruption and limits."""

from __future__ import annotations

import itertools

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hacluster.replication.frames import (
    LENGTH,
    BatchFrame,
    ErrorFrame,
    Frame,
    FrameDecoder,
    FrameError,
    Heartbeat,
    Hello,
    batch_checksum,
    decode_body,
    encode_batch,
    encode_error,
    encode_heartbeat,
    encode_hello,
)
from hacluster.wal import batch as wal
from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT, SINGLE_DELETE, Op, decode_batch

MAX = 1 << 20

OPS: list[Op] = [
    (PUT, 0, b"k1", b"v1"),
    (PUT, 2, b"user:1", b"x" * 300),
    (DELETE, 1, b"gone", b""),
    (SINGLE_DELETE, 0, b"once", b""),
    (DELETE_RANGE, 3, b"a", b"m"),
]


def batch_frame(epoch: int = 3, seq: int = 10, ops: list[Op] | None = None) -> BatchFrame:
    ops = OPS if ops is None else ops
    return BatchFrame(epoch, seq, len(ops), wal.encode_batch(seq, ops))


def encode(frame: Frame) -> bytes:
    if isinstance(frame, Hello):
        return encode_hello(frame)
    if isinstance(frame, BatchFrame):
        return encode_batch(frame.epoch, frame.seq, frame.count, frame.wb)
    if isinstance(frame, Heartbeat):
        return encode_heartbeat(frame.epoch, frame.primary_seq)
    return encode_error(frame.reason)


FRAMES: list[Frame] = [
    Hello(epoch=2, primary="n1", primary_seq=1234, column_families=("default", "users", "e")),
    Hello(epoch=0, primary="p", primary_seq=0, column_families=()),
    batch_frame(),
    batch_frame(epoch=0, seq=1, ops=[(PUT, 0, b"", b"")]),
    Heartbeat(epoch=2, primary_seq=99),
    ErrorFrame("corrupt WAL record in /x/000012.log at offset 7: bad crc"),
    ErrorFrame(""),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_round_trip_each_kind(frame: Frame) -> None:
    data = encode(frame)
    assert LENGTH.unpack_from(data)[0] == len(data) - LENGTH.size
    dec = FrameDecoder(MAX)
    assert dec.feed(data) == [frame]
    assert dec.pending == 0
    assert dec.frames_seen == 1
    assert dec.bytes_seen == len(data)
    assert decode_body(data[LENGTH.size:]) == frame


def test_round_trip_one_byte_at_a_time() -> None:
    stream = b"".join(encode(f) for f in FRAMES)
    dec = FrameDecoder(MAX)
    got: list[Frame] = []
    for i in range(len(stream)):
        got += dec.feed(stream[i:i + 1])
    assert got == FRAMES
    assert dec.pending == 0
    assert dec.frames_seen == len(FRAMES)
    assert dec.bytes_seen == len(stream)


def test_many_frames_in_one_chunk() -> None:
    frames = [*FRAMES, *[Heartbeat(1, i) for i in range(200)]]
    stream = b"".join(encode(f) for f in frames)
    dec = FrameDecoder(MAX)
    assert dec.feed(stream) == frames
    assert dec.pending == 0


@settings(max_examples=100)
@given(cuts=st.lists(st.integers(0, 2000), max_size=10))
def test_any_chunking_gives_the_same_frames(cuts: list[int]) -> None:
    stream = b"".join(encode(f) for f in FRAMES)
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    dec = FrameDecoder(MAX)
    got: list[Frame] = []
    for a, b in itertools.pairwise(bounds):
        got += dec.feed(stream[a:b])
    assert got == FRAMES
    assert dec.pending == 0


def test_batch_frame_carries_a_real_write_batch() -> None:
    frame = batch_frame(epoch=4, seq=500)
    (got,) = FrameDecoder(MAX).feed(encode(frame))
    assert isinstance(got, BatchFrame)
    assert (got.epoch, got.seq, got.count, got.last_seq) == (4, 500, 5, 504)
    decoded = decode_batch(got.wb)
    assert (decoded.seq, decoded.count) == (500, 5)
    assert decoded.ops == OPS


def test_batch_body_fields() -> None:
    frame = batch_frame()
    body = cbor2.loads(encode(frame)[LENGTH.size:])
    assert body == {"t": "batch", "epoch": 3, "seq": 10, "count": 5, "wb": frame.wb,
                    "crc": batch_checksum(3, 10, 5, frame.wb)}


# -- corruption ------------------------------------------------------------------------------

_ops = st.lists(
    st.tuples(st.sampled_from([PUT, DELETE, DELETE_RANGE]), st.integers(0, 300),
              st.binary(max_size=20), st.binary(max_size=40)).map(
        lambda t: (t[0], t[1], t[2], b"" if t[0] == DELETE else t[3])),
    min_size=1, max_size=6)


def _check_flip(data: bytes, original: Frame, pos: int, mask: int) -> None:
    bad = bytearray(data)
    bad[pos] ^= mask
    dec = FrameDecoder(MAX)
    try:
        frames = dec.feed(bytes(bad))
    except FrameError:
        return
    if pos < LENGTH.size and not frames:
        # a longer length: the decoder waits for the rest of the frame
        assert dec.pending == len(bad)
        return
    assert frames == [original], f"flip at byte {pos} (mask {mask:#x}) gave {frames}"


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(epoch=st.integers(0, 2**40), seq=st.integers(1, 2**62), ops=_ops, data=st.data())
def test_single_byte_flip_never_yields_a_different_frame(
        epoch: int, seq: int, ops: list[Op], data: st.DataObject) -> None:
    frame = batch_frame(epoch, seq, ops)
    encoded = encode(frame)
    pos = data.draw(st.integers(0, len(encoded) - 1), label="pos")
    mask = data.draw(st.integers(1, 255), label="mask")
    _check_flip(encoded, frame, pos, mask)


def test_every_single_bit_flip_of_a_batch_frame() -> None:
    frame = batch_frame()
    encoded = encode(frame)
    for pos in range(len(encoded)):
        for bit in range(8):
            _check_flip(encoded, frame, pos, 1 << bit)


def test_flipped_payload_byte_is_a_checksum_mismatch() -> None:
    frame = batch_frame(epoch=3, seq=10)
    encoded = bytearray(encode(frame))
    encoded[encoded.index(b"user:1")] ^= 0x01
    with pytest.raises(FrameError) as info:
        FrameDecoder(MAX).feed(bytes(encoded))
    assert str(info.value) == (
        "frame #1 at stream offset 0: checksum mismatch in batch at seq 10 (epoch 3)")


def test_length_zero_is_an_error() -> None:
    with pytest.raises(FrameError) as info:
        FrameDecoder(MAX).feed(LENGTH.pack(0) + b"\xa0")
    assert str(info.value) == f"frame #1 at stream offset 0: frame length 0 outside 1..{MAX}"


def test_length_over_max_is_an_error_without_waiting_for_the_body() -> None:
    dec = FrameDecoder(1000)
    with pytest.raises(FrameError) as info:
        dec.feed(LENGTH.pack(1001))  # only the prefix: must not wait for 1001 bytes
    assert str(info.value) == "frame #1 at stream offset 0: frame length 1001 outside 1..1000"


def test_length_equal_to_max_is_accepted() -> None:
    frame = ErrorFrame("x" * 50)
    data = encode(frame)
    dec = FrameDecoder(len(data) - LENGTH.size)
    assert dec.feed(data) == [frame]
    with pytest.raises(FrameError):
        FrameDecoder(len(data) - LENGTH.size - 1).feed(data)


def test_truncated_stream_leaves_pending() -> None:
    data = encode(batch_frame())
    for cut in (1, LENGTH.size, LENGTH.size + 1, len(data) - 1):
        dec = FrameDecoder(MAX)
        assert dec.feed(data[:cut]) == []
        assert dec.pending == cut
        assert dec.frames_seen == 0
    # the complete first frame comes out, the partial second stays pending
    dec = FrameDecoder(MAX)
    hb = encode(Heartbeat(1, 2))
    assert dec.feed(hb + data[:-3]) == [Heartbeat(1, 2)]
    assert dec.pending == len(data) - 3
    assert dec.feed(data[-3:]) == [batch_frame()]
    assert dec.pending == 0


def test_batch_header_mismatch_with_write_batch() -> None:
    wb = wal.encode_batch(7, OPS)
    for seq, count in ((5, len(OPS)), (7, len(OPS) + 1), (7, 1)):
        data = encode_batch(1, seq, count, wb)  # the crc is right; the header is not
        with pytest.raises(FrameError) as info:
            FrameDecoder(MAX).feed(data)
        assert str(info.value) == (
            f"frame #1 at stream offset 0: frame says batch [{seq}, {seq + count - 1}] but its "
            "WriteBatch header disagrees")


def test_write_batch_shorter_than_its_header() -> None:
    with pytest.raises(FrameError, match="WriteBatch header disagrees"):
        FrameDecoder(MAX).feed(encode_batch(1, 1, 1, b"\x01\x00"))


@pytest.mark.parametrize(("epoch", "seq", "count"), [(0, 0, 1), (1, 5, 0), (-1, 5, 1)])
def test_bad_batch_header_values(epoch: int, seq: int, count: int) -> None:
    wb = wal.encode_batch(max(seq, 0), OPS[:max(count, 0)])
    body = cbor2.dumps({"t": "batch", "epoch": epoch, "seq": seq, "count": count, "wb": wb,
                        "crc": 0})
    with pytest.raises(FrameError) as info:
        decode_body(body, "here")
    assert str(info.value) == f"here: bad batch header epoch={epoch} seq={seq} count={count}"


@pytest.mark.parametrize(("body", "message"), [
    ({"t": "nope"}, "here: unknown frame kind 'nope'"),
    ({"epoch": 1}, "here: unknown frame kind None"),
    ({"t": "hb", "epoch": 1}, "here: field 'seq' missing or not int"),
    ({"t": "hb", "epoch": True, "seq": 1}, "here: field 'epoch' missing or not int"),
    ({"t": "error"}, "here: field 'reason' missing or not str"),
    ({"t": "hello", "epoch": 1, "primary": "n1", "seq": 1, "cfs": ["a", 2]},
     "here: hello column families must be strings"),
    ({"t": "hello", "epoch": 1, "primary": "n1", "seq": 1, "cfs": "a"},
     "here: field 'cfs' missing or not list"),
    ({"t": "batch", "epoch": 1, "seq": 1, "count": 1, "wb": "text", "crc": 0},
     "here: field 'wb' missing or not bytes"),
    ({"t": "batch", "epoch": 1, "seq": 1, "count": 1, "wb": b"x" * 12},
     "here: field 'crc' missing or not int"),
])
def test_malformed_bodies(body: object, message: str) -> None:
    with pytest.raises(FrameError) as info:
        decode_body(cbor2.dumps(body), "here")
    assert str(info.value) == message


def test_body_that_is_not_a_map() -> None:
    with pytest.raises(FrameError) as info:
        decode_body(cbor2.dumps([1, 2]), "here")
    assert str(info.value) == "here: expected a CBOR map, got list"
    with pytest.raises(FrameError, match=r"^here: not valid CBOR \("):
        decode_body(b"\xff\xff", "here")


@settings(max_examples=500)
@given(data=st.binary(max_size=300))
def test_random_stream_only_raises_frame_error(data: bytes) -> None:
    dec = FrameDecoder(4096)
    try:
        frames = dec.feed(data)
    except FrameError:
        return
    assert dec.frames_seen == len(frames)
    assert dec.bytes_seen == len(data) - dec.pending


@settings(max_examples=500)
@given(body=st.binary(min_size=1, max_size=300))
def test_random_body_with_valid_length_only_raises_frame_error(body: bytes) -> None:
    dec = FrameDecoder(4096)
    try:
        frames = dec.feed(LENGTH.pack(len(body)) + body)
    except FrameError as exc:
        assert str(exc).startswith("frame #1 at stream offset 0: ")
        return
    assert len(frames) == 1
    assert dec.pending == 0


@settings(max_examples=300)
@given(body=st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.binary(max_size=5),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["t", "epoch", "seq", "count", "wb", "crc", "cfs",
                                       "primary", "reason"]), children, max_size=6),
    max_leaves=12))
def test_random_cbor_structures_only_raise_frame_error(body: object) -> None:
    try:
        decode_body(cbor2.dumps(body))
    except FrameError:
        pass


def test_where_names_frame_number_and_offset() -> None:
    first, second = encode(Heartbeat(1, 1)), encode(Hello(1, "n1", 0, ("default",)))
    dec = FrameDecoder(MAX)
    assert dec.where() == "frame #1 at stream offset 0"
    dec.feed(first + second)
    assert dec.where() == f"frame #3 at stream offset {len(first) + len(second)}"
    bad = LENGTH.pack(3) + b"\xff\xff\xff"
    with pytest.raises(FrameError) as info:
        dec.feed(bad)
    assert str(info.value).startswith(
        f"frame #3 at stream offset {len(first) + len(second)}: not valid CBOR")


def test_error_in_a_later_frame_of_the_same_chunk_names_that_frame() -> None:
    first = encode(Heartbeat(1, 1))
    bad = bytearray(encode(batch_frame()))
    bad[-1] ^= 0xFF  # the crc's last byte
    with pytest.raises(FrameError) as info:
        FrameDecoder(MAX).feed(first * 2 + bytes(bad))
    assert str(info.value) == (
        f"frame #3 at stream offset {2 * len(first)}: checksum mismatch in batch at seq 10 "
        "(epoch 3)")

"""Fuzzing the replication stream's frame decoder (``hacluster.replication.frames``).

Random bytes, mutated valid streams, any chunking, truncated streams, huge declared lengths,
fields of the wrong type or range, and CBOR bombs (deep nesting, huge declared arrays, maps
and strings, shared references, colliding map keys): the decoder returns only well-formed
frames, a batch frame only exactly as the primary sent it, and otherwise raises ``FrameError``
naming the frame, in bounded time and memory.

``HACLUSTER_FUZZ_EXAMPLES=N`` multiplies every example count here by N.
"""

from __future__ import annotations

import datetime
import decimal
import itertools
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import example, given
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
from hacluster.wal.batch import DELETE, PUT
from hacluster.wal.batch import encode_batch as encode_wb
from tests.fuzzing import fuzz_settings, time_limit

MAX = 1 << 16
U64 = 2**64 - 1





def encode(frame: Frame) -> bytes:
    if isinstance(frame, Hello):
        return encode_hello(frame)
    if isinstance(frame, BatchFrame):
        return encode_batch(frame.epoch, frame.seq, frame.count, frame.wb)
    if isinstance(frame, Heartbeat):
        return encode_heartbeat(frame.epoch, frame.primary_seq)
    return encode_error(frame.reason)


def check_frame(frame: Frame) -> None:
    """Whatever the decoder returns is well-formed and within range."""
    if isinstance(frame, BatchFrame):
        assert 0 <= frame.epoch <= U64 and 1 <= frame.seq <= U64 and 1 <= frame.count < 2**32
        assert struct.unpack_from("<QI", frame.wb) == (frame.seq, frame.count)
    elif isinstance(frame, Heartbeat):
        assert 0 <= frame.epoch <= U64 and 0 <= frame.primary_seq <= U64
    elif isinstance(frame, Hello):
        assert 0 <= frame.epoch <= U64 and 0 <= frame.primary_seq <= U64
        assert isinstance(frame.primary, str)
        assert all(isinstance(c, str) for c in frame.column_families)
    else:
        assert isinstance(frame, ErrorFrame) and isinstance(frame.reason, str)


def run(stream: bytes, cuts: list[int], max_frame: int = MAX) -> tuple[list[Frame], str | None,
                                                                        FrameDecoder]:
    """Feed ``stream`` in chunks split at ``cuts``; the frames and the error message."""
    dec = FrameDecoder(max_frame)
    frames: list[Frame] = []
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(stream)), len(stream)]
    with time_limit(10):
        try:
            for a, b in itertools.pairwise(bounds):
                got = dec.feed(stream[a:b])
                frames += got
        except FrameError as exc:
            message = str(exc)
            assert message.startswith("frame #"), message
            return frames, message, dec
    for f in frames:
        check_frame(f)
    assert dec.frames_seen == len(frames)
    assert dec.bytes_seen + dec.pending == len(stream)
    return frames, None, dec


# -- streams -------------------------------------------------------------------------------------

text = st.text(max_size=12)
frames_st = st.one_of(
    st.builds(Hello, st.integers(0, U64), text, st.integers(0, U64),
              st.lists(text, max_size=4).map(tuple)),
    st.builds(Heartbeat, st.integers(0, U64), st.integers(0, U64)),
    st.builds(ErrorFrame, text),
    st.builds(lambda e, s, ops: BatchFrame(e, s, len(ops), encode_wb(s, ops)),
              st.integers(0, U64), st.integers(1, 2**62),
              st.lists(st.tuples(st.sampled_from([PUT, DELETE]), st.integers(0, 5),
                                 st.binary(min_size=1, max_size=8),
                                 st.binary(max_size=30)).map(
                  lambda t: (t[0], t[1], t[2], t[3] if t[0] == PUT else b"")),
                       min_size=1, max_size=4)),
)


@fuzz_settings(300)
@given(originals=st.lists(frames_st, min_size=1, max_size=5), data=st.data())
def test_mutated_streams_never_yield_a_different_batch(originals: list[Frame],
                                                       data: st.DataObject) -> None:
    stream = bytearray(b"".join(encode(f) for f in originals))
    n = len(stream)
    how = data.draw(st.sampled_from(["flip", "truncate", "insert", "remove", "length"]))
    if how == "flip":
        pos = data.draw(st.integers(0, n - 1))
        stream[pos] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del stream[data.draw(st.integers(0, n - 1)):]
    elif how == "insert":
        pos = data.draw(st.integers(0, n))
        stream[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    elif how == "remove":
        pos = data.draw(st.integers(0, n - 1))
        del stream[pos:pos + data.draw(st.integers(1, 8))]
    else:  # a frame's length prefix says something else
        starts, pos = [], 0
        for f in originals:
            starts.append(pos)
            pos += len(encode(f))
        at = data.draw(st.sampled_from(starts))
        struct.pack_into(">I", stream, at, data.draw(
            st.integers(0, 2**32 - 1) | st.sampled_from([0, MAX, MAX + 1, 2**32 - 1])))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts")
    frames, error, _dec = run(bytes(stream), cuts)
    for f in frames:
        if isinstance(f, BatchFrame):
            assert f in originals, "a corrupted batch frame was accepted"
    # The same stream in one piece: the same verdict, the same message.
    whole, whole_error, _ = run(bytes(stream), [])
    assert whole_error == error
    if error is None:
        assert whole == frames


@fuzz_settings(300)
@given(stream=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=5))
@example(stream=LENGTH.pack(MAX + 1), cuts=[])
@example(stream=LENGTH.pack(0) + b"\xa0", cuts=[])
@example(stream=LENGTH.pack(2**32 - 1) + b"\x00" * 10, cuts=[1, 2, 3])
def test_random_streams_only_raise_frame_error(stream: bytes, cuts: list[int]) -> None:
    _frames, error, _ = run(stream, cuts)
    assert run(stream, [])[1] == error


# -- bodies with fields of every type ---------------------------------------------------------

odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(2**63, 2**70), st.integers(-2**70, -1),
    st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=16),
    st.builds(lambda: 1 << 20000), st.builds(lambda: -(1 << 20000)),
    st.just(decimal.Decimal("1e999999")),
    st.just(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)),
    st.builds(cbor2.CBORTag, st.just(9999), st.just([1, 2])), st.just(cbor2.undefined),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2),
)
FIELDS = {
    "hello": ["epoch", "primary", "seq", "cfs"],
    "batch": ["epoch", "seq", "count", "wb", "crc"],
    "hb": ["epoch", "seq"],
    "error": ["reason"],
}


@st.composite
def odd_bodies(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from([*FIELDS, "nope"]) | odd_values)
    body: dict[str, Any] = {"t": kind}
    good = {"epoch": 3, "seq": 10, "count": 1, "primary": "n1", "cfs": ["default"],
            "wb": encode_wb(10, [(PUT, 0, b"k", b"v")]), "reason": "r"}
    good["crc"] = batch_checksum(3, 10, 1, good["wb"])
    for name in FIELDS.get(kind, []) if isinstance(kind, str) else []:
        choice = draw(st.sampled_from(["good", "odd", "missing"]))
        if choice == "good":
            body[name] = good[name]
        elif choice == "odd":
            body[name] = draw(odd_values)
    return body


@fuzz_settings(400)
@given(body=odd_bodies())
@example(body={"t": 1 << 20000})
@example(body={"t": "batch", "epoch": 2**64, "seq": 10, "count": 1, "wb": b"x" * 12, "crc": 0})
@example(body={"t": "batch", "epoch": 1, "seq": 2**64, "count": 1, "wb": b"x" * 12, "crc": 0})
@example(body={"t": "batch", "epoch": 1, "seq": 1, "count": 2**32, "wb": b"x" * 12, "crc": 0})
@example(body={"t": "batch", "epoch": 1 << 20000, "seq": -(1 << 20000), "count": 0,
               "wb": b"", "crc": 0})
@example(body={"t": "hb", "epoch": 1, "seq": 1 << 20000})
@example(body={"t": "hello", "epoch": -1, "primary": "p", "seq": 0, "cfs": []})
def test_fields_of_any_type_only_raise_frame_error(body: dict[str, Any]) -> None:
    try:
        data = cbor2.dumps(body)
    except (cbor2.CBOREncodeError, ValueError, TypeError):
        return
    try:
        frame = decode_body(data, "here")
    except FrameError as exc:
        assert str(exc).startswith("here: ")
        assert len(str(exc)) < 1000
        return
    check_frame(frame)


# -- bombs ---------------------------------------------------------------------------------------


def head(major: int, length: int) -> bytes:
    """A CBOR head declaring ``length`` (8-byte form when needed)."""
    if length < 24:
        return bytes([major << 5 | length])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if length < 1 << (8 * size):
            return bytes([major << 5 | info]) + length.to_bytes(size, "big")
    raise ValueError(length)


BOMBS = {
    "deep arrays": b"\x81" * 100_000 + b"\x00",
    "deep maps": b"\xa1\x61a" * 50_000 + b"\x00",
    "deep tags": b"\xd8\x1c" * 50_000 + b"\x00",
    "deep indefinite": b"\x9f" * 50_000,
    "array of 2**32": head(4, 2**32),
    "array of 2**64-1": head(4, 2**64 - 1),
    "map of 2**63": head(5, 2**63),
    "bytes of 2**63": head(2, 2**63) + b"x",
    "text of 2**32": head(3, 2**32) + b"x",
    "indefinite bytes, many chunks": b"\x5f" + b"\x41x" * 20_000 + b"\xff",
    "bignum of 20 KB": b"\xc2" + head(2, 20_000) + b"\xff" * 20_000,
    "self-reference": b"\xd8\x1c\x81\xd8\x1d\x00",
    "undefined shared ref": b"\xd8\x1d\x05",
    "big float exponent": b"\xc5\x82\x1b" + (2**62).to_bytes(8, "big") + b"\x01",
    "decimal exponent": b"\xc4\x82\x1b" + (2**62).to_bytes(8, "big") + b"\x01",
    "set of maps": b"\xd9\x01\x02\x81\xa0",
    "int keys with colliding hashes": head(5, 8000) + b"".join(
        cbor2.dumps(k * (2**61 - 1)) + b"\x00" for k in range(8000)),
    # Compiling this 1 MB pattern took about 30 s: tags 35 and 36 are refused undecoded.
    "regex": b"\xd8\x23" + cbor2.dumps("(a+)+" * 200_000),
    "mime": b"\xd8\x24" + cbor2.dumps("Content-Type: text/plain\n\nhello"),
    "string refs": b"\xd9\x01\x00" + head(4, 5000) + cbor2.dumps("x" * 10) + b"\xd8\x19\x00" * 4999,
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_cbor_bombs_are_refused_quickly_and_cheaply(name: str) -> None:
    body = BOMBS[name]
    tracemalloc.start()
    start = time.monotonic()
    try:
        with time_limit(10), pytest.raises(FrameError) as info:
            FrameDecoder(len(body) + 1).feed(LENGTH.pack(len(body)) + body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 5, name
    assert peak < 64 * len(body) + (8 << 20), (name, peak)
    assert str(info.value).startswith("frame #1 at stream offset 0: ")


@pytest.mark.parametrize("length", [MAX + 1, 2**31, 2**32 - 1])
def test_a_length_over_the_limit_is_refused_before_allocating(length: int) -> None:
    tracemalloc.start()
    try:
        dec = FrameDecoder(MAX)
        with pytest.raises(FrameError, match=f"frame length {length} outside 1..{MAX}"):
            dec.feed(LENGTH.pack(length) + b"\x00" * 100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_a_large_declared_frame_holds_only_what_arrived() -> None:
    """A frame under the limit but far from complete buffers only the bytes received."""
    dec = FrameDecoder(1 << 30)
    tracemalloc.start()
    try:
        for _ in range(100):
            assert dec.feed((LENGTH.pack((1 << 30) - 1) if dec.pending == 0 else b"")
                            + b"\x00" * 1000) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dec.pending == 4 + 100_000
    assert peak < 4 << 20


def test_a_large_frame_in_small_chunks_takes_linear_time() -> None:
    """Regression: every chunk used to copy the whole partial frame, so a 20 MB frame in
    4 KB chunks took 43 s (80 MB: minutes of a blocked event loop). Now a few hundred ms."""
    wb = encode_wb(1, [(PUT, 0, b"k", b"v" * (16 << 20))])
    data = encode_batch(1, 1, 1, wb)
    dec = FrameDecoder(32 << 20)
    frames: list[Frame] = []
    start = time.monotonic()
    with time_limit(60):
        for i in range(0, len(data), 4096):
            frames += dec.feed(data[i:i + 4096])
    assert time.monotonic() - start < 5
    assert frames == [BatchFrame(1, 1, 1, wb)] and dec.pending == 0


def test_colliding_integer_keys_are_refused_up_front() -> None:
    """Regression: a map with integer keys that all hash alike took 0.6 s per 100 KB of frame
    to build (quadratic): a 64 MB frame would have stalled the replica for hours."""
    body = BOMBS["int keys with colliding hashes"]
    start = time.monotonic()
    with pytest.raises(FrameError, match="map key must be a text string or byte string"):
        decode_body(body)
    assert time.monotonic() - start < 1


def test_regular_expressions_are_not_compiled() -> None:
    with pytest.raises(FrameError, match=r"regular expressions \(tag 35\) and MIME messages "
                                         r"\(tag 36\) are not accepted"):
        decode_body(BOMBS["regex"], "here")


@pytest.mark.parametrize(("body", "message"), [
    ({"t": 1 << 20000}, "here: unknown frame kind of type int"),
    ({"t": [1, 2]}, "here: unknown frame kind of type list"),
    ({"t": "x" * 100}, "here: unknown frame kind of type str"),
    ({"t": "batch", "epoch": 2**64, "seq": 10, "count": 1, "wb": b"", "crc": 0},
     "here: bad batch header epoch=a 65-bit integer seq=10 count=1"),
    ({"t": "batch", "epoch": 1, "seq": 10, "count": 2**32, "wb": b"", "crc": 0},
     "here: bad batch header epoch=1 seq=10 count=4294967296"),
    ({"t": "hb", "epoch": 1, "seq": 1 << 20000},
     "here: field 'seq' is a 20001-bit integer, outside 0..2**64-1"),
    ({"t": "hello", "epoch": -1, "primary": "p", "seq": 0, "cfs": []},
     "here: field 'epoch' is -1, outside 0..2**64-1"),
])
def test_regression_out_of_range_fields(body: dict[str, Any], message: str) -> None:
    """Found by fuzzing: a huge integer as the kind escaped as ValueError (str() refuses
    4300+ digits), a batch's epoch/seq/count past 64/32 bits as struct.error from the
    checksum, and a heartbeat's huge seq went on to break /status."""
    with pytest.raises(FrameError) as info:
        decode_body(cbor2.dumps(body), "here")
    assert str(info.value) == message


def test_corpus_streams() -> None:
    """Streams kept from fuzzing sessions (tests/fuzz_regressions/frames): each is refused with
    a FrameError, quickly."""
    corpus = sorted((Path(__file__).parent / "fuzz_regressions" / "frames").glob("*.bin"))
    assert corpus
    for path in corpus:
        start = time.monotonic()
        with time_limit(20), pytest.raises(FrameError):
            FrameDecoder(1 << 20).feed(path.read_bytes())
        assert time.monotonic() - start < 5, path

"""Fuzzing the WriteBatch decoders: ``decode_batch``/``check_batch``/``replay_batch`` in Python
and the C accelerator, on malformed input, and applying through a real ``Store``.

- The C and Python paths agree on accept/reject for every mutated batch (and on the calls made
  when they accept); a rejection is always a ``WalError`` with a message, never anything else.
- A batch the replica's decoder accepts is applied whole by RocksDB (the sequence number moves by
  exactly its count and the contents match a model); a rejected one changes nothing.

``HACLUSTER_FUZZ_EXAMPLES=N`` multiplies every example count here by N.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from hacluster.config import StorageConfig
from hacluster.store import Store
from hacluster.wal import batch as wb
from hacluster.wal.batch import (
    DELETE,
    DELETE_RANGE,
    PUT,
    SINGLE_DELETE,
    Op,
    check_batch,
    decode_batch,
    encode_batch,
    replay_batch,
)
from hacluster.wal.errors import WalCorruption, WalError, WalUnsupported
from tests.fuzzing import fuzz_settings

c_replay = wb._c_replay
needs_c = pytest.mark.skipif(c_replay is None, reason="C accelerator not built")



def varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


# -- generating batches and damaging them ----------------------------------------------------------

keys = st.binary(max_size=12) | st.sampled_from([b"a", b"b", b"k1", b"k2", b"\x00", b"\xff"])


@st.composite
def op_lists(draw: st.DrawFn, cfs: list[int], ordered_ranges: bool = True) -> list[Op]:
    ops: list[Op] = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from([PUT, PUT, DELETE, SINGLE_DELETE, DELETE_RANGE]))
        cf = draw(st.sampled_from(cfs))
        key = draw(keys)
        if kind == PUT:
            value = draw(st.binary(max_size=20) | st.binary(min_size=128, max_size=300))
        elif kind == DELETE_RANGE:
            value = draw(keys)
            if ordered_ranges or draw(st.integers(0, 3)):
                key, value = min(key, value), max(key, value)
        else:
            value = b""
        ops.append((kind, cf, key, value))
    return ops


@st.composite
def raw_batches(draw: st.DrawFn) -> bytes:
    """Valid batches plus LogData entries and non-minimal encodings RocksDB never writes but
    a decoder must still treat consistently."""
    ops = draw(op_lists([0, 1, 2, 127, 128, 300, 2**32 - 1], ordered_ranges=False))
    payload = bytearray(encode_batch(draw(st.integers(0, 2**64 - 1)), ops))
    for _ in range(draw(st.integers(0, 2))):  # LogData between entries
        blob = draw(st.binary(max_size=40))
        pos = draw(st.sampled_from(entry_starts(bytes(payload)) or [12]))
        payload[pos:pos] = b"\x03" + varint(len(blob)) + blob
    return bytes(payload)


def entry_starts(payload: bytes) -> list[int]:
    """Offsets of the entries of a well-formed batch (for splicing)."""
    out = []
    i = 12
    try:
        while i < len(payload):
            out.append(i)
            tag = payload[i]
            i += 1
            if tag in (4, 5, 8, 0xE):
                while payload[i] & 0x80:
                    i += 1
                i += 1
            slices = 2 if tag in (1, 5, 0xE, 0xF) else 1
            for _ in range(slices):
                n, shift = 0, 0
                while True:
                    b = payload[i]
                    i += 1
                    n |= (b & 0x7F) << shift
                    shift += 7
                    if b < 0x80:
                        break
                i += n
    except IndexError:
        pass
    return out


@st.composite
def mutated(draw: st.DrawFn, payload: bytes) -> bytes:
    p = bytearray(payload)
    n = len(p)
    how = draw(st.sampled_from(["flip", "truncate", "insert", "remove", "tag", "varint",
                                "count", "swap", "extend", "header"]))
    starts = entry_starts(payload)
    if how == "flip" and n:
        pos = draw(st.integers(0, n - 1))
        p[pos] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        del p[draw(st.integers(0, n)):]
    elif how == "insert":
        pos = draw(st.integers(0, n))
        p[pos:pos] = draw(st.binary(min_size=1, max_size=6))
    elif how == "remove" and n:
        pos = draw(st.integers(0, n - 1))
        del p[pos:pos + draw(st.integers(1, 6))]
    elif how == "tag" and starts:
        p[draw(st.sampled_from(starts))] = draw(st.integers(0, 0x1A) | st.just(0xFF))
    elif how == "varint" and starts:
        # An over-long or out-of-range varint where a length or a CF id is.
        pos = draw(st.sampled_from(starts)) + 1
        p[pos:pos] = draw(st.sampled_from([b"\x80" * 5 + b"\x00", b"\xff\xff\xff\xff\x7f",
                                           b"\xff\xff\xff\xff\x0f", b"\x80\x00", b"\xff" * 6]))
    elif how == "count" and n >= 12:
        struct.pack_into("<I", p, 8, draw(st.integers(0, 2**32 - 1)))
    elif how == "swap" and len(starts) >= 2:
        a, b = sorted(draw(st.lists(st.sampled_from(starts), min_size=2, max_size=2)))
        if a != b:
            p[a:b] = p[b:b + (b - a)] if b + (b - a) <= n else p[a:b]
    elif how == "extend":
        p += draw(st.binary(min_size=1, max_size=10))
    elif how == "header":
        del p[draw(st.integers(0, min(n, 12))):min(n, 12)]
    return bytes(p)


# -- C and Python agree --------------------------------------------------------------------------


class AllHandles:
    def __getitem__(self, cf: int) -> str:
        return f"cf{cf}"


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def put(self, key: bytes, value: bytes, handle: Any) -> None:
        self.calls.append(("put", key, value, handle))

    def delete(self, key: bytes, handle: Any) -> None:
        self.calls.append(("delete", key, handle))

    def delete_range(self, begin: bytes, end: bytes, handle: Any) -> None:
        self.calls.append(("delete_range", begin, end, handle))


def verdict(fn: Any, payload: bytes) -> Any:
    try:
        return fn(payload)
    except WalError as exc:
        assert str(exc), "an error without a message"
        assert isinstance(exc, WalCorruption | WalUnsupported)
        return type(exc)


def assert_agree(payload: bytes) -> None:
    py = Recorder()
    py_result = verdict(lambda p: wb._replay_batch_py(p, py.put, py.delete, py.delete_range,
                                                      AllHandles()), payload)
    decoded = verdict(decode_batch, payload)
    checked = verdict(check_batch, payload)
    public = Recorder()
    via_public = verdict(lambda p: replay_batch(p, public.put, public.delete,
                                                public.delete_range, AllHandles()), payload)
    if isinstance(py_result, type):
        assert decoded is py_result and checked is py_result and via_public is py_result
    else:
        assert (decoded.seq, decoded.count) == py_result == (checked.seq, checked.count)
        assert via_public == py_result and public.calls == py.calls
        assert len(decoded.ops) == decoded.count
    if c_replay is not None:
        c = Recorder()
        c_result = c_replay.replay(payload, c.put, c.delete, c.delete_range, AllHandles())
        valid = c_replay.validate(payload)
        if isinstance(py_result, type):
            assert c_result is None and valid is None, (payload.hex(), py_result, c_result)
        else:
            assert c_result == py_result == valid, payload.hex()
            assert c.calls == py.calls


@fuzz_settings(600)
@given(payload=raw_batches(), data=st.data())
def test_mutated_batches_c_and_python_agree(payload: bytes, data: st.DataObject) -> None:
    assert_agree(payload)
    for _ in range(3):
        payload = data.draw(mutated(payload), label="mutated")
        assert_agree(payload)


@fuzz_settings(300)
@given(body=st.binary(max_size=64), count=st.integers(0, 4) | st.just(2**32 - 1))
@example(body=b"\x0f\x01z\x01a", count=1)       # range deletion with end < start
@example(body=b"\x0e\x05\x02ab\x01a", count=1)  # the same, with a column family
@example(body=b"\x0f\x01a\x01a", count=1)       # empty range: accepted
@example(body=b"\x0f\x00\x00", count=1)         # empty start and end: accepted
@example(body=b"\x05\x80\x80\x80\x80\x10\x00\x00", count=1)  # CF id of 2**32: too long
def test_random_entries_behind_a_valid_header(body: bytes, count: int) -> None:
    assert_agree(struct.pack("<QI", 7, count) + body)


# -- regressions ---------------------------------------------------------------------------------

INVERTED_RANGE = encode_batch(5, [(PUT, 0, b"a", b"1"), (DELETE_RANGE, 0, b"z", b"a"),
                                  (PUT, 0, b"b", b"2")])


@pytest.mark.parametrize("payload", [
    INVERTED_RANGE,
    encode_batch(5, [(DELETE_RANGE, 3, b"ab", b"a")]),   # a longer start with the end's prefix
    encode_batch(5, [(DELETE_RANGE, 0, b"\x01", b"")]),  # anything sorts after the empty key
])
def test_range_deletion_with_end_before_start_is_refused(payload: bytes) -> None:
    """Found by test_accepted_batches_apply_whole: RocksDB logs such a batch, then fails the
    memtable insert with "end key comes before start key" after applying the entries before
    it, and refuses every later write. Both decoders must refuse it up front."""
    with pytest.raises(WalCorruption, match="range deletion whose end key sorts before its "
                                            "start key"):
        decode_batch(payload, path="/db/000009.log", offset=77)
    with pytest.raises(WalCorruption):
        check_batch(payload)
    with pytest.raises(WalCorruption):
        replay_batch(payload, Recorder().put, Recorder().delete, Recorder().delete_range,
                     AllHandles())
    if c_replay is not None:
        assert c_replay.validate(payload) is None
        assert c_replay.replay(payload, Recorder().put, Recorder().delete,
                               Recorder().delete_range, AllHandles()) is None
    assert_agree(payload)


def test_corpus_batches() -> None:
    """Batches kept from fuzzing sessions (tests/fuzz_regressions/batch): each is refused by
    both decoders with a WalError."""
    corpus = sorted((Path(__file__).parent / "fuzz_regressions" / "batch").glob("*.bin"))
    assert corpus
    for path in corpus:
        payload = path.read_bytes()
        assert isinstance(verdict(decode_batch, payload), type), path
        assert_agree(payload)


@needs_c
def test_equal_and_ordered_ranges_are_accepted_by_both() -> None:
    for begin, end in ((b"a", b"a"), (b"", b""), (b"a", b"ab"), (b"", b"\x00"), (b"a", b"b")):
        payload = encode_batch(1, [(DELETE_RANGE, 0, begin, end)])
        assert c_replay.validate(payload) == (1, 1)
        assert decode_batch(payload).ops == [(DELETE_RANGE, 0, begin, end)]


# -- applying to a real database --------------------------------------------------------------

CFS = ["default", "users", "events"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("fuzz-store") / "db", CFS, StorageConfig())
    yield s
    s.close()


def contents(store: Store) -> dict[str, dict[bytes, bytes]]:
    return {cf: dict(store.items(cf)) for cf in CFS}


def apply_model(model: dict[str, dict[bytes, bytes]], ops: list[Op]) -> None:
    for kind, cf_id, key, value in ops:
        cf = model[CFS[cf_id]]
        if kind == PUT:
            cf[key] = value
        elif kind in (DELETE, SINGLE_DELETE):
            cf.pop(key, None)
        else:
            for k in [k for k in cf if key <= k < value]:
                del cf[k]


@fuzz_settings(200)
@given(ops=op_lists([0, 1, 2, 2, 3], ordered_ranges=False), data=st.data())
@example(ops=[(PUT, 0, b"a", b"1"), (DELETE_RANGE, 0, b"z", b"a"), (PUT, 0, b"b", b"2")],
         data=None)
def test_accepted_batches_apply_whole_rejected_ones_apply_nothing(
        store: Store, ops: list[Op], data: st.DataObject | None) -> None:
    """The replica's apply path, prepare then commit, on a real RocksDB: CF id 3 does not
    exist, ranges may be inverted, and the payload may be mutated after encoding."""
    payload = encode_batch(store.latest_seq() + 1, ops)
    if data is not None and data.draw(st.booleans(), label="mutate"):
        payload = data.draw(mutated(payload), label="mutated")
    before_seq = store.latest_seq()
    before = contents(store)
    handles = store.handles_for(CFS)
    try:
        batch = store.prepare(payload, handles, where="fuzz")
    except (WalError, KeyError) as exc:
        event(f"rejected: {type(exc).__name__}")
        assert str(exc)
        assert store.latest_seq() == before_seq and contents(store) == before
        return
    event("accepted")
    decoded = decode_batch(payload)
    # Accepted: RocksDB must take all of it (an error here would be a half-applied batch).
    store.commit(batch, before_seq + 1, decoded.count, sync=False)
    assert store.latest_seq() == before_seq + decoded.count
    apply_model(before, decoded.ops)
    assert contents(store) == before

"""replay_batch: the C accelerator and the pure-Python decoder must agree on every input.

Differential tests over valid batches, truncations, single-byte mutations and random bytes:
the same calls in the same order, the same (seq, count), and the same verdict on bad input
(the C side returns None where the Python side raises).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacluster.wal import batch as wb
from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT, SINGLE_DELETE, encode_batch
from hacluster.wal.errors import WalCorruption, WalError, WalUnsupported


class AllHandles:
    """Every column-family id has a handle (mutations can produce any id)."""

    def __getitem__(self, cf: int) -> str:
        return f"cf{cf}"


HANDLES = AllHandles()
c_replay = wb._c_replay

ops = st.lists(
    st.tuples(st.sampled_from([PUT, DELETE, SINGLE_DELETE, DELETE_RANGE]),
              st.sampled_from([0, 1, 2, 3, 200, 299]),
              st.binary(max_size=40), st.binary(max_size=300)),
    max_size=30,
).map(lambda xs: [(k, cf, key, v if k in (PUT, DELETE_RANGE) else b"") for k, cf, key, v in xs])
# A range deletion's end must not sort before its start (the decoders refuse it).
ops = ops.map(lambda xs: [(k, cf, *sorted((key, v))) if k == DELETE_RANGE else (k, cf, key, v)
                          for k, cf, key, v in xs])


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def put(self, key: bytes, value: bytes, handle: Any) -> None:
        self.calls.append(("put", key, value, handle))

    def delete(self, key: bytes, handle: Any) -> None:
        self.calls.append(("delete", key, handle))

    def delete_range(self, begin: bytes, end: bytes, handle: Any) -> None:
        self.calls.append(("delete_range", begin, end, handle))


def run_py(payload: bytes) -> tuple[Any, list[tuple[Any, ...]]]:
    rec = Recorder()
    try:
        result: Any = wb._replay_batch_py(payload, rec.put, rec.delete, rec.delete_range,
                                          HANDLES)
    except WalError as exc:
        result = type(exc)
    return result, rec.calls


def run_c(payload: bytes) -> tuple[Any, list[tuple[Any, ...]]]:
    rec = Recorder()
    result = c_replay.replay(payload, rec.put, rec.delete, rec.delete_range, HANDLES)
    return result, rec.calls


def assert_agree(payload: bytes) -> None:
    py_result, py_calls = run_py(payload)
    c_result, c_calls = run_c(payload)
    valid = c_replay.validate(payload)
    if isinstance(py_result, type):  # Python rejected it: C must have said None
        assert c_result is None, (payload, py_result, c_result)
        assert valid is None
        with pytest.raises(py_result):
            wb.check_batch(payload)
    else:
        assert c_result == py_result == valid
        assert c_calls == py_calls
        checked = wb.check_batch(payload)
        assert (checked.seq, checked.count, checked.payload) == (*py_result, payload)


needs_c = pytest.mark.skipif(c_replay is None, reason="C accelerator not built")


def test_c_accelerator_is_built() -> None:
    """CI builds it; a silent fall-back to pure Python would cost a third of apply speed."""
    if os.environ.get("HACLUSTER_PURE_PYTHON_OK") == "1":
        pytest.skip("HACLUSTER_PURE_PYTHON_OK=1: running without the C accelerator is allowed")
    assert wb.C_ACCELERATED, "hacluster.wal._replay was not compiled (is gcc installed?)"


@needs_c
@given(seq=st.integers(1, 2**63), ops=ops)
def test_valid_batches_agree(seq: int, ops: list[Any]) -> None:
    payload = encode_batch(seq, ops)
    assert_agree(payload)
    result, calls = run_c(payload)
    assert result == (seq, len(ops))
    assert len(calls) == len(ops)


@needs_c
@settings(max_examples=300)
@given(seq=st.integers(1, 2**40), ops=ops.filter(bool), data=st.data())
def test_truncations_and_mutations_agree(seq: int, ops: list[Any], data: st.DataObject) -> None:
    payload = encode_batch(seq, ops)
    cut = data.draw(st.integers(0, len(payload) - 1))
    assert_agree(payload[:cut])
    pos = data.draw(st.integers(0, len(payload) - 1))
    flip = data.draw(st.integers(1, 255))
    mutated = payload[:pos] + bytes([payload[pos] ^ flip]) + payload[pos + 1:]
    assert_agree(mutated)


@needs_c
@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_random_bytes_agree(data: bytes) -> None:
    assert_agree(data)
    assert_agree(struct.pack("<QI", 5, 1) + data)


@needs_c
def test_log_data_is_skipped_by_both() -> None:
    payload = struct.pack("<QI", 7, 1) + b"\x03\x03abc" + b"\x01\x01k\x01v"
    assert_agree(payload)
    assert run_c(payload) == ((7, 1), [("put", b"k", b"v", "cf0")])


@needs_c
def test_unsupported_tag_raises_with_its_name() -> None:
    payload = struct.pack("<QI", 7, 1) + b"\x02\x01k\x01v"  # merge
    rec = Recorder()
    with pytest.raises(WalUnsupported, match=r"tag 0x2 \(merge\)"):
        wb.replay_batch(payload, rec.put, rec.delete, rec.delete_range, HANDLES,
                        where="batch at seq 7")


def test_truncated_batch_raises_corruption() -> None:
    payload = encode_batch(3, [(PUT, 1, b"key", b"value")])[:-2]
    rec = Recorder()
    with pytest.raises(WalCorruption, match="truncated"):
        wb.replay_batch(payload, rec.put, rec.delete, rec.delete_range, HANDLES)


def test_unknown_column_family_id_raises_key_error() -> None:
    payload = encode_batch(3, [(PUT, 9, b"key", b"value")])
    rec = Recorder()
    with pytest.raises(KeyError):
        wb.replay_batch(payload, rec.put, rec.delete, rec.delete_range, {0: "cf0"})


def test_callback_errors_propagate() -> None:
    def boom(*args: object) -> None:
        raise RuntimeError("disk on fire")

    payload = encode_batch(3, [(DELETE, 0, b"key", b"")])
    with pytest.raises(RuntimeError, match="disk on fire"):
        wb.replay_batch(payload, boom, boom, boom, HANDLES)

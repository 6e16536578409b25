"""Fuzzing client write bodies (``hacluster.writes.parse_batch``, JSON and CBOR) and the
key/value/column-family checks.

Random and mutated bodies, fields of every type, and CBOR/JSON bombs: the parser returns ops
that are all within the limits, or raises ``BadRequest`` with a message, in bounded time and
memory; never another exception. A batch with one bad op anywhere is rejected whole, and
applying what the parser accepted to a real ``Store`` applies all of it, while a rejected
body applies nothing.

``HACLUSTER_FUZZ_EXAMPLES=N`` multiplies every example count here by N.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hacluster.config import LimitsConfig, StorageConfig
from hacluster.store import Store
from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT
from hacluster.writes import CBOR_TYPE, BadRequest, check_cf, check_key, check_value, parse_batch
from tests.fuzzing import fuzz_settings, time_limit

JSON_TYPE = "application/json"
CFS = ("default", "users", "events")
LIMITS = LimitsConfig(max_key_bytes=16, max_value_bytes=64, max_body_bytes=1 << 16,
                      max_batch_ops=8)





def parse(body: bytes, content_type: str, limits: LimitsConfig = LIMITS) -> list[Any] | str:
    """The ops, or the BadRequest message; any other exception fails the test."""
    with time_limit(10):
        try:
            ops = parse_batch(body, content_type, limits, CFS)
        except BadRequest as exc:
            message = str(exc)
            assert message and len(message) < 2000, message
            return message
    assert 1 <= len(ops) <= limits.max_batch_ops
    for kind, cf, key, value in ops:
        assert kind in (PUT, DELETE, DELETE_RANGE) and cf in CFS
        assert isinstance(key, bytes) and isinstance(value, bytes)
        assert 1 <= len(key) <= limits.max_key_bytes
        if kind == DELETE_RANGE:
            assert 1 <= len(value) <= limits.max_key_bytes and key < value
        elif kind == PUT:
            assert len(value) <= limits.max_value_bytes
        else:
            assert value == b""
    return ops


# -- documents ----------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
    st.text(max_size=20), st.binary(max_size=20), st.builds(lambda: 1 << 20000),
    st.sampled_from(["put", "delete", "delete_range", "default", "users", "events", "merge",
                     "aGVsbG8=", "not base64!", "\ud800", "", "k" * 17, "v" * 65]),
)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)
FIELD_NAMES = ["op", "cf", "key", "value", "start", "end", "key_b64", "value_b64",
               "start_b64", "end_b64"]


@st.composite
def good_ops(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["put", "delete", "delete_range"]))
    op: dict[str, Any] = {"op": kind}
    if draw(st.booleans()):
        op["cf"] = draw(st.sampled_from(CFS))
    key = draw(st.text(min_size=1, max_size=5))
    if kind == "delete_range":
        op["start"], op["end"] = key, key + "z"
    else:
        op["key"] = key
        if kind == "put":
            op["value"] = draw(st.text(max_size=10))
    return op


@st.composite
def odd_ops(draw: st.DrawFn) -> dict[str, Any]:
    op = draw(good_ops())
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES), min_size=1, max_size=3)):
        if draw(st.booleans()):
            op[name] = draw(values)
        else:
            op.pop(name, None)
    return op


documents = st.one_of(
    values,
    st.lists(odd_ops() | good_ops(), max_size=10),
    st.fixed_dictionaries({"ops": st.lists(odd_ops() | good_ops(), max_size=10)}),
)


def encodings(doc: Any) -> list[tuple[bytes, str]]:
    out = []
    try:
        out.append((cbor2.dumps(doc), CBOR_TYPE))
    except (cbor2.CBOREncodeError, ValueError, TypeError):
        pass
    try:
        out.append((json.dumps(doc, default=lambda b: base64.b64encode(b).decode())
                    .encode(), JSON_TYPE))
    except (ValueError, TypeError, OverflowError):
        pass
    return out


@fuzz_settings(400)
@given(doc=documents)
@example(doc=[{"op": 1 << 20000}])
@example(doc=[{"op": "put", "cf": 1 << 20000, "key": "k", "value": "v"}])
@example(doc={"ops": [{"op": "put", "key": "\ud800", "value": "v"}]})
@example(doc=[{"op": "delete_range", "start": "b", "end": "a"}])
def test_documents_of_any_shape_parse_or_are_bad_requests(doc: Any) -> None:
    for body, content_type in encodings(doc):
        parse(body, content_type)


@fuzz_settings(300)
@given(body=st.binary(max_size=200), content_type=st.sampled_from([JSON_TYPE, CBOR_TYPE]))
@example(body=b"[" * 100_000, content_type=JSON_TYPE)
@example(body=b"1" * 5000, content_type=JSON_TYPE)
@example(body=b"\x81" * 100_000 + b"\x00", content_type=CBOR_TYPE)
@example(body=b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", content_type=CBOR_TYPE)
@example(body=b"\xff\xfe[\x00]\x00", content_type=JSON_TYPE)  # UTF-16 with a BOM
def test_random_bodies_are_bad_requests(body: bytes, content_type: str) -> None:
    parse(body, content_type)


@fuzz_settings(300)
@given(ops=st.lists(good_ops(), min_size=1, max_size=6), data=st.data(),
       content_type=st.sampled_from([JSON_TYPE, CBOR_TYPE]))
def test_mutated_valid_bodies(ops: list[dict[str, Any]], data: st.DataObject,
                              content_type: str) -> None:
    body = bytearray(cbor2.dumps(ops) if content_type == CBOR_TYPE else json.dumps(ops).encode())
    for _ in range(data.draw(st.integers(1, 3))):
        how = data.draw(st.sampled_from(["flip", "truncate", "insert", "remove"]))
        pos = data.draw(st.integers(0, max(0, len(body) - 1)))
        if how == "flip" and body:
            body[pos] ^= data.draw(st.integers(1, 255))
        elif how == "truncate":
            del body[pos:]
        elif how == "insert":
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=4))
        else:
            del body[pos:pos + data.draw(st.integers(1, 4))]
    parse(bytes(body), content_type)


@fuzz_settings(200)
@given(good=st.lists(good_ops(), min_size=1, max_size=5), bad=odd_ops(), data=st.data(),
       content_type=st.sampled_from([JSON_TYPE, CBOR_TYPE]))
def test_a_bad_op_anywhere_rejects_the_whole_batch(good: list[dict[str, Any]],
                                                   bad: dict[str, Any], data: st.DataObject,
                                                   content_type: str) -> None:
    bad_alone = encodings([bad])
    if not bad_alone or not all(isinstance(parse(b, t), str) for b, t in bad_alone):
        return  # the mutation happened to leave a valid op
    ops = list(good)
    ops.insert(data.draw(st.integers(0, len(ops))), bad)
    for body, ctype in encodings({"ops": ops}):
        if ctype == content_type:
            assert isinstance(parse(body, ctype, dataclasses.replace(LIMITS, max_batch_ops=100)),
                              str)


@given(key=st.binary(max_size=40), value=st.binary(max_size=80),
       cf=values | st.sampled_from(CFS))
def test_checks_raise_only_bad_request(key: bytes, value: bytes, cf: Any) -> None:
    for check in (lambda: check_key(key, LIMITS, "key"), lambda: check_value(value, LIMITS, "v"),
                  lambda: check_cf(cf, CFS, "cf")):
        try:
            check()
        except BadRequest as exc:
            assert str(exc)


# -- bombs and regressions ---------------------------------------------------------------------


def shared_op_bomb(n: int, value_size: int) -> bytes:
    """``n`` references to one op whose value is a text string of ``value_size`` chars."""
    op = {"op": "put", "key": "k", "value": "v" * value_size}
    return (b"\x99" + n.to_bytes(2, "big") + b"\xd8\x1c" + cbor2.dumps(op)
            + b"\xd8\x1d\x00" * (n - 1))


def test_shared_reference_bomb_is_refused_within_the_body_limit() -> None:
    """Regression: 3000 CBOR shared references to one op with a 1 MB text value decoded into
    3 GB of UTF-8 (the whole 64K-op limit would have been 64 GB): the node's memory, not the
    body size, was the limit."""
    limits = LimitsConfig(max_value_bytes=2 << 20, max_body_bytes=8 << 20,
                          max_batch_ops=100_000)
    body = shared_op_bomb(3000, 1 << 20)
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(BadRequest, match=r"keys and values add up to more than "
                                             r"max_body_bytes \(8388608\)"):
            parse_batch(body, CBOR_TYPE, limits, CFS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 5
    assert peak < 64 << 20


def test_shared_references_within_the_limit_still_work() -> None:
    ops = parse_batch(shared_op_bomb(10, 100), CBOR_TYPE, LimitsConfig(), CFS)
    assert ops == [(PUT, "default", b"k", b"v" * 100)] * 10


def test_string_reference_bomb_is_refused() -> None:
    """String references (tags 256/25) repeat one value without repeating its bytes: the
    total decoded size is held to max_body_bytes as well."""
    ops = [{"op": "put", "key": f"k{i}", "value": "v" * 60} for i in range(4000)]
    body = cbor2.dumps(ops, string_referencing=True)
    limits = LimitsConfig(max_body_bytes=100_000, max_value_bytes=1000, max_batch_ops=10_000)
    assert len(body) < 100_000
    with pytest.raises(BadRequest, match="add up to more than max_body_bytes"):
        parse_batch(body, CBOR_TYPE, limits, CFS)
    assert len(parse_batch(body, CBOR_TYPE, LimitsConfig(), CFS)) == 4000


def test_colliding_integer_map_keys_are_refused_up_front() -> None:
    """Regression: a map whose 8000 integer keys share one hash took 0.6 s to build (a 1 MB
    body: about a minute of the event loop); now maps may only have string keys."""
    body = b"\x81\xb9\x1f\x40" + b"".join(cbor2.dumps(k * (2**61 - 1)) + b"\x00"
                                          for k in range(8000))
    start = time.monotonic()
    with pytest.raises(BadRequest, match="map key must be a text string or byte string"):
        parse_batch(body, CBOR_TYPE, LimitsConfig(), CFS)
    assert time.monotonic() - start < 1


def test_regular_expression_tag_is_not_compiled() -> None:
    """Regression: cbor2 compiled tag-35 patterns while decoding: 1 MB took ~30 s."""
    body = cbor2.dumps([{"op": "put", "key": "k",
                         "value": cbor2.CBORTag(35, "(a+)+" * 200_000)}])
    start = time.monotonic()
    with pytest.raises(BadRequest, match=r"tag 35\) and MIME messages \(tag 36\) are not "
                                         "accepted"):
        parse_batch(body, CBOR_TYPE, LimitsConfig(), CFS)
    assert time.monotonic() - start < 2


@pytest.mark.parametrize(("doc", "message"), [
    ([{"op": 1 << 20000}],
     "ops[0].op: expected one of put, delete, delete_range, got <20001-bit integer>"),
    ([{"op": "put", "cf": -(1 << 20000), "key": "k", "value": "v"}],
     "ops[0].cf: unknown column family <20001-bit integer>"),
    ([{"op": ["x" * 1000] * 1000}],
     "ops[0].op: expected one of put, delete, delete_range, got "
     "['xxxxxxxxxxxxxxxxxxxx'..., 'xxxxxxxxxxxxxxxxxxxx'..., 'xxxxxxxxxxxxxxxxxxxx'..., "
     "'xxxxxxxxxxxxxxxxxxxx'..., ...]"),
])
def test_regression_huge_values_in_messages(doc: Any, message: str) -> None:
    """Found by fuzzing: a CBOR bignum as the op name or column family escaped as ValueError
    ("Exceeds the limit (4300 digits) for integer string conversion") from the error
    message's repr: a 500 instead of a 400."""
    with pytest.raises(BadRequest) as info:
        parse_batch(cbor2.dumps(doc), CBOR_TYPE, LimitsConfig(), CFS)
    assert str(info.value) == message


# -- applying to a real database --------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("fuzz-writes") / "db", list(CFS), StorageConfig())
    yield s
    s.close()


@fuzz_settings(150)
@given(doc=documents, content_type=st.sampled_from([JSON_TYPE, CBOR_TYPE]))
def test_parsed_batches_apply_whole_or_not_at_all(store: Store, doc: Any,
                                                  content_type: str) -> None:
    bodies = [b for b, t in encodings(doc) if t == content_type]
    if not bodies:
        return
    before_seq = store.latest_seq()
    before = {cf: dict(store.items(cf)) for cf in CFS}
    result = parse(bodies[0], content_type)
    if isinstance(result, str):
        assert store.latest_seq() == before_seq
        return
    applied = store.write(result)
    # each op and its key's seq record take a seq
    assert (applied.first_seq, applied.last_seq) == (before_seq + 1,
                                                     before_seq + 2 * len(result))
    written: set[tuple[str, bytes]] = set()  # keys this batch leaves written
    for kind, cf, key, value in result:
        if kind == PUT:
            before[cf][key] = value
            written.add((cf, key))
        elif kind == DELETE:
            before[cf].pop(key, None)
            written.discard((cf, key))
        else:
            for k in [k for k in before[cf] if key <= k < value]:
                del before[cf][k]
            written -= {(c, k) for c, k in written if c == cf and key <= k < value}
    assert {cf: dict(store.items(cf)) for cf in CFS} == before
    for cf, key in written:
        assert store.key_seq(key, cf) == applied.last_seq


def test_corpus_bodies() -> None:
    """Bodies kept from fuzzing sessions (tests/fuzz_regressions/writes): each is a
    BadRequest, quickly (``*.cbor`` as CBOR, ``*.json`` as JSON)."""
    corpus = sorted((Path(__file__).parent / "fuzz_regressions" / "writes").iterdir())
    assert corpus
    limits = LimitsConfig(max_body_bytes=1 << 20)
    for path in corpus:
        content_type = CBOR_TYPE if path.suffix == ".cbor" else JSON_TYPE
        start = time.monotonic()
        assert isinstance(parse(path.read_bytes(), content_type, limits), str), path
        assert time.monotonic() - start < 5, path

"""Client write bodies: JSON and CBOR formats, base64 fields, limits, and exact error messages."""

from __future__ import annotations

import base64
import json
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacluster.config import LimitsConfig
from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT
from hacluster.writes import CBOR_TYPE, BadRequest, parse_batch

JSON_TYPE = "application/json"
CFS = ("default", "users", "events")
SMALL = LimitsConfig(max_key_bytes=8, max_value_bytes=16, max_body_bytes=1024, max_batch_ops=4)
BIG = LimitsConfig()


def parse_json(doc: Any, limits: LimitsConfig = BIG) -> list[Any]:
    return parse_batch(json.dumps(doc).encode(), JSON_TYPE, limits, CFS)


def parse_cbor(doc: Any, limits: LimitsConfig = BIG) -> list[Any]:
    return parse_batch(cbor2.dumps(doc), CBOR_TYPE, limits, CFS)


def error_json(doc: Any, limits: LimitsConfig = BIG) -> str:
    with pytest.raises(BadRequest) as info:
        parse_json(doc, limits)
    return str(info.value)


def error_cbor(doc: Any, limits: LimitsConfig = BIG) -> str:
    with pytest.raises(BadRequest) as info:
        parse_cbor(doc, limits)
    return str(info.value)


# -- accepted bodies -------------------------------------------------------------------------


def test_json_ops_map() -> None:
    ops = parse_json({"ops": [
        {"op": "put", "key": "a", "value": "1"},
        {"op": "put", "cf": "users", "key": "ü", "value": ""},
        {"op": "delete", "cf": "events", "key": "b"},
        {"op": "delete_range", "start": "c", "end": "d"},
    ]})
    assert ops == [
        (PUT, "default", b"a", b"1"),
        (PUT, "users", "ü".encode(), b""),
        (DELETE, "events", b"b", b""),
        (DELETE_RANGE, "default", b"c", b"d"),
    ]


def test_json_bare_list() -> None:
    assert parse_json([{"op": "put", "key": "k", "value": "v"}]) == [(PUT, "default", b"k", b"v")]


def test_json_base64_fields() -> None:
    raw_key, raw_value = b"\x00\xffkey", bytes(range(256))
    ops = parse_json([
        {"op": "put", "key_b64": base64.b64encode(raw_key).decode(),
         "value_b64": base64.b64encode(raw_value).decode()},
        {"op": "delete_range", "start_b64": base64.b64encode(b"\x00").decode(),
         "end_b64": base64.b64encode(b"\x01").decode()},
    ])
    assert ops == [(PUT, "default", raw_key, raw_value),
                   (DELETE_RANGE, "default", b"\x00", b"\x01")]


def test_plain_field_wins_over_base64() -> None:
    ops = parse_json([{"op": "put", "key": "plain", "key_b64": "Ym9ndXM=", "value": "v"}])
    assert ops == [(PUT, "default", b"plain", b"v")]


def test_cbor_bytes_and_strings() -> None:
    ops = parse_cbor({"ops": [
        {"op": "put", "key": b"\x00\x01", "value": b"\xff" * 10},
        {"op": "put", "cf": "users", "key": "text", "value": "ok"},
        {"op": "delete_range", "cf": "events", "start": b"a", "end": b"b"},
        {"op": "delete", "key": b"k"},
    ]})
    assert ops == [
        (PUT, "default", b"\x00\x01", b"\xff" * 10),
        (PUT, "users", b"text", b"ok"),
        (DELETE_RANGE, "events", b"a", b"b"),
        (DELETE, "default", b"k", b""),
    ]


def test_cbor_bare_list_and_base64() -> None:
    ops = parse_cbor([{"op": "put", "key_b64": "AAE=", "value": b""}])
    assert ops == [(PUT, "default", b"\x00\x01", b"")]


def test_delete_ignores_a_value() -> None:
    assert parse_json([{"op": "delete", "key": "k", "value": "x" * 100}], SMALL) == [
        (DELETE, "default", b"k", b"")]


def test_limits_are_inclusive() -> None:
    ops = parse_json([{"op": "put", "key": "k" * 8, "value": "v" * 16},
                      {"op": "delete_range", "start": "a" * 8, "end": "b" * 8}], SMALL)
    assert ops == [(PUT, "default", b"k" * 8, b"v" * 16),
                   (DELETE_RANGE, "default", b"a" * 8, b"b" * 8)]
    assert len(parse_json([{"op": "delete", "key": "k"}] * 4, SMALL)) == 4


def test_json_content_type_is_the_default() -> None:
    body = json.dumps([{"op": "delete", "key": "k"}]).encode()
    assert parse_batch(body, "text/plain", BIG, CFS) == [(DELETE, "default", b"k", b"")]
    # a CBOR body is only CBOR with the exact content type
    with pytest.raises(BadRequest, match=r"^body is not valid JSON: "):
        parse_batch(cbor2.dumps([{"op": "delete", "key": "k"}]), JSON_TYPE, BIG, CFS)


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"{", b"[1,", b"nope", b"\xff\xfe\x00"])
def test_bad_json(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_batch(body, JSON_TYPE, BIG, CFS)
    assert str(info.value).startswith("body is not valid JSON: ")


@pytest.mark.parametrize("body", [b"", b"\xff", b"\x9f", b"\x5a\x00\x00\x00\x10ab"])
def test_bad_cbor(body: bytes) -> None:
    with pytest.raises(BadRequest) as info:
        parse_batch(body, CBOR_TYPE, BIG, CFS)
    assert str(info.value).startswith("body is not valid CBOR: ")


@pytest.mark.parametrize("doc", [[], {"ops": []}, {}, {"op": "put"}, "ops", 5, None,
                                 {"ops": {"op": "put"}}])
def test_empty_or_not_a_list(doc: Any) -> None:
    message = "body must be a non-empty list of ops, or a map with 'ops'"
    assert error_json(doc) == message
    assert error_cbor(doc) == message


def test_too_many_ops() -> None:
    ops = [{"op": "delete", "key": "k"}] * 5
    assert error_json(ops, SMALL) == "5 ops exceed max_batch_ops (4)"
    assert error_cbor({"ops": ops}, SMALL) == "5 ops exceed max_batch_ops (4)"


GOOD = {"op": "put", "key": "k", "value": "v"}

ERRORS: list[tuple[str, Any, str]] = [
    ("not-a-map", "put", "ops[1]: expected a map"),
    ("unknown-op", {"op": "merge", "key": "k", "value": "v"},
     "ops[1].op: expected one of put, delete, delete_range, got 'merge'"),
    ("missing-op", {"key": "k"}, "ops[1].op: expected one of put, delete, delete_range, got None"),
    ("op-case", {"op": "PUT", "key": "k", "value": "v"},
     "ops[1].op: expected one of put, delete, delete_range, got 'PUT'"),
    ("unknown-cf", {"op": "put", "cf": "nope", "key": "k", "value": "v"},
     "ops[1].cf: unknown column family 'nope'"),
    ("cf-not-string", {"op": "put", "cf": 1, "key": "k", "value": "v"},
     "ops[1].cf: unknown column family 1"),
    ("cf-null", {"op": "delete", "cf": None, "key": "k"},
     "ops[1].cf: unknown column family None"),
    ("empty-key", {"op": "put", "key": "", "value": "v"}, "ops[1].key: key must not be empty"),
    ("empty-key-b64", {"op": "delete", "key_b64": ""}, "ops[1].key: key must not be empty"),
    ("oversize-key", {"op": "put", "key": "k" * 9, "value": "v"},
     "ops[1].key: key of 9 bytes exceeds max_key_bytes (8)"),
    ("oversize-utf8-key", {"op": "delete", "key": "ü" * 5},
     "ops[1].key: key of 10 bytes exceeds max_key_bytes (8)"),
    ("oversize-value", {"op": "put", "key": "k", "value": "v" * 17},
     "ops[1].value: value of 17 bytes exceeds max_value_bytes (16)"),
    ("oversize-b64-value", {"op": "put", "key": "k",
                            "value_b64": base64.b64encode(b"\x00" * 17).decode()},
     "ops[1].value: value of 17 bytes exceeds max_value_bytes (16)"),
    ("missing-key", {"op": "put", "value": "v"}, "ops[1]: missing 'key'"),
    ("missing-value", {"op": "put", "key": "k"}, "ops[1]: missing 'value'"),
    ("key-not-string", {"op": "delete", "key": 5}, "ops[1].key: expected a string or bytes"),
    ("value-not-string", {"op": "put", "key": "k", "value": [1]},
     "ops[1].value: expected a string or bytes"),
    ("bad-b64", {"op": "put", "key_b64": "!!!", "value": "v"},
     "ops[1].key_b64: not valid base64"),
    ("b64-padding", {"op": "put", "key_b64": "AAE", "value": "v"},
     "ops[1].key_b64: not valid base64"),
    ("b64-not-string", {"op": "put", "key_b64": 1, "value": "v"},
     "ops[1].key_b64: expected a base64 string"),
    ("range-missing-end", {"op": "delete_range", "start": "a"}, "ops[1]: missing 'end'"),
    ("range-equal", {"op": "delete_range", "start": "a", "end": "a"},
     "ops[1]: delete_range needs start < end"),
    ("range-reversed", {"op": "delete_range", "start": "b", "end": "a"},
     "ops[1]: delete_range needs start < end"),
    ("range-empty-start", {"op": "delete_range", "start": "", "end": "a"},
     "ops[1].start: key must not be empty"),
    ("range-oversize-end", {"op": "delete_range", "start": "a", "end": "z" * 9},
     "ops[1].end: key of 9 bytes exceeds max_key_bytes (8)"),
]


@pytest.mark.parametrize(("op", "message"), [(op, m) for _, op, m in ERRORS],
                         ids=[e[0] for e in ERRORS])
def test_op_errors_json_and_cbor(op: Any, message: str) -> None:
    body = [GOOD, op, GOOD]
    assert error_json(body, SMALL) == message
    assert error_cbor({"ops": body}, SMALL) == message


def test_cbor_byte_key_over_limit() -> None:
    assert error_cbor([{"op": "put", "key": b"\x00" * 9, "value": b""}], SMALL) == (
        "ops[0].key: key of 9 bytes exceeds max_key_bytes (8)")


def test_cbor_byte_range_compared_as_bytes() -> None:
    assert error_cbor([{"op": "delete_range", "start": b"\xff", "end": b"\x00"}]) == (
        "ops[0]: delete_range needs start < end")


_good_op = st.one_of(
    st.builds(lambda k, v: {"op": "put", "key": k, "value": v},
              st.text(min_size=1, max_size=2), st.text(max_size=4)),
    st.builds(lambda k, cf: {"op": "delete", "cf": cf, "key": k},
              st.text(min_size=1, max_size=2), st.sampled_from(CFS)),
    st.builds(lambda a: {"op": "delete_range", "start": a, "end": a + "\x00"},
              st.text(min_size=1, max_size=1)),
)
_bad_op = st.sampled_from([op for _, op, _ in ERRORS if isinstance(op, dict)])


@given(ops=st.lists(_good_op, min_size=1, max_size=8), bad=_bad_op, data=st.data())
def test_one_bad_op_anywhere_rejects_the_whole_batch(ops: list[dict[str, Any]],
                                                     bad: dict[str, Any],
                                                     data: st.DataObject) -> None:
    assert len(parse_json(ops)) == len(ops)
    at = data.draw(st.integers(0, len(ops)), label="at")
    body = [*ops[:at], bad, *ops[at:]]
    with pytest.raises(BadRequest) as info:
        parse_json(body, LimitsConfig(max_key_bytes=8, max_value_bytes=16, max_batch_ops=100))
    assert str(info.value).startswith(f"ops[{at}]")


@given(ops=st.lists(st.tuples(st.binary(min_size=1, max_size=8), st.binary(max_size=16)),
                    min_size=1, max_size=4))
def test_cbor_and_base64_json_agree(ops: list[tuple[bytes, bytes]]) -> None:
    as_cbor = parse_cbor([{"op": "put", "key": k, "value": v} for k, v in ops], SMALL)
    as_json = parse_json([{"op": "put", "key_b64": base64.b64encode(k).decode(),
                           "value_b64": base64.b64encode(v).decode()} for k, v in ops], SMALL)
    assert as_cbor == as_json == [(PUT, "default", k, v) for k, v in ops]


# Regression tests for inputs that once escaped as non-BadRequest exceptions (HTTP 500).

def test_op_name_that_is_not_a_string() -> None:
    for bad in (["put"], {"x": 1}):
        msg = error_json({"ops": [{"op": bad, "key": "k", "value": "v"}]})
        assert msg.startswith("ops[0].op: expected one of put, delete, delete_range")


def test_lone_surrogate_in_json_key() -> None:
    body = b'{"ops": [{"op": "put", "key": "\\ud800", "value": "x"}]}'
    with pytest.raises(BadRequest, match=r"ops\[0\]\.key: not valid Unicode text"):
        parse_batch(body, "application/json", BIG, CFS)


def test_trailing_bytes_after_cbor_are_refused() -> None:
    body = cbor2.dumps({"ops": [{"op": "delete", "key": b"k"}]}) + b"\x00\x01"
    with pytest.raises(BadRequest, match="2 bytes after the CBOR value"):
        parse_batch(body, CBOR_TYPE, BIG, CFS)


def test_deeply_nested_json_is_a_bad_request() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(BadRequest, match="not valid JSON: RecursionError"):
        parse_batch(body, "application/json", BIG, CFS)

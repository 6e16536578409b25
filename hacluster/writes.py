"""Parsing client write requests into store ops: the validation half of the write gate.

Owns the request formats of ``PUT /v1/kv/{key}`` and ``POST /v1/batch`` (JSON, or CBOR with
``Content-Type: application/cbor``) and their limits. Pure: bytes in, ops or a ``BadRequest``
out. It must never let a malformed or oversized op through, so that nothing is half-applied:
the whole batch is validated before anything is written.

Batch body: ``{"ops": [op, ...]}`` or a bare list. Each op is a map with ``op`` one of ``put``,
``delete``, ``delete_range``; ``cf`` (default ``default``); ``key`` and ``value`` for put,
``key`` for delete, ``start`` and ``end`` for delete_range. In JSON, keys and values are UTF-8
strings, or base64 in ``key_b64``/``value_b64``/``start_b64``/``end_b64``; in CBOR they may be
byte strings.

Transaction body (``POST /v1/txn``): ``{"compare": [cmp, ...], "then": [op, ...], "else":
[op, ...]}``. Each compare names ``key`` (and ``cf``) and exactly one test: ``seq`` (the key was
last written at that seq; 0 = it does not exist), ``value`` (its value equals this), or
``exists`` (true or false). Compares, then-ops and else-ops together are at most
``max_batch_ops``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import cbor2

from hacluster.config import LimitsConfig, brief
from hacluster.store import NamedOp
from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT

CBOR_TYPE = "application/cbor"
_KINDS = {"put": PUT, "delete": DELETE, "delete_range": DELETE_RANGE}


def _refuse_tag(value: Any, immutable: bool) -> Any:
    raise cbor2.CBORDecodeError("regular expressions (tag 35) and MIME messages (tag 36) are "
                                "not accepted")


# cbor2 would compile or parse these from untrusted bytes as it decodes them.
_REFUSED_TAGS = {35: _refuse_tag, 36: _refuse_tag}


class BadRequest(Exception):
    """The request is malformed or over a limit; the message is safe to show the client."""


def _bytes_field(op: dict[str, Any], name: str, at: str, required: bool = True) -> bytes:
    if name in op:
        value = op[name]
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(f"{at}.{name}: not valid Unicode text") from None
        raise BadRequest(f"{at}.{name}: expected a string or bytes")
    b64 = f"{name}_b64"
    if b64 in op:
        if not isinstance(op[b64], str):
            raise BadRequest(f"{at}.{b64}: expected a base64 string")
        try:
            return base64.b64decode(op[b64], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{at}.{b64}: not valid base64") from None
    if required:
        raise BadRequest(f"{at}: missing {name!r}")
    return b""


def check_key(key: bytes, limits: LimitsConfig, where: str) -> None:
    if not key:
        raise BadRequest(f"{where}: key must not be empty")
    if len(key) > limits.max_key_bytes:
        raise BadRequest(f"{where}: key of {len(key)} bytes exceeds max_key_bytes "
                         f"({limits.max_key_bytes})")


def check_value(value: bytes, limits: LimitsConfig, where: str) -> None:
    if len(value) > limits.max_value_bytes:
        raise BadRequest(f"{where}: value of {len(value)} bytes exceeds max_value_bytes "
                         f"({limits.max_value_bytes})")


def check_cf(cf: Any, column_families: Collection[str], where: str) -> str:
    if not isinstance(cf, str) or cf not in column_families:
        raise BadRequest(f"{where}: unknown column family {brief(cf)}")
    return cf


def decode_body(body: bytes, content_type: str) -> Any:
    """The request document: CBOR with ``Content-Type: application/cbor``, else JSON."""
    if content_type == CBOR_TYPE:
        try:
            stream = io.BytesIO(body)
            # Only text and byte strings as map keys: integer keys with colliding hashes make
            # building a map quadratic (a minute for a 1 MB body). No regular expressions or
            # MIME messages: compiling a 1 MB pattern takes half a minute.
            doc = cbor2.CBORDecoder(stream, strict_hashable_types=True,
                                    semantic_decoders=_REFUSED_TAGS).decode()
        except Exception as exc:  # cbor2 raises many types on garbage
            cause = f": {exc.__cause__}" if exc.__cause__ else ""
            raise BadRequest(f"body is not valid CBOR: {exc}{cause}") from None
        if stream.tell() != len(body):
            raise BadRequest(f"body has {len(body) - stream.tell()} bytes after the CBOR value")
        return doc
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {type(exc).__name__}: {exc}") from None


def parse_batch(body: bytes, content_type: str, limits: LimitsConfig,
                column_families: Collection[str]) -> list[NamedOp]:
    doc = decode_body(body, content_type)
    raw = doc.get("ops") if isinstance(doc, dict) else doc
    if not isinstance(raw, list) or not raw:
        raise BadRequest("body must be a non-empty list of ops, or a map with 'ops'")
    if len(raw) > limits.max_batch_ops:
        raise BadRequest(f"{len(raw)} ops exceed max_batch_ops ({limits.max_batch_ops})")
    ops, _ = parse_ops(raw, "ops", limits, column_families, limits.max_body_bytes)
    return ops


def parse_ops(raw: list[Any], where: str, limits: LimitsConfig,
              column_families: Collection[str], budget: int) -> tuple[list[NamedOp], int]:
    """The ops of ``raw`` (a list already checked), and what is left of ``budget``.

    Keys and values add up to at most the body's size, unless CBOR shared or string
    references repeat one value: 3000 references to a 1 MB text value would otherwise decode
    into 3 GB of UTF-8. ``budget`` (the largest body the node accepts) bounds them.
    """
    ops: list[NamedOp] = []
    for i, op in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(op, dict):
            raise BadRequest(f"{at}: expected a map")
        name = op.get("op")
        kind = _KINDS.get(name) if isinstance(name, str) else None
        if kind is None:
            raise BadRequest(f"{at}.op: expected one of put, delete, delete_range, "
                             f"got {brief(op.get('op'))}")
        cf = check_cf(op.get("cf", "default"), column_families, f"{at}.cf")
        if kind == DELETE_RANGE:
            start = _bytes_field(op, "start", at)
            end = _bytes_field(op, "end", at)
            check_key(start, limits, f"{at}.start")
            check_key(end, limits, f"{at}.end")
            if start >= end:
                raise BadRequest(f"{at}: delete_range needs start < end")
            budget = _spend(budget, len(start) + len(end), limits, at)
            ops.append((kind, cf, start, end))
            continue
        key = _bytes_field(op, "key", at)
        check_key(key, limits, f"{at}.key")
        value = _bytes_field(op, "value", at) if kind == PUT else b""
        check_value(value, limits, f"{at}.value")
        budget = _spend(budget, len(key) + len(value), limits, at)
        ops.append((kind, cf, key, value))
    return ops, budget


def _spend(budget: int, size: int, limits: LimitsConfig, at: str) -> int:
    if size > budget:
        raise BadRequest(f"{at}: keys and values add up to more than max_body_bytes "
                         f"({limits.max_body_bytes}); CBOR shared or string references "
                         "cannot repeat data past that")
    return budget - size


SEQ_MAX = (1 << 63) - 1
_COMPARE_FIELDS = frozenset({"cf", "key", "key_b64", "seq", "value", "value_b64", "exists"})
_TXN_FIELDS = frozenset({"compare", "then", "else"})


@dataclass(slots=True)
class Compare:
    """One condition of a transaction: the key's seq, its value, or whether it exists."""

    cf: str
    key: bytes
    test: str                  # "seq", "value" or "exists"
    seq: int = 0
    value: bytes = b""
    exists: bool = False

    def holds(self, value: bytes | None, seq: int) -> bool:
        if self.test == "seq":
            return seq == self.seq
        if self.test == "value":
            return value == self.value
        return (value is not None) == self.exists


@dataclass(slots=True)
class Txn:
    compares: list[Compare]
    then: list[NamedOp]
    otherwise: list[NamedOp]


def parse_seq(text: str, where: str) -> int:
    """A non-negative sequence number given as decimal text (a query parameter)."""
    # isdigit() alone takes '²' and thousands of digits, which int() refuses.
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= SEQ_MAX):
        raise BadRequest(f"{where}: must be a non-negative integer sequence number, "
                         f"got {brief(text)}")
    return int(text)


def parse_txn(body: bytes, content_type: str, limits: LimitsConfig,
              column_families: Collection[str]) -> Txn:
    doc = decode_body(body, content_type)
    if not isinstance(doc, dict):
        raise BadRequest("body must be a map with 'compare', 'then' and 'else' lists")
    extra = [k for k in doc if k not in _TXN_FIELDS]
    if extra:
        raise BadRequest(f"unknown transaction fields {brief(extra)}: expected compare, then, "
                         "else")
    parts: dict[str, list[Any]] = {}
    for name in ("compare", "then", "else"):
        raw = doc.get(name, [])
        if not isinstance(raw, list):
            raise BadRequest(f"{name}: expected a list, got {brief(raw)}")
        parts[name] = raw
    total = sum(len(v) for v in parts.values())
    if total == 0:
        raise BadRequest("an empty transaction: give compares and at least one op")
    if total > limits.max_batch_ops:
        raise BadRequest(f"{total} compares and ops exceed max_batch_ops "
                         f"({limits.max_batch_ops})")
    budget = limits.max_body_bytes
    compares = []
    for i, raw in enumerate(parts["compare"]):
        cmp, budget = _parse_compare(raw, f"compare[{i}]", limits, column_families, budget)
        compares.append(cmp)
    then, budget = parse_ops(parts["then"], "then", limits, column_families, budget)
    otherwise, _ = parse_ops(parts["else"], "else", limits, column_families, budget)
    return Txn(compares, then, otherwise)


def _parse_compare(raw: Any, at: str, limits: LimitsConfig, column_families: Collection[str],
                   budget: int) -> tuple[Compare, int]:
    if not isinstance(raw, dict):
        raise BadRequest(f"{at}: expected a map with key and one of seq, value, exists")
    extra = [k for k in raw if k not in _COMPARE_FIELDS]
    if extra:
        raise BadRequest(f"{at}: unknown fields {brief(extra)}")
    cf = check_cf(raw.get("cf", "default"), column_families, f"{at}.cf")
    key = _bytes_field(raw, "key", at)
    check_key(key, limits, f"{at}.key")
    tests = [t for t in ("seq", "value", "exists") if t in raw or f"{t}_b64" in raw]
    if len(tests) != 1:
        raise BadRequest(f"{at}: give exactly one of seq, value, exists (got "
                         f"{', '.join(tests) or 'none'})")
    test = tests[0]
    if test == "seq":
        seq = raw["seq"]
        if type(seq) is not int or not 0 <= seq <= SEQ_MAX:
            raise BadRequest(f"{at}.seq: expected a non-negative integer, got {brief(seq)}")
        return Compare(cf, key, "seq", seq=seq), _spend(budget, len(key), limits, at)
    if test == "exists":
        if not isinstance(raw["exists"], bool):
            raise BadRequest(f"{at}.exists: expected true or false, got {brief(raw['exists'])}")
        return (Compare(cf, key, "exists", exists=raw["exists"]),
                _spend(budget, len(key), limits, at))
    value = _bytes_field(raw, "value", at)
    check_value(value, limits, f"{at}.value")
    return (Compare(cf, key, "value", value=value),
            _spend(budget, len(key) + len(value), limits, at))


def evaluate(compares: list[Compare],
             lookup: Callable[[bytes, str], tuple[bytes | None, int]]
             ) -> tuple[bool, list[int]]:
    """Whether every compare holds, and each compared key's current seq (0 when absent).

    ``lookup(key, cf)`` gives a key's value and last-written seq. Every compare is looked up
    (not only up to the first that fails), so a refusal can tell the client all current seqs.
    """
    ok, seqs = True, []
    for cmp in compares:
        value, seq = lookup(cmp.key, cmp.cf)
        seqs.append(seq)
        ok = cmp.holds(value, seq) and ok
    return ok, seqs

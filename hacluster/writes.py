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
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Collection
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


def _bytes_field(op: dict[str, Any], name: str, index: int, required: bool = True) -> bytes:
    if name in op:
        value = op[name]
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            try:
                return value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest(f"ops[{index}].{name}: not valid Unicode text") from None
        raise BadRequest(f"ops[{index}].{name}: expected a string or bytes")
    b64 = f"{name}_b64"
    if b64 in op:
        if not isinstance(op[b64], str):
            raise BadRequest(f"ops[{index}].{b64}: expected a base64 string")
        try:
            return base64.b64decode(op[b64], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"ops[{index}].{b64}: not valid base64") from None
    if required:
        raise BadRequest(f"ops[{index}]: missing {name!r}")
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


def parse_batch(body: bytes, content_type: str, limits: LimitsConfig,
                column_families: Collection[str]) -> list[NamedOp]:
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
    else:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise BadRequest(f"body is not valid JSON: {type(exc).__name__}: {exc}") from None
    raw = doc.get("ops") if isinstance(doc, dict) else doc
    if not isinstance(raw, list) or not raw:
        raise BadRequest("body must be a non-empty list of ops, or a map with 'ops'")
    if len(raw) > limits.max_batch_ops:
        raise BadRequest(f"{len(raw)} ops exceed max_batch_ops ({limits.max_batch_ops})")
    ops: list[NamedOp] = []
    # Keys and values add up to at most the body's size, unless CBOR shared or string
    # references repeat one value: 3000 references to a 1 MB text value would otherwise
    # decode into 3 GB of UTF-8. Bounded by the largest body the node accepts.
    budget = limits.max_body_bytes
    for i, op in enumerate(raw):
        if not isinstance(op, dict):
            raise BadRequest(f"ops[{i}]: expected a map")
        name = op.get("op")
        kind = _KINDS.get(name) if isinstance(name, str) else None
        if kind is None:
            raise BadRequest(f"ops[{i}].op: expected one of put, delete, delete_range, "
                             f"got {brief(op.get('op'))}")
        cf = check_cf(op.get("cf", "default"), column_families, f"ops[{i}].cf")
        if kind == DELETE_RANGE:
            start = _bytes_field(op, "start", i)
            end = _bytes_field(op, "end", i)
            check_key(start, limits, f"ops[{i}].start")
            check_key(end, limits, f"ops[{i}].end")
            if start >= end:
                raise BadRequest(f"ops[{i}]: delete_range needs start < end")
            budget = _spend(budget, len(start) + len(end), limits, i)
            ops.append((kind, cf, start, end))
            continue
        key = _bytes_field(op, "key", i)
        check_key(key, limits, f"ops[{i}].key")
        value = _bytes_field(op, "value", i) if kind == PUT else b""
        check_value(value, limits, f"ops[{i}].value")
        budget = _spend(budget, len(key) + len(value), limits, i)
        ops.append((kind, cf, key, value))
    return ops


def _spend(budget: int, size: int, limits: LimitsConfig, index: int) -> int:
    if size > budget:
        raise BadRequest(f"ops[{index}]: keys and values add up to more than max_body_bytes "
                         f"({limits.max_body_bytes}); CBOR shared or string references "
                         "cannot repeat data past that")
    return budget - size

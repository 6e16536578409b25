"""What each client operation sends and how its answer reads; shared by both clients, no I/O.

Owns the request shapes (paths, query strings, CBOR bodies) of puts, deletes, batches,
compare-and-set, transactions, reads and scans, and the mapping of their answers to results or
errors. It must never decide where a request goes or whether it is retried (``rules`` does).
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from hacluster.client.errors import PreconditionFailed, RequestFailed
from hacluster.client.rules import Answer

CBOR = {"Content-Type": "application/cbor"}
ACCEPT_CBOR = {"Accept": "application/cbor"}


@dataclass(frozen=True, slots=True)
class WriteResult:
    """An acknowledged write: its seqs ``first_seq``..``seq``; ``seq`` is also every written
    key's new seq (what ``Item.seq`` and compare-and-set use)."""

    seq: int
    first_seq: int
    epoch: int
    node: str


@dataclass(frozen=True, slots=True)
class Item:
    """A value and the seq of the write that last wrote its key."""

    value: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A transaction's outcome: whether every compare held (the ``then`` ops ran) or not (the
    ``else`` ops ran); ``seqs``: each compared key's seq when it was checked (0: absent);
    ``seq``: the write's last seq, or when no op ran the primary's seq at the check."""

    succeeded: bool
    seq: int
    epoch: int
    node: str
    seqs: list[int]


@dataclass(frozen=True, slots=True)
class Req:
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] | None = None


def b(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _text(key: bytes) -> str | None:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return None


def batch(ops: Sequence[dict[str, Any]]) -> Req:
    return Req("POST", "/v1/batch", cbor2.dumps({"ops": list(ops)}), CBOR)


def txn(compare: Sequence[dict[str, Any]], then: Sequence[dict[str, Any]],
        otherwise: Sequence[dict[str, Any]]) -> Req:
    doc = {"compare": list(compare), "then": list(then), "else": list(otherwise)}
    return Req("POST", "/v1/txn", cbor2.dumps(doc), CBOR)


def put(key: bytes | str, value: bytes | str, cf: str, if_seq: int | None) -> Req:
    k, v = b(key), b(value)
    text = _text(k)
    if text is None:       # not expressible in a URL path: the same write as a CBOR body
        op = {"op": "put", "cf": cf, "key": k, "value": v}
        return (batch([op]) if if_seq is None
                else txn([{"cf": cf, "key": k, "seq": if_seq}], [op], []))
    cond = "" if if_seq is None else f"&if_seq={int(if_seq)}"
    return Req("PUT", f"/v1/kv/{quote(text)}?cf={quote(cf)}{cond}", v)


def delete(key: bytes | str, cf: str, if_seq: int | None) -> Req:
    k = b(key)
    text = _text(k)
    if text is None:
        op = {"op": "delete", "cf": cf, "key": k}
        return (batch([op]) if if_seq is None
                else txn([{"cf": cf, "key": k, "seq": if_seq}], [op], []))
    cond = "" if if_seq is None else f"&if_seq={int(if_seq)}"
    return Req("DELETE", f"/v1/kv/{quote(text)}?cf={quote(cf)}{cond}")


def change_settings(changes: Mapping[str, Any], expected_version: int | None) -> Req:
    """``PATCH /v1/admin/config``: a change of the dynamic configuration (None: back to
    the file's value), compare-and-set on ``expected_version`` when given."""
    body: dict[str, Any] = {"changes": dict(changes)}
    if expected_version is not None:
        body["expected_version"] = expected_version
    return Req("PATCH", "/v1/admin/config", json.dumps(body).encode(),
               {"Content-Type": "application/json"})


def write_result(answer: Answer, conditional: bool = False) -> WriteResult:
    """The result of a put, delete or batch; a conditional write sent as a transaction (a
    binary key) that found another seq raises ``PreconditionFailed`` like the PUT does."""
    if answer.status == 412:
        doc = answer.doc()
        raise PreconditionFailed(answer.message(), int(doc.get("seq", -1)), doc)
    if answer.status != 200:
        raise RequestFailed(answer.status, answer.message(), answer.doc())
    doc = answer.json()
    if conditional and doc.get("succeeded") is False:
        seq = doc["compared"][0]["seq"]
        raise PreconditionFailed(f"precondition failed: the key was last written at seq {seq}",
                                 seq, doc)
    return WriteResult(doc["seq"], doc["first_seq"], doc["epoch"], doc.get("node", ""))


def txn_result(answer: Answer) -> TxnResult:
    if answer.status != 200:
        raise RequestFailed(answer.status, answer.message(), answer.doc())
    doc = answer.json()
    return TxnResult(bool(doc["succeeded"]), doc["seq"], doc["epoch"], doc.get("node", ""),
                     [c["seq"] for c in doc.get("compared", [])])


def get_path(key: str, cf: str, stale: bool) -> str:
    return f"/v1/kv/{quote(key)}?cf={quote(cf)}{'&stale=1' if stale else ''}"


def item(answer: Answer) -> Item | None:
    if answer.status == 404:
        return None
    if answer.status != 200:
        raise RequestFailed(answer.status, answer.message())
    return Item(answer.body, int(answer.headers.get("x-hacluster-key-seq", "0")))


def scan_path(prefix: bytes, cf: str, page: int, after: bytes | None, stale: bool,
              prefix_exact: bool = False, seqs: bool = False) -> str:
    text = _text(prefix)
    if text is None or prefix_exact:
        where = f"prefix_b64={quote(base64.b64encode(prefix).decode())}"
    else:
        where = f"prefix={quote(text)}"
    q = f"/v1/kv?cf={quote(cf)}&{where}&limit={page}"
    if after is not None:
        q += f"&start_after_b64={quote(base64.b64encode(after).decode())}"
    return q + ("&stale=1" if stale else "") + ("&seqs=1" if seqs else "")


def scan_page(answer: Answer) -> tuple[list[tuple[bytes, bytes, int]], bool]:
    """A page of (key, value, seq) — seq 0 unless the scan asked for ``seqs``."""
    if answer.status != 200:
        raise RequestFailed(answer.status, answer.message())
    doc = cbor2.loads(answer.body)
    items = [(bytes(i[0]), bytes(i[1]), int(i[2]) if len(i) > 2 else 0) for i in doc["items"]]
    return items, bool(doc["more"]) and bool(items)


def json_of(answer: Answer, ok: tuple[int, ...] = (200,)) -> Any:
    if answer.status not in ok:
        raise RequestFailed(answer.status, answer.message(), answer.doc())
    return answer.json()

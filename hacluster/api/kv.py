"""Key-value routes: ``/v1/kv/{key}`` (PUT, GET, DELETE; ``?if_seq=N`` makes a write
conditional), the bounded scan ``/v1/kv``, ``/v1/batch`` and the transaction ``/v1/txn``.

Owns the request checks (key, value and body limits, column family), where a request is served
(writes and, unless ``?stale=1``, reads on the primary; a replica redirects with 307) and the
answer to a write once the node has acknowledged it per the replication mode. It must never
acknowledge a write the node did not confirm, and never serve a non-stale read on a node whose
write gate is shut (an old primary whose lease ran out could return stale data). A condition
(``if_seq``, a transaction's compares) is checked and its write made on the same turn of the
event loop, with no await between: nothing else can write in between. A refused condition is a
read, answered like one only once what it saw is confirmed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import cbor2
from aiohttp import web

from hacluster.api import probes
from hacluster.api.common import BodyError, error, read_body, to_primary
from hacluster.config import FRAME_OVERHEAD
from hacluster.node_errors import DiskFull, NotWritable, OutcomeUnknown
from hacluster.store import Store, StoreError
from hacluster.wal.batch import DELETE, PUT
from hacluster.writes import (
    CBOR_TYPE,
    BadRequest,
    check_cf,
    check_key,
    check_value,
    evaluate,
    parse_batch,
    parse_seq,
    parse_txn,
)

if TYPE_CHECKING:
    from hacluster.api.port import ServedNode

log = logging.getLogger(__name__)

SCAN_DEFAULT = 100
SCAN_MAX = 10_000


def _text_or_b64(name: str, data: bytes) -> dict[str, str]:
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_b64": base64.b64encode(data).decode()}


def _query_bytes(query: Mapping[str, str], name: str) -> bytes | None:
    """``name`` as UTF-8 text, or ``name_b64`` as base64 for binary keys."""
    if f"{name}_b64" in query:
        try:
            return base64.b64decode(query[f"{name}_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(f"{name}_b64: not valid base64") from None
    return query[name].encode("utf-8") if name in query else None


def _wants_cbor(request: web.Request) -> bool:
    return CBOR_TYPE in request.headers.get("Accept", "")


def add_routes(app: web.Application, node: ServedNode) -> None:
    limits = node.cfg.limits

    def key_and_cf(request: web.Request) -> tuple[bytes, str]:
        key = request.match_info["key"].encode("utf-8")
        check_key(key, limits, "key")
        cf = request.query.get("cf", "default")
        if cf == "default" and node.store is not None:
            return key, cf      # every RocksDB database has it: no list of names to build
        return key, check_cf(cf, node.column_families, "cf")

    async def readable_store(request: web.Request) -> tuple[Store, int | None] | web.Response:
        """The store when this node may answer the read itself, and for a primary read the
        seq it sees (to pass to ``finish_read``); else the redirect or refusal.

        ``?stale=1``: this node's own copy, as it is. ``?min_seq=N``: this node's copy once it
        holds seq N (read your own writes on a replica), waiting up to min_seq_wait_s.
        Otherwise the primary, linearizable (rule 8).
        """
        q = request.query
        min_seq = q.get("min_seq")
        if min_seq is not None:
            if not (min_seq.isascii() and min_seq.isdigit() and len(min_seq) <= 20):
                return error(400, "min_seq: must be a non-negative integer sequence number")
            if not node.is_primary:
                wait = node.cfg.replication.min_seq_wait_s
                have = await node.wait_applied(int(min_seq), wait)
                store = node.store
                if have is None or store is None:
                    return error(503, f"{node.name} has not reached seq {min_seq} within "
                                 f"{wait} s (it is at seq {node.latest_seq()})",
                                 seq=node.latest_seq(), min_seq=int(min_seq))
                return store, None
        elif q.get("stale") in ("1", "true"):
            store = node.store
            return error(503, "no database open") if store is None else (store, None)
        if not node.is_primary:
            return to_primary(node, request)
        try:
            seq = node.begin_read()
        except NotWritable as exc:
            return error(503, f"not serving reads: {exc}", leader=None)
        store = node.store
        return error(503, "no database open") if store is None else (store, seq)

    async def answer_read(seq: int | None, response: web.Response) -> web.Response:
        """A primary read is answered only once what it saw is confirmed (rule 8)."""
        if seq is None:
            return response
        try:
            await node.finish_read(seq)
        except (NotWritable, OutcomeUnknown) as exc:
            return error(503, f"read at seq {seq} not confirmed: {exc}", leader=None)
        return response

    def lag_header() -> dict[str, str]:
        if node.is_primary:
            return {"X-Hacluster-Lag": "0"}
        view = node.view(time.monotonic())
        lag = probes.lag(view)
        return {"X-Hacluster-Lag": "unknown" if lag is None else str(lag),
                "X-Hacluster-Seq": str(view.applied_seq)}

    def if_seq_of(request: web.Request) -> int | None:
        raw = request.query.get("if_seq")
        return None if raw is None else parse_seq(raw, "if_seq")

    def condition_view() -> tuple[int, Store] | web.Response:
        """The store to check a condition on and the seq the check sees (for the answer of a
        refused condition, which is a read); or why not now. The caller checks and writes
        with no await in between: the check and the write are one step of the only writer."""
        try:
            seen = node.begin_read()
        except NotWritable as exc:
            return error(503, f"not accepting writes: {exc}", leader=node.leader())
        store = node.store
        return error(503, "no database open") if store is None else (seen, store)

    async def conditional_write(key: bytes, cf: str, if_seq: int | None,
                                ops: list[tuple[int, str, bytes, bytes]]) -> web.Response:
        """``write``, when the key was last written at ``if_seq`` (0: absent); else 412."""
        if if_seq is None:
            return await write(node, ops)
        view = condition_view()
        if isinstance(view, web.Response):
            return view
        seen, store = view
        current = store.key_seq(key, cf)
        if current == if_seq:
            return await write(node, ops)
        return await answer_read(seen, error(
            412, f"precondition failed: the key was last written at seq {current}"
            f"{' (it does not exist)' if current == 0 else ''}, not {if_seq}",
            seq=current, **_text_or_b64("key", key)))

    async def put_kv(request: web.Request) -> web.Response:
        if not node.is_primary:
            return to_primary(node, request)
        try:
            key, cf = key_and_cf(request)
            if_seq = if_seq_of(request)
            value = await read_body(request)
            check_value(value, limits, "value")
        except (BadRequest, BodyError) as exc:
            return error(400, str(exc))
        return await conditional_write(key, cf, if_seq, [(PUT, cf, key, value)])

    async def delete_kv(request: web.Request) -> web.Response:
        if not node.is_primary:
            return to_primary(node, request)
        try:
            key, cf = key_and_cf(request)
            if_seq = if_seq_of(request)
        except BadRequest as exc:
            return error(400, str(exc))
        return await conditional_write(key, cf, if_seq, [(DELETE, cf, key, b"")])

    async def get_kv(request: web.Request) -> web.Response:
        try:
            key, cf = key_and_cf(request)
        except BadRequest as exc:
            return error(400, str(exc))
        readable = await readable_store(request)
        if isinstance(readable, web.Response):
            return readable
        store, seq = readable
        value, key_seq = store.get_with_seq(key, cf)
        headers = lag_header()
        if value is None:
            return await answer_read(seq, web.json_response(
                {"error": "not found", "key": key.decode()}, status=404, headers=headers))
        headers["X-Hacluster-Key-Seq"] = str(key_seq)
        return await answer_read(seq, web.Response(
            body=value, content_type="application/octet-stream", headers=headers))

    async def scan(request: web.Request) -> web.Response:
        q = request.query
        try:
            cf = check_cf(q.get("cf", "default"), node.column_families, "cf")
            prefix = _query_bytes(q, "prefix") or b""
            after = _query_bytes(q, "start_after")
            raw_limit = q.get("limit", str(SCAN_DEFAULT))
            # isdigit() alone takes '²' and thousands of digits, which int() refuses.
            if not (raw_limit.isascii() and raw_limit.isdigit() and len(raw_limit) <= 6
                    and 1 <= int(raw_limit) <= SCAN_MAX):
                raise BadRequest(f"limit: must be an integer from 1 to {SCAN_MAX}")
            limit = int(raw_limit)
        except BadRequest as exc:
            return error(400, str(exc))
        readable = await readable_store(request)
        if isinstance(readable, web.Response):
            return readable
        store, seq = readable
        items, more = store.scan(cf, prefix, limit, after)
        seqs = ([store.key_seq(k, cf) for k, _ in items] if q.get("seqs") in ("1", "true")
                else None)
        headers = lag_header()
        seen = store.latest_seq()
        if _wants_cbor(request):
            rows = ([[k, v] for k, v in items] if seqs is None
                    else [[k, v, s] for (k, v), s in zip(items, seqs, strict=True)])
            doc: dict[str, Any] = {"items": rows, "more": more, "seq": seen}
            return await answer_read(seq, web.Response(
                body=cbor2.dumps(doc), content_type=CBOR_TYPE, headers=headers))
        out: list[dict[str, Any]] = [{**_text_or_b64("key", k), **_text_or_b64("value", v)}
                                     for k, v in items]
        if seqs is not None:
            for row, s in zip(out, seqs, strict=True):
                row["seq"] = s
        return await answer_read(seq, web.json_response(
            {"items": out, "more": more, "seq": seen}, headers=headers))

    async def batch(request: web.Request) -> web.Response:
        if not node.is_primary:
            return to_primary(node, request)
        try:
            body = await read_body(request)
            ops = parse_batch(body, request.content_type, limits, node.column_families)
        except (BadRequest, BodyError) as exc:
            return error(400, str(exc))
        return await write(node, ops)

    async def txn(request: web.Request) -> web.Response:
        if not node.is_primary:
            return to_primary(node, request)
        try:
            body = await read_body(request)
            parsed = parse_txn(body, request.content_type, limits, node.column_families)
        except (BadRequest, BodyError) as exc:
            return error(400, str(exc))
        view = condition_view()
        if isinstance(view, web.Response):
            return view
        seen, store = view
        ok, seqs = evaluate(parsed.compares, lambda k, c: store.get_with_seq(k, c))
        outcome: dict[str, Any] = {"succeeded": ok, "compared": [
            {"cf": cmp.cf, **_text_or_b64("key", cmp.key), "seq": seq}
            for cmp, seq in zip(parsed.compares, seqs, strict=True)]}
        ops = parsed.then if ok else parsed.otherwise
        if ops:
            return await write(node, ops, outcome)
        return await answer_read(seen, web.json_response(
            {**outcome, "seq": seen, "first_seq": None, "epoch": node.role.epoch,
             "node": node.name}))

    app.router.add_get("/v1/kv", scan)
    app.router.add_put("/v1/kv/{key:.+}", put_kv)
    app.router.add_get("/v1/kv/{key:.+}", get_kv)
    app.router.add_delete("/v1/kv/{key:.+}", delete_kv)
    app.router.add_post("/v1/batch", batch)
    app.router.add_post("/v1/txn", txn)


async def write(node: ServedNode, ops: list[tuple[int, str, bytes, bytes]],
                extra: dict[str, Any] | None = None) -> web.Response:
    # A WriteBatch costs each op its key and value plus at most 16 bytes of tags and varints,
    # and the same again for the op's last-written seq record (cf, NUL, key, 8-byte seq); a
    # batch that could not travel in one replication frame is refused before it is written.
    size = 12 + sum(2 * len(k) + len(v) + len(cf) + 41 for _, cf, k, v in ops)
    limit = node.cfg.replication.max_frame_bytes - FRAME_OVERHEAD
    if size > limit:
        return error(413, f"write of ~{size} bytes exceeds what one replication frame carries "
                          f"({limit} bytes; replication.max_frame_bytes)")
    try:
        applied = node.write(ops)
        await node.acknowledge(applied.last_seq)
    except DiskFull as exc:
        return error(507, f"disk full, write refused: {exc}")
    except NotWritable as exc:
        return error(503, f"not accepting writes: {exc}", leader=node.leader())
    except OutcomeUnknown as exc:
        node.unknown_outcomes += 1
        return error(503, str(exc), outcome="unknown")
    except StoreError as exc:
        return error(400, str(exc))
    except Exception as exc:  # rocksdict raises bare Exception for RocksDB I/O errors
        log.exception("write failed")
        return error(500, f"write failed: {exc}")
    if extra is None:
        # The common answer, formatted as json.dumps would format it: dumping a dict per
        # write cost more than the rest of building the response.
        text = (f'{{"seq": {applied.last_seq}, "first_seq": {applied.first_seq}, '
                f'"epoch": {node.role.epoch}, "node": {_json_str(node.name)}}}')
    else:
        text = json.dumps({**extra, "seq": applied.last_seq, "first_seq": applied.first_seq,
                           "epoch": node.role.epoch, "node": node.name})
    return web.Response(text=text, content_type="application/json")


@functools.lru_cache(maxsize=16)
def _json_str(name: str) -> str:
    """A node name as a JSON string (a name never changes: encoded once)."""
    return json.dumps(name)

"""``Client``: the blocking client, on urllib3 keep-alive connection pools.

Owns the blocking I/O of the client's calls: one urllib3 pool per node (connections kept alive
and reused), TLS with the cluster CA, the timeouts of each attempt, and driving the shared rules
(``rules``, ``ops``, ``watching``). It must never decide a retry itself, and never tell "the
request certainly did not reach the node" unless the connection was never made.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from hacluster.client import ops, rules
from hacluster.client.common import CA_FILE_ENV, ClientBase, client_token
from hacluster.client.errors import NoLeader
from hacluster.client.rules import (
    Abandon,
    Answer,
    Await,
    Call,
    Failure,
    Pending,
    Result,
    Send,
    Settings,
    Sleep,
)
from hacluster.client.watching import Event, LineSplitter, Streamed, WatchCursor, watch_call

__all__ = ["CA_FILE_ENV", "Client", "client_token"]

_NOT_SENT = (NewConnectionError, ConnectTimeoutError, NameResolutionError, SSLError)


class Client(ClientBase):
    """The blocking client. ``urls`` are the nodes' API URLs (``http(s)://host:port``); the
    other arguments are ``ClientBase``'s. ``pool_size`` (default 8): connections kept per
    node, one per thread that uses the client at once. Thread-safe."""

    def __init__(self, urls: Sequence[str], token: str | None, **kw: Any) -> None:
        super().__init__(urls, token, **kw)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pool = urllib3.PoolManager(num_pools=max(4, 2 * len(self.nodes.urls)),
                                         maxsize=self.pool_size, block=False, retries=False,
                                         ssl_context=self.ssl)

    def close(self) -> None:
        self._pool.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- I/O ------------------------------------------------------------------------------

    def _send(self, step: Send,
              stream: bool = False) -> Answer | Failure | urllib3.BaseHTTPResponse:
        try:
            resp = self._pool.request(
                step.method, step.url + step.path, body=step.body, headers=step.headers,
                timeout=urllib3.Timeout(connect=step.connect_timeout, read=step.timeout),
                redirect=False, preload_content=not stream)
        except _NOT_SENT as exc:
            return Failure(step.url, False, _reason(exc))
        except (ReadTimeoutError, ProtocolError, HTTPError, OSError) as exc:
            return Failure(step.url, True, _reason(exc))
        if stream:
            return resp
        return Answer(resp.status, resp.data, {k.lower(): v for k, v in resp.headers.items()},
                      step.url)

    def _drive(self, call: Call) -> Answer:
        # A request that may need probing runs on a worker thread, so the probes can be sent
        # from here while it waits; one given up is left to end by its own timeout.
        inflight: Future[Answer | Failure | urllib3.BaseHTTPResponse] | None = None
        try:
            step = next(call)
            while True:
                got: Result = None
                if isinstance(step, Sleep):
                    time.sleep(max(0.0, step.seconds))
                elif isinstance(step, Abandon):
                    inflight = None
                    got = Failure(step.url, True, "given up: the other nodes no longer name it "
                                  "the primary")
                elif isinstance(step, Await) or (isinstance(step, Send)
                                                 and step.probe_after is not None):
                    if isinstance(step, Send):
                        inflight = self._workers().submit(self._send, step)
                        wait: float = step.probe_after or 0.0
                        url = step.url
                    else:
                        wait = step.seconds
                    assert inflight is not None
                    try:
                        sent = inflight.result(timeout=wait)
                    except FutureTimeout:
                        got = Pending(url)
                    else:
                        assert not isinstance(sent, urllib3.BaseHTTPResponse)
                        got, inflight = sent, None
                else:
                    sent = self._send(step)
                    assert not isinstance(sent, urllib3.BaseHTTPResponse)
                    got = sent
                step = call.send(got)
        except StopIteration as stop:
            answer: Answer = stop.value
            return answer

    def _workers(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=4 * self.pool_size,
                                                    thread_name_prefix="hacluster-client")
            return self._executor

    def _any_settings(self, timeout: float | None) -> Settings:
        """Calls any node may answer wait at most ANY_TIMEOUT_S unless told otherwise: they
        have no primary to probe, and another node can answer instead."""
        return Settings(min(self.settings.timeout, rules.ANY_TIMEOUT_S) if timeout is None
                        else timeout, self.settings.connect_timeout, self.settings.deadline,
                        self.settings.retry_unknown)

    def _primary(self, req: ops.Req, *, write: bool, deadline: float | None = None,
                 timeout: float | None = None) -> Answer:
        s = self.settings if timeout is None else Settings(
            timeout, self.settings.connect_timeout, self.settings.deadline,
            self.settings.retry_unknown)
        return self._drive(rules.on_primary(
            self.nodes, s, req.method, req.path, req.body, self._headers(req.headers),
            write=write, deadline=self._deadline(deadline)))

    def _any(self, req: ops.Req, url: str | None = None, timeout: float | None = None,
             write: bool = False) -> Answer:
        s = self._any_settings(timeout)
        return self._drive(rules.on_any(
            self.nodes, s, req.method, req.path, req.body, self._headers(req.headers),
            url=url, deadline=self._deadline(None), write=write))

    def request(self, url: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float | None = None) -> Answer:
        """One HTTP request to one node; OSError when the node cannot be reached."""
        wait = self.settings.timeout if timeout is None else timeout
        got = self._send(Send(url.rstrip("/"), method, path, body, self._headers(headers),
                              wait, min(self.settings.connect_timeout, wait)))
        if isinstance(got, Failure):
            raise (ConnectionRefusedError if not got.sent else ConnectionError)(got.error)
        assert isinstance(got, Answer)
        return got

    # -- the leader -----------------------------------------------------------------------

    def leader(self) -> dict[str, Any]:
        """The leader answer of the first node that knows one (``leader``, ``url``, ``epoch``)."""
        found = self._drive(_wrap(rules.find_leader(
            self.nodes, self.settings, self._deadline(None), self._headers(None))))
        if found.status != 200:
            raise NoLeader("no node knows a valid primary")
        doc: dict[str, Any] = found.json()
        return doc

    def find_leader(self) -> str | None:
        try:
            self.leader()
        except NoLeader:
            return None
        return self.nodes.leader_url

    # -- key-value ------------------------------------------------------------------------

    def put(self, key: bytes | str, value: bytes | str, cf: str = "default", *,
            if_seq: int | None = None, deadline: float | None = None) -> ops.WriteResult:
        """Write ``value``; with ``if_seq`` only if the key was last written at that seq (0:
        only if it does not exist), else ``PreconditionFailed`` (its ``seq`` is the key's)."""
        req = ops.put(key, value, cf, if_seq)
        return ops.write_result(self._primary(req, write=True, deadline=deadline),
                                conditional=if_seq is not None)

    def delete(self, key: bytes | str, cf: str = "default", *, if_seq: int | None = None,
               deadline: float | None = None) -> ops.WriteResult:
        req = ops.delete(key, cf, if_seq)
        return ops.write_result(self._primary(req, write=True, deadline=deadline),
                                conditional=if_seq is not None)

    def batch(self, ops_: Sequence[dict[str, Any]], *,
              deadline: float | None = None) -> ops.WriteResult:
        """Apply ops atomically: ``{"op": "put"|"delete"|"delete_range", "cf", "key", "value",
        "start", "end"}`` with str or bytes keys and values (sent as CBOR)."""
        return ops.write_result(self._primary(ops.batch(ops_), write=True, deadline=deadline))

    def txn(self, compare: Sequence[dict[str, Any]], then: Sequence[dict[str, Any]] = (),
            otherwise: Sequence[dict[str, Any]] = (), *,
            deadline: float | None = None) -> ops.TxnResult:
        """If every compare holds, apply ``then``, else ``otherwise`` — atomically, as one
        write. A compare is ``{"key", "cf"?, and one of "seq": N | "value": v | "exists":
        bool}``; ops are as in ``batch``."""
        answer = self._primary(ops.txn(compare, then, otherwise), write=True,
                               deadline=deadline)
        return ops.txn_result(answer)

    def get(self, key: bytes | str, cf: str = "default", *, stale: bool = False,
            url: str | None = None, deadline: float | None = None) -> bytes | None:
        """The value, or None when absent. ``stale=True`` reads any node (``url``, or the
        first that answers) without going to the primary."""
        got = self.get_item(key, cf, stale=stale, url=url, deadline=deadline)
        return None if got is None else got.value

    def get_item(self, key: bytes | str, cf: str = "default", *, stale: bool = False,
                 url: str | None = None, deadline: float | None = None) -> ops.Item | None:
        """The value and the seq that last wrote it (for ``put(..., if_seq=)``), or None."""
        raw = ops.b(key)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            items, _ = self._scan_page(raw, cf, 1, None, stale, exact=True, deadline=deadline)
            return next((ops.Item(v, s) for k, v, s in items if k == raw), None)
        req = ops.Req("GET", ops.get_path(text, cf, stale))
        answer = (self._any(req, url) if stale
                  else self._primary(req, write=False, deadline=deadline))
        return ops.item(answer)

    def _scan_page(self, prefix: bytes, cf: str, page: int, after: bytes | None, stale: bool,
                   *, exact: bool = False, deadline: float | None = None
                   ) -> tuple[list[tuple[bytes, bytes, int]], bool]:
        path = ops.scan_path(prefix, cf, page, after, stale, exact, seqs=exact)
        req = ops.Req("GET", path, None, ops.ACCEPT_CBOR)
        answer = (self._any(req) if stale
                  else self._primary(req, write=False, deadline=deadline))
        return ops.scan_page(answer)

    def scan(self, prefix: bytes | str = b"", cf: str = "default", *, page: int = 1000,
             stale: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) under ``prefix`` in key order, fetched ``page`` at a time."""
        after: bytes | None = None
        while True:
            items, more = self._scan_page(ops.b(prefix), cf, page, after, stale)
            yield from ((k, v) for k, v, _ in items)
            if not more:
                return
            after = items[-1][0]

    # -- watch ----------------------------------------------------------------------------

    def watch(self, prefix: bytes | str = b"", cf: str = "default", *,
              since_seq: int | None = None) -> Iterator[Event]:
        """Every acknowledged change under ``prefix`` from ``since_seq`` on (default: from
        now), each once and in seq order; follows failovers and reconnects on its own.
        Raises ``WatchLost`` when the changes since its position are gone (re-read and watch
        again from the seq the read shows) and ``NoLeader`` when no primary is found within
        ``failover_timeout``."""
        cursor = WatchCursor(prefix, cf, since_seq)
        call = watch_call(self.nodes, self.settings, cursor, self._headers(None))
        step = next(call)
        while True:
            got: Answer | Failure | Streamed | None = None
            if isinstance(step, Sleep):
                time.sleep(max(0.0, step.seconds))
            elif isinstance(step, Send):
                sent = self._send(step)
                assert not isinstance(sent, urllib3.BaseHTTPResponse)
                got = sent
            else:
                opened = self._send(Send(step.url, "GET", step.path, None, step.headers,
                                         step.read_timeout, step.connect_timeout), stream=True)
                if not isinstance(opened, urllib3.BaseHTTPResponse):
                    got = opened
                elif opened.status != 200:
                    got = Answer(opened.status, opened.data,
                                 {k.lower(): v for k, v in opened.headers.items()}, step.url)
                    opened.release_conn()
                else:
                    cursor.started({k.lower(): v for k, v in opened.headers.items()})
                    try:
                        yield from self._read_watch(opened, cursor)
                    finally:
                        opened.close()      # never back to the pool: the stream is unread
                    got = Streamed()
            step = call.send(got)

    def _read_watch(self, resp: urllib3.BaseHTTPResponse,
                    cursor: WatchCursor) -> Iterator[Event]:
        lines = LineSplitter()
        try:
            for chunk in resp.stream(1 << 16):
                for line in lines.feed(chunk):
                    events = cursor.read(line)
                    if events is None:
                        return
                    yield from events
        except (ReadTimeoutError, ProtocolError, HTTPError, OSError):
            return

    # -- the cluster ----------------------------------------------------------------------

    def get_json(self, path: str, url: str | None = None) -> Any:
        """GET ``path`` from ``url`` or from the first node that answers."""
        return ops.json_of(self._any(ops.Req("GET", path), url))

    def cluster(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/cluster")
        return result

    def history(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get_json("/history")
        return result

    def cluster_config(self) -> dict[str, Any]:
        """The dynamic configuration: version, overrides, values in effect (admin role)."""
        result: dict[str, Any] = self.get_json("/v1/admin/config")
        return result

    def change_cluster_config(self, changes: Mapping[str, Any],
                        expected_version: int | None = None) -> dict[str, Any]:
        """Change dynamic settings (None: back to the file's value); RequestFailed with the
        key and the reason when refused (400 invalid, 409 unsafe or changed meanwhile).
        OutcomeUnknown (unless ``retry_unknown``) when it was sent and no answer came: it may
        have been applied, and sending it again would apply it twice or, with
        ``expected_version``, be refused although the first one took effect."""
        answer = self._any(ops.change_settings(changes, expected_version), timeout=30.0,
                           write=True)
        result: dict[str, Any] = ops.json_of(answer)
        return result

    def admin(self, action: str, body: dict[str, Any] | None = None,
              on_primary: bool = False, timeout: float = 30.0,
              idempotent: bool = False) -> dict[str, Any]:
        """POST ``/v1/admin/<action>`` to the primary or to the first node that answers.

        Unless ``idempotent`` (pause, resume: twice is once), a request sent without an
        answer raises OutcomeUnknown rather than being sent again: a second switchover or
        backup is not the first one retried."""
        req = ops.Req("POST", f"/v1/admin/{action}", json.dumps(body or {}).encode(),
                      {"Content-Type": "application/json"})
        answer = (self._primary(req, write=not idempotent, timeout=timeout,
                                deadline=max(timeout, self.settings.deadline))
                  if on_primary else self._any(req, timeout=timeout, write=not idempotent))
        result: dict[str, Any] = ops.json_of(answer, (200, 202))
        return result


def _wrap(find: Any) -> Call:
    """``find_leader`` as a call whose answer is a 200 (a primary named) or a 503."""
    doc = yield from find
    body = json.dumps(doc or {}).encode()
    return Answer(200 if doc else 503, body, {}, "")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason or exc)


"""``AsyncClient``: the asyncio client, on one aiohttp session with keep-alive connections.

Owns the asyncio I/O of the client's calls: the session and its connection pool (per node,
reused), TLS with the cluster CA, the timeouts of each attempt, and driving the same rules as
``Client`` (``rules``, ``ops``, ``watching``). It must never decide a retry itself, and never
tell "the request certainly did not reach the node" unless the connection was never made.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp

from hacluster.client import ops, rules
from hacluster.client.common import ClientBase
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

# Raised before the request could be written: the node certainly did not see it.
_NOT_SENT: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.InvalidURL)


class AsyncClient(ClientBase):
    """The asyncio twin of ``Client``: the same arguments (``ClientBase``), calls and rules,
    awaited; ``pool_size`` (default 100) bounds the connections per node.

    Use ``async with AsyncClient(...) as c:`` (or ``await c.close()``) so the session's
    connections are closed."""

    POOL_SIZE = 100

    def __init__(self, urls: Sequence[str], token: str | None, **kw: Any) -> None:
        super().__init__(urls, token, **kw)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- I/O ------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                limit=0, limit_per_host=self.pool_size, ssl=self.ssl))
        return self._session

    async def _send(self, step: Send) -> Answer | Failure:
        timeout = aiohttp.ClientTimeout(total=None, connect=step.connect_timeout,
                                        sock_read=step.timeout)
        try:
            async with self._http().request(step.method, step.url + step.path, data=step.body,
                                             headers=step.headers, timeout=timeout,
                                             allow_redirects=False) as resp:
                body = await resp.read()
                return Answer(resp.status, body,
                              {k.lower(): v for k, v in resp.headers.items()}, step.url)
        except _NOT_SENT as exc:
            return Failure(step.url, False, str(exc))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Failure(step.url, True, f"{type(exc).__name__}: {exc}")

    async def _drive(self, call: Call) -> Answer:
        inflight: asyncio.Task[Answer | Failure] | None = None
        url = ""
        try:
            step = next(call)
            while True:
                got: Result = None
                if isinstance(step, Sleep):
                    await asyncio.sleep(max(0.0, step.seconds))
                elif isinstance(step, Abandon):
                    if inflight is not None:
                        inflight.cancel()
                    inflight = None
                    got = Failure(step.url, True, "given up: the other nodes no longer name it "
                                  "the primary")
                elif isinstance(step, Await) or (isinstance(step, Send)
                                                 and step.probe_after is not None):
                    if isinstance(step, Send):
                        inflight = asyncio.ensure_future(self._send(step))
                        wait: float = step.probe_after or 0.0
                        url = step.url
                    else:
                        wait = step.seconds
                    assert inflight is not None
                    done, _ = await asyncio.wait({inflight}, timeout=wait)
                    if done:
                        got, inflight = inflight.result(), None
                    else:
                        got = Pending(url)
                else:
                    got = await self._send(step)
                step = call.send(got)
        except StopIteration as stop:
            answer: Answer = stop.value
            return answer
        finally:
            if inflight is not None:
                inflight.cancel()

    async def _primary(self, req: ops.Req, *, write: bool,
                       deadline: float | None = None) -> Answer:
        return await self._drive(rules.on_primary(
            self.nodes, self.settings, req.method, req.path, req.body,
            self._headers(req.headers), write=write, deadline=self._deadline(deadline)))

    async def _any(self, req: ops.Req, url: str | None = None, write: bool = False) -> Answer:
        s = Settings(min(self.settings.timeout, rules.ANY_TIMEOUT_S),
                     self.settings.connect_timeout, self.settings.deadline,
                     self.settings.retry_unknown)
        return await self._drive(rules.on_any(
            self.nodes, s, req.method, req.path, req.body,
            self._headers(req.headers), url=url, deadline=self._deadline(None), write=write))

    # -- the leader -----------------------------------------------------------------------

    async def leader(self) -> dict[str, Any]:
        call = rules.find_leader(self.nodes, self.settings, self._deadline(None),
                                 self._headers(None))
        try:
            step = next(call)
            while True:
                step = call.send(await self._send(step) if isinstance(step, Send) else None)
        except StopIteration as stop:
            if stop.value is None:
                raise NoLeader("no node knows a valid primary") from None
            doc: dict[str, Any] = stop.value
            return doc

    # -- key-value ------------------------------------------------------------------------

    async def put(self, key: bytes | str, value: bytes | str, cf: str = "default", *,
                  if_seq: int | None = None, deadline: float | None = None) -> ops.WriteResult:
        answer = await self._primary(ops.put(key, value, cf, if_seq), write=True,
                                     deadline=deadline)
        return ops.write_result(answer, conditional=if_seq is not None)

    async def delete(self, key: bytes | str, cf: str = "default", *,
                     if_seq: int | None = None,
                     deadline: float | None = None) -> ops.WriteResult:
        answer = await self._primary(ops.delete(key, cf, if_seq), write=True,
                                     deadline=deadline)
        return ops.write_result(answer, conditional=if_seq is not None)

    async def batch(self, ops_: Sequence[dict[str, Any]], *,
                    deadline: float | None = None) -> ops.WriteResult:
        answer = await self._primary(ops.batch(ops_), write=True, deadline=deadline)
        return ops.write_result(answer)

    async def txn(self, compare: Sequence[dict[str, Any]], then: Sequence[dict[str, Any]] = (),
                  otherwise: Sequence[dict[str, Any]] = (), *,
                  deadline: float | None = None) -> ops.TxnResult:
        answer = await self._primary(ops.txn(compare, then, otherwise), write=True,
                                     deadline=deadline)
        return ops.txn_result(answer)

    async def get(self, key: bytes | str, cf: str = "default", *, stale: bool = False,
                  url: str | None = None, deadline: float | None = None) -> bytes | None:
        got = await self.get_item(key, cf, stale=stale, url=url, deadline=deadline)
        return None if got is None else got.value

    async def get_item(self, key: bytes | str, cf: str = "default", *, stale: bool = False,
                       url: str | None = None,
                       deadline: float | None = None) -> ops.Item | None:
        raw = ops.b(key)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            path = ops.scan_path(raw, cf, 1, None, stale, True, seqs=True)
            req = ops.Req("GET", path, None, ops.ACCEPT_CBOR)
            answer = (await self._any(req) if stale
                      else await self._primary(req, write=False, deadline=deadline))
            items, _ = ops.scan_page(answer)
            return next((ops.Item(v, s) for k, v, s in items if k == raw), None)
        req = ops.Req("GET", ops.get_path(text, cf, stale))
        answer = (await self._any(req, url) if stale
                  else await self._primary(req, write=False, deadline=deadline))
        return ops.item(answer)

    async def scan(self, prefix: bytes | str = b"", cf: str = "default", *, page: int = 1000,
                   stale: bool = False) -> AsyncIterator[tuple[bytes, bytes]]:
        after: bytes | None = None
        while True:
            req = ops.Req("GET", ops.scan_path(ops.b(prefix), cf, page, after, stale), None,
                          ops.ACCEPT_CBOR)
            answer = (await self._any(req) if stale
                      else await self._primary(req, write=False))
            items, more = ops.scan_page(answer)
            for k, v, _ in items:
                yield k, v
            if not more:
                return
            after = items[-1][0]

    # -- watch ----------------------------------------------------------------------------

    async def watch(self, prefix: bytes | str = b"", cf: str = "default", *,
                    since_seq: int | None = None) -> AsyncIterator[Event]:
        """As ``Client.watch``: every acknowledged change under ``prefix``, once, in order."""
        cursor = WatchCursor(prefix, cf, since_seq)
        call = watch_call(self.nodes, self.settings, cursor, self._headers(None))
        step = next(call)
        while True:
            got: Answer | Failure | Streamed | None = None
            if isinstance(step, Sleep):
                await asyncio.sleep(max(0.0, step.seconds))
            elif isinstance(step, Send):
                got = await self._send(step)
            else:
                timeout = aiohttp.ClientTimeout(total=None, connect=step.connect_timeout,
                                                sock_read=step.read_timeout)
                try:
                    async with self._http().get(step.url + step.path, timeout=timeout,
                                                headers=step.headers,
                                                allow_redirects=False) as resp:
                        if resp.status != 200:
                            got = Answer(resp.status, await resp.read(),
                                         {k.lower(): v for k, v in resp.headers.items()},
                                         step.url)
                        else:
                            # However the stream ends, it was open: the watch resumes.
                            got = Streamed()
                            cursor.started({k.lower(): v for k, v in resp.headers.items()})
                            lines, ended = LineSplitter(), False
                            async for chunk in resp.content.iter_any():
                                for line in lines.feed(chunk):
                                    events = cursor.read(line)
                                    if events is None:
                                        ended = True
                                        break
                                    for event in events:
                                        yield event
                                if ended:
                                    break
                except _NOT_SENT as exc:
                    got = Failure(step.url, False, str(exc))
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    got = got or Failure(step.url, True, str(exc))
            step = call.send(got)

    # -- the cluster ----------------------------------------------------------------------

    async def cluster(self) -> dict[str, Any]:
        result: dict[str, Any] = ops.json_of(await self._any(ops.Req("GET", "/cluster")))
        return result

    async def history(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = ops.json_of(await self._any(ops.Req("GET", "/history")))
        return result

    async def cluster_config(self) -> dict[str, Any]:
        """The dynamic configuration: version, overrides, values in effect (admin role)."""
        result: dict[str, Any] = ops.json_of(await self._any(ops.Req("GET", "/v1/admin/config")))
        return result

    async def change_cluster_config(self, changes: Mapping[str, Any],
                              expected_version: int | None = None) -> dict[str, Any]:
        """Change dynamic settings, as ``Client.change_cluster_config`` (OutcomeUnknown when
        sent without an answer)."""
        answer = await self._any(ops.change_settings(changes, expected_version), write=True)
        result: dict[str, Any] = ops.json_of(answer)
        return result

    async def admin(self, action: str, body: dict[str, Any] | None = None,
                    on_primary: bool = False, idempotent: bool = False) -> dict[str, Any]:
        """POST ``/v1/admin/<action>``, as ``Client.admin`` (OutcomeUnknown unless
        ``idempotent`` when sent without an answer)."""
        req = ops.Req("POST", f"/v1/admin/{action}", json.dumps(body or {}).encode(),
                      {"Content-Type": "application/json"})
        answer = (await self._primary(req, write=not idempotent) if on_primary
                  else await self._any(req, write=not idempotent))
        result: dict[str, Any] = ops.json_of(answer, (200, 202))
        return result

"""The Python client: finds the primary through the leader query and survives failovers.

Owns talking to a cluster over HTTP with only the standard library: asking nodes ``GET
/leader``, sending writes to the primary, following a 307 from a node that is not, retrying on
another node while no primary answers, and reading (from the primary, or ``stale=True`` from any
node). A write is retried only when it certainly did not happen (connection refused, a 503
"not accepting writes", a redirect); when it may have happened (the connection broke after the
request went out, or the node answered "outcome unknown") it raises ``OutcomeUnknown`` and the
caller decides. It must never report a write as done without the node's 200, and never retry a
write whose outcome is unknown unless asked to.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from hacluster.config.model import TOKEN_ENV, ClusterConfig


class HaclusterError(Exception):
    """Base of the client's errors."""


class RequestFailed(HaclusterError):
    """The cluster answered with an error that retrying will not fix (4xx, 5xx)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body


class NoLeader(HaclusterError):
    """No node could be reached as primary within the failover timeout."""


class OutcomeUnknown(HaclusterError):
    """The write may or may not have been applied (it was sent; no acknowledgement came)."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    seq: int
    first_seq: int
    epoch: int
    node: str


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]
    url: str

    def json(self) -> Any:
        return json.loads(self.body)


def _message(answer: Answer) -> str:
    try:
        doc = answer.json()
    except ValueError:
        return answer.body[:200].decode(errors="replace")
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)


CA_FILE_ENV = "HACLUSTER_CA_FILE"


def client_token(cfg: ClusterConfig) -> str | None:
    """The token a tool presents: ``$HACLUSTER_TOKEN`` (a role token), else the legacy
    ``cluster.token`` of the config."""
    return os.environ.get(TOKEN_ENV) or cfg.token


class Client:
    """A cluster client. ``urls`` are the nodes' API URLs (``http(s)://host:port``).

    Over https the nodes are verified against ``ca_file`` (default ``$HACLUSTER_CA_FILE``,
    else the system's trust store); ``cert_file``/``key_file`` present a client certificate
    (needed for backups when the cluster requires peer certificates)."""

    def __init__(self, urls: Sequence[str], token: str | None, *, timeout: float = 5.0,
                 failover_timeout: float = 15.0, retry_unknown: bool = False,
                 ca_file: str | os.PathLike[str] | None = None,
                 cert_file: str | os.PathLike[str] | None = None,
                 key_file: str | os.PathLike[str] | None = None) -> None:
        if not urls:
            raise ValueError("at least one node URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.token = token
        self.timeout = timeout
        self.failover_timeout = failover_timeout
        self.retry_unknown = retry_unknown
        self.leader_url: str | None = None
        ca_file = ca_file or os.environ.get(CA_FILE_ENV) or None
        self.ssl = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if cert_file:
            self.ssl.load_cert_chain(cert_file, key_file)

    @classmethod
    def from_config(cls, path: str | Path, **kw: Any) -> Client:
        from hacluster.config import load_config
        cfg = load_config(path)
        kw.setdefault("ca_file", cfg.tls.ca_file)
        return cls([n.api.url for n in cfg.nodes], client_token(cfg), **kw)

    # -- one request ----------------------------------------------------------------------

    def request(self, url: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float | None = None) -> Answer:
        """One HTTP request to one node; OSError when the node cannot be reached."""
        parts = urllib.parse.urlsplit(url)
        host, wait = parts.hostname or "127.0.0.1", timeout or self.timeout
        conn = (http.client.HTTPSConnection(host, parts.port or 443, timeout=wait,
                                            context=self.ssl)
                if parts.scheme == "https" else
                http.client.HTTPConnection(host, parts.port or 80, timeout=wait))
        try:
            hdrs = dict(headers or {})
            if self.token:
                hdrs.setdefault("Authorization", f"Bearer {self.token}")
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return Answer(resp.status, resp.read(),
                          {k.lower(): v for k, v in resp.getheaders()}, url)
        finally:
            conn.close()

    def get_json(self, path: str, url: str | None = None) -> Any:
        """GET ``path`` from ``url`` or from the first node that answers."""
        answer = self._any("GET", path, url)
        if answer.status != 200:
            raise RequestFailed(answer.status, _message(answer), answer.body)
        return answer.json()

    def _order(self) -> list[str]:
        first = [self.leader_url] if self.leader_url in self.urls else []
        return first + [u for u in self.urls if u not in first]

    # -- the leader -----------------------------------------------------------------------

    def find_leader(self) -> str | None:
        """Ask the nodes ``GET /leader``; the first that knows a primary wins."""
        try:
            self.leader_url = str(self.leader()["url"]).rstrip("/")
        except NoLeader:
            return None
        return self.leader_url

    def leader(self) -> dict[str, Any]:
        """The leader answer of the first node that knows one (``leader``, ``url``, ``epoch``)."""
        for url in self._order():
            try:
                answer = self.request(url, "GET", "/leader", timeout=min(self.timeout, 2.0))
            except OSError:
                continue
            if answer.status == 200:
                doc: dict[str, Any] = answer.json()
                return doc
        raise NoLeader("no node knows a valid primary")

    def _on_primary(self, method: str, path: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None, write: bool = True,
                    timeout: float | None = None) -> Answer:
        """Send to the primary, finding it again after failures, until the failover timeout."""
        deadline = time.monotonic() + self.failover_timeout
        last = "no node reachable"
        while True:
            url = self.leader_url or self.find_leader()
            if url is not None:
                try:
                    answer = self.request(url, method, path, body, headers, timeout)
                except ConnectionRefusedError as exc:
                    last = f"{url}: {exc}"           # never reached the node: safe to retry
                    self.leader_url = None
                except OSError as exc:
                    self.leader_url = None
                    if write and not self.retry_unknown:
                        raise OutcomeUnknown(f"{method} {path} to {url}: {exc}") from exc
                    last = f"{url}: {exc}"
                else:
                    if answer.status == 307 and "location" in answer.headers:
                        moved = urllib.parse.urlsplit(answer.headers["location"])
                        self.leader_url = f"{moved.scheme}://{moved.netloc}"
                        last = f"{url} redirected to {self.leader_url}"
                        continue
                    if answer.status == 503:
                        doc = _safe_json(answer)
                        if doc.get("outcome") == "unknown" and not self.retry_unknown:
                            raise OutcomeUnknown(f"{url}: {doc.get('error')}")
                        last = f"{url}: {doc.get('error', 'unavailable')}"
                        self.leader_url = None
                    else:
                        return answer
            if time.monotonic() >= deadline:
                raise NoLeader(f"no primary within {self.failover_timeout} s ({last})")
            time.sleep(0.05)

    # -- key-value ------------------------------------------------------------------------

    def put(self, key: bytes | str, value: bytes | str, cf: str = "default") -> WriteResult:
        k, v = _b(key), _b(value)
        try:
            text = k.decode("utf-8")
        except UnicodeDecodeError:
            return self.batch([{"op": "put", "cf": cf, "key": k, "value": v}])
        return self._write("PUT", f"/v1/kv/{_quote(text)}?cf={_quote(cf)}", v)

    def delete(self, key: bytes | str, cf: str = "default") -> WriteResult:
        k = _b(key)
        try:
            text = k.decode("utf-8")
        except UnicodeDecodeError:
            return self.batch([{"op": "delete", "cf": cf, "key": k}])
        return self._write("DELETE", f"/v1/kv/{_quote(text)}?cf={_quote(cf)}")

    def batch(self, ops: Sequence[dict[str, Any]]) -> WriteResult:
        """Apply ops atomically: ``{"op": "put"|"delete"|"delete_range", "cf", "key", "value",
        "start", "end"}`` with str or bytes keys and values (sent as CBOR)."""
        body = cbor2.dumps({"ops": list(ops)})
        return self._write("POST", "/v1/batch", body, {"Content-Type": "application/cbor"})

    def _write(self, method: str, path: str, body: bytes | None = None,
               headers: dict[str, str] | None = None) -> WriteResult:
        answer = self._on_primary(method, path, body, headers)
        if answer.status != 200:
            raise RequestFailed(answer.status, _message(answer), _safe_json(answer))
        doc = answer.json()
        return WriteResult(doc["seq"], doc["first_seq"], doc["epoch"], doc.get("node", ""))

    def get(self, key: bytes | str, cf: str = "default", *, stale: bool = False,
            url: str | None = None) -> bytes | None:
        """The value, or None when absent. ``stale=True`` reads any node (``url``, or the
        first that answers) without going to the primary."""
        raw = _b(key)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            # Not expressible in a URL path: a one-item scan from the key itself.
            for k, v in self.scan_from(raw, cf, stale=stale):
                return v if k == raw else None
            return None
        path = f"/v1/kv/{_quote(text)}?cf={_quote(cf)}"
        if stale:
            answer = self._any("GET", path + "&stale=1", url)
        else:
            answer = self._on_primary("GET", path, write=False)
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise RequestFailed(answer.status, _message(answer))
        return answer.body

    def scan(self, prefix: bytes | str = b"", cf: str = "default", *, page: int = 1000,
             stale: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) under ``prefix`` in key order, fetched ``page`` at a time."""
        after: bytes | None = None
        p = _b(prefix).decode("utf-8")
        while True:
            q = f"/v1/kv?cf={_quote(cf)}&prefix={_quote(p)}&limit={page}"
            if after is not None:
                q += f"&start_after_b64={_quote(base64.b64encode(after).decode())}"
            headers = {"Accept": "application/cbor"}
            answer = (self._any("GET", q + "&stale=1", None, headers=headers) if stale
                      else self._on_primary("GET", q, headers=headers, write=False))
            if answer.status != 200:
                raise RequestFailed(answer.status, _message(answer))
            doc = cbor2.loads(answer.body)
            yield from ((bytes(k), bytes(v)) for k, v in doc["items"])
            if not doc["more"] or not doc["items"]:
                return
            after = doc["items"][-1][0]

    def scan_from(self, key: bytes, cf: str, *, stale: bool) -> list[tuple[bytes, bytes]]:
        q = (f"/v1/kv?cf={_quote(cf)}&limit=1&prefix_b64="
             f"{_quote(base64.b64encode(key).decode())}")
        headers = {"Accept": "application/cbor"}
        answer = (self._any("GET", q + "&stale=1", None, headers=headers) if stale
                  else self._on_primary("GET", q, headers=headers, write=False))
        if answer.status != 200:
            raise RequestFailed(answer.status, _message(answer))
        return [(bytes(k), bytes(v)) for k, v in cbor2.loads(answer.body)["items"]]

    def _any(self, method: str, path: str, url: str | None, body: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float | None = None) -> Answer:
        """One request to ``url``, or to the first node that answers (the leader first)."""
        errors = []
        for u in [url] if url else self._order():
            try:
                return self.request(u, method, path, body, headers, timeout)
            except OSError as exc:
                errors.append(f"{u}: {exc}")
        raise HaclusterError(f"no node answered {path}: {'; '.join(errors)}")

    # -- the cluster ----------------------------------------------------------------------

    def cluster(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/cluster")
        return result

    def history(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get_json("/history")
        return result

    def admin(self, action: str, body: dict[str, Any] | None = None,
              on_primary: bool = False, timeout: float = 30.0) -> dict[str, Any]:
        """POST ``/v1/admin/<action>`` to the primary or to the first node that answers."""
        data = json.dumps(body or {}).encode()
        headers = {"Content-Type": "application/json"}
        if on_primary:
            answer = self._on_primary("POST", f"/v1/admin/{action}", data, headers,
                                      write=False, timeout=timeout)
        else:
            answer = self._any("POST", f"/v1/admin/{action}", None, data, headers, timeout)
        if answer.status not in (200, 202):
            raise RequestFailed(answer.status, _message(answer), _safe_json(answer))
        result: dict[str, Any] = answer.json()
        return result


def _b(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _safe_json(answer: Answer) -> dict[str, Any]:
    try:
        doc = answer.json()
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}

"""The client's rules, shared by ``Client`` and ``AsyncClient``; no I/O happens here.

Owns how a call reaches the primary: asking nodes ``GET /leader`` (nodes that just failed last),
following a 307, when to retry (capped exponential backoff with jitter, until the call's
deadline), and the outcome-unknown rule — a write is retried only when it certainly did not
happen (the connection was never made, a 503 "not accepting writes", a redirect); when it may
have happened (the request went out and no answer came, or the node answered "outcome
unknown") it raises ``OutcomeUnknown`` unless the caller opted into ``retry_unknown``.

A call is a generator that yields what to do (``Send`` one request, ``Sleep``) and is sent back
what came of it (an ``Answer`` or a ``Failure``); each client drives it with its own I/O. It
must never report a write as done without the node's 200, and never retry a write whose outcome
is unknown unless asked to.
"""

from __future__ import annotations

import json
import random
import time
import urllib.parse
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from hacluster.client.errors import HaclusterError, NoLeader, OutcomeUnknown

# A node that does not accept a connection within this long is treated as gone: on a LAN a
# connection takes well under a millisecond, and a vanished host never answers at all.
CONNECT_TIMEOUT_S = 0.5
# The longest an attempt waits for its answer while the other nodes still follow its node: a
# sync write the cluster cannot confirm is answered 503 at the node's
# replication.sync_timeout_s (5 s by default), so this leaves it time to say so.
REQUEST_TIMEOUT_S = 10.0
# An attempt on the primary still unanswered after PROBE_AFTER_S makes the client ask the
# other nodes' /leader every PROBE_EVERY_S; once one of them no longer names that node (in
# that epoch), the attempt is given up. The others stop naming a primary when its lease
# (0.6 s by default) has ended in their view, so a vanished primary costs about a lease.
PROBE_AFTER_S = 0.3
PROBE_EVERY_S = 0.1
PROBE_TIMEOUT_S = 0.25
# Calls any node may answer (cluster views, stale reads) wait at most this long for one node.
ANY_TIMEOUT_S = 2.0
DEADLINE_S = 15.0
BACKOFF_FIRST_S = 0.05
BACKOFF_CAP_S = 1.0


@dataclass(frozen=True, slots=True)
class Send:
    """Make one HTTP request; the driver answers with an ``Answer`` or a ``Failure``."""

    url: str
    method: str
    path: str
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float = REQUEST_TIMEOUT_S
    connect_timeout: float = CONNECT_TIMEOUT_S
    # Answer Pending when no answer came within this long (None: just wait).
    probe_after: float | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Pending:
    """The answer to a ``Send`` with ``probe_after``: no answer yet; the request is still in
    flight. The call then sends other requests (probes) and ends with ``Await`` or
    ``Abandon``."""

    url: str


@dataclass(frozen=True, slots=True)
class Await:
    """Wait up to ``seconds`` more for the request in flight: an ``Answer``, a ``Failure`` or
    ``Pending`` again."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Abandon:
    """Give up the request in flight (its outcome is unknown); the driver answers with a
    ``Failure`` with ``sent`` True."""

    url: str


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]          # lower-cased names
    url: str

    def json(self) -> Any:
        return json.loads(self.body)

    def doc(self) -> dict[str, Any]:
        """The body as a JSON object, or {} when it is not one."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def message(self) -> str:
        doc = self.doc()
        if doc:
            return str(doc.get("error", doc))
        return self.body[:200].decode(errors="replace")


@dataclass(frozen=True, slots=True)
class Failure:
    """No answer. ``sent``: the request may have reached the node (the connection was made
    and then broke or timed out); False only when it certainly did not."""

    url: str
    sent: bool
    error: str


Step = Send | Sleep | Await | Abandon
Result = Answer | Failure | Pending | None
Call = Generator[Step, Result, Answer]


@dataclass(slots=True)
class Settings:
    timeout: float = REQUEST_TIMEOUT_S
    connect_timeout: float = CONNECT_TIMEOUT_S
    deadline: float = DEADLINE_S
    retry_unknown: bool = False
    # None: never probe (an attempt waits its whole timeout).
    probe_after: float | None = PROBE_AFTER_S
    backoff_first: float = BACKOFF_FIRST_S
    backoff_cap: float = BACKOFF_CAP_S


def backoff(attempt: int, first: float, cap: float, rng: Callable[[], float]) -> float:
    """Capped exponential with jitter: the ``attempt``-th wait (0-based) is drawn from
    [d/2, d) with d = min(cap, first * 2^attempt), so clients that failed together spread out."""
    d = min(cap, first * (2 ** min(attempt, 30)))
    return float(d / 2 + rng() * d / 2)


class Nodes:
    """What a client knows of the cluster: the node URLs, the primary, who failed lately."""

    def __init__(self, urls: list[str], clock: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random) -> None:
        if not urls:
            raise ValueError("at least one node URL is needed")
        self.urls = [u.rstrip("/") for u in urls]
        self.leader_url: str | None = None
        self.leader_epoch: int | None = None      # as /leader named it (None: by a 307)
        self.failed_at: dict[str, float] = {}
        self.clock = clock
        self.rng = rng

    def order(self) -> list[str]:
        """The known primary first, then the others; nodes that failed lately last (a
        vanished host costs a connect timeout each time it is asked)."""
        first = [self.leader_url] if self.leader_url in self.urls else []
        rest = [u for u in self.urls if u not in first]
        rest.sort(key=lambda u: self.failed_at.get(u, 0.0))
        return first + rest

    def failed(self, url: str) -> None:
        self.failed_at[url] = self.clock()
        if self.leader_url == url:
            self.leader_url = None

    def answered(self, url: str) -> None:
        self.failed_at.pop(url, None)


def _timeouts(s: Settings, deadline: float, now: float) -> tuple[float, float]:
    left = max(0.05, deadline - now)
    return min(s.timeout, left), min(s.connect_timeout, left)


def redirect_target(answer: Answer) -> str | None:
    """The node a 307 sends us to (scheme and host only), or None."""
    location = answer.headers.get("location")
    if not location:
        return None
    moved = urllib.parse.urlsplit(location)
    return f"{moved.scheme}://{moved.netloc}" if moved.scheme and moved.netloc else None


def find_leader(nodes: Nodes, s: Settings, deadline: float,
                headers: dict[str, str]) -> Generator[Send, object, dict[str, Any] | None]:
    """Ask each node ``GET /leader`` once; the first that names a primary wins (None: none)."""
    for url in nodes.order():
        timeout, connect = _timeouts(s, deadline, nodes.clock())
        got = yield Send(url, "GET", "/leader", None, headers, min(timeout, 1.0), connect)
        if isinstance(got, Answer):
            nodes.answered(url)
            if got.status == 200:
                doc = got.doc()
                if isinstance(doc.get("url"), str):
                    nodes.leader_url = doc["url"].rstrip("/")
                    epoch = doc.get("epoch")
                    nodes.leader_epoch = epoch if isinstance(epoch, int) else None
                    return doc
        else:
            nodes.failed(url)
        if nodes.clock() >= deadline:
            break
    return None


def on_primary(nodes: Nodes, s: Settings, method: str, path: str, body: bytes | None,
               headers: dict[str, str], *, write: bool, deadline: float) -> Call:
    """Send to the primary, finding it again after failures, until ``deadline``."""
    attempt, last = 0, "no node reachable"
    while True:
        url = nodes.leader_url
        if url is None:
            found = yield from find_leader(nodes, s, deadline, headers)
            url = None if found is None else nodes.leader_url
        if url is not None:
            timeout, connect = _timeouts(s, deadline, nodes.clock())
            got = yield Send(url, method, path, body, headers, timeout, connect, s.probe_after)
            while isinstance(got, Pending):
                # Slow, or gone? Ask the others whether they still follow it.
                if (yield from deposed(nodes, url, headers)):
                    got = yield Abandon(url)
                else:
                    got = yield Await(PROBE_EVERY_S)
            assert got is not None
            if isinstance(got, Failure):
                nodes.failed(url)
                if got.sent and write and not s.retry_unknown:
                    raise OutcomeUnknown(f"{method} {path} to {url}: {got.error}")
                last = f"{url}: {got.error}"
            elif got.status == 307 and redirect_target(got) is not None:
                nodes.answered(url)
                target = redirect_target(got)
                last = f"{url} redirected to {target}"
                if target is not None and target != url and attempt < 2 * len(nodes.urls):
                    nodes.leader_url, nodes.leader_epoch = target, None
                    attempt += 1
                    continue          # a redirect is an answer: follow it at once
                nodes.leader_url = None
            elif got.status == 503:
                nodes.answered(url)
                doc = got.doc()
                if doc.get("outcome") == "unknown" and write and not s.retry_unknown:
                    raise OutcomeUnknown(f"{url}: {doc.get('error')}")
                last = f"{url}: {doc.get('error', 'unavailable')}"
                nodes.leader_url = None
            else:
                nodes.answered(url)
                return got
        now = nodes.clock()
        if now >= deadline:
            raise NoLeader(f"no primary before the deadline ({last})")
        yield Sleep(min(backoff(attempt, s.backoff_first, s.backoff_cap, nodes.rng),
                        deadline - now))
        attempt += 1


def deposed(nodes: Nodes, url: str, headers: dict[str, str]) -> Generator[Send, object, bool]:
    """Whether a node other than ``url`` that answers ``GET /leader`` no longer names ``url``
    as the primary (another node, a newer epoch than the one it was found in, or none). No
    answer from any of them: not known, so False (keep waiting)."""
    for other in nodes.urls:
        if other == url:
            continue
        got = yield Send(other, "GET", "/leader", None, headers, PROBE_TIMEOUT_S,
                         PROBE_TIMEOUT_S)
        if not isinstance(got, Answer):
            continue
        if got.status != 200:
            return got.status == 503          # no node holds a valid lease in its view
        doc = got.doc()
        named = str(doc.get("url", "")).rstrip("/")
        epoch = doc.get("epoch")
        if named != url or (nodes.leader_epoch is not None and isinstance(epoch, int)
                            and epoch > nodes.leader_epoch):
            return True
    return False


def on_any(nodes: Nodes, s: Settings, method: str, path: str, body: bytes | None,
           headers: dict[str, str], *, url: str | None, deadline: float,
           write: bool = False) -> Call:
    """One request to ``url``, or to the first node that answers (the primary first).

    ``write``: the request changes something and doing it twice is not the same as once (a
    failover, a backup): once sent without an answer it is OutcomeUnknown, not sent to the
    next node, unless the caller opted into ``retry_unknown``."""
    errors = []
    for u in [url.rstrip("/")] if url else nodes.order():
        timeout, connect = _timeouts(s, deadline, nodes.clock())
        got = yield Send(u, method, path, body, headers, timeout, connect)
        if isinstance(got, Answer):
            nodes.answered(u)
            return got
        assert isinstance(got, Failure)
        nodes.failed(u)
        if got.sent and write and not s.retry_unknown:
            raise OutcomeUnknown(f"{method} {path} to {u}: {got.error}")
        errors.append(f"{u}: {got.error}")
    raise HaclusterError(f"no node answered {path}: {'; '.join(errors)}")

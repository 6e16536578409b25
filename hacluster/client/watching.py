"""The rules of a client's watch, shared by both clients; no I/O here.

Owns the position of one watch (the next seq wanted and the epoch of the last change seen), the
request that resumes it, reading the server's lines (split from any chunking, decoded, keys and
values back to bytes), and what each answer means: changes to hand out (each once, in seq
order, even when a reconnect re-sends some), a resume elsewhere (the node stopped being the
primary, or could not be reached), or the end of the watch (``WatchLost``: 410, 409).
It must never hand out a change twice or skip one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from hacluster.client.errors import NoLeader, RequestFailed, WatchLost
from hacluster.client.ops import b, quote
from hacluster.client.rules import (
    Answer,
    Failure,
    Nodes,
    Send,
    Settings,
    Sleep,
    backoff,
    find_leader,
    redirect_target,
)

# The server sends a progress line after this long without a change; a stream silent for
# READ_TIMEOUT_FACTOR times as long is taken for lost (a vanished primary sends nothing).
PROGRESS_MS = 250
READ_TIMEOUT_FACTOR = 4
MAX_LINE = 256 << 20


@dataclass(frozen=True, slots=True)
class Event:
    """One change: ``type`` put, delete or delete_range (``key``..``end``, end excluded);
    ``seq`` the write's seq (shared by the changes of one batch or transaction)."""

    type: str
    key: bytes
    value: bytes | None
    seq: int
    epoch: int
    cf: str
    end: bytes | None = None


class LineSplitter:
    """Complete lines out of arbitrary chunks; a partial line waits for the next chunk."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        if b"\n" not in chunk:
            if len(self._buf) > MAX_LINE:
                raise RequestFailed(502, f"a watch line longer than {MAX_LINE} bytes")
            return []
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        return [bytes(line) for line in lines if line]


def _bytes(doc: dict[str, Any], name: str) -> bytes | None:
    if name in doc:
        return b(doc[name])
    if f"{name}_b64" in doc:
        return base64.b64decode(doc[f"{name}_b64"])
    return None


class WatchCursor:
    """Where a watch is: ``next_seq`` (None: from the next change) and the last epoch seen."""

    def __init__(self, prefix: bytes | str, cf: str, since_seq: int | None) -> None:
        self.prefix = b(prefix)
        self.cf = cf
        self.next_seq = since_seq
        self.epoch: int | None = None

    def path(self) -> str:
        try:
            where = f"prefix={quote(self.prefix.decode('utf-8'))}"
        except UnicodeDecodeError:
            where = f"prefix_b64={quote(base64.b64encode(self.prefix).decode())}"
        q = f"/v1/watch?cf={quote(self.cf)}&{where}&progress_ms={PROGRESS_MS}"
        if self.next_seq is not None:
            q += f"&since_seq={self.next_seq}"
            if self.epoch is not None:
                q += f"&epoch={self.epoch}"
        return q

    def opened(self, answer: Answer) -> bool:
        """Whether the stream may be read (200). False: find the primary again (307, 503).
        Raises WatchLost (410, 409) or RequestFailed (any other refusal)."""
        if answer.status == 200:
            return True
        if answer.status in (307, 503):
            return False
        if answer.status in (409, 410):
            raise WatchLost(answer.status, answer.message(), self.next_seq or 0)
        raise RequestFailed(answer.status, answer.message(), answer.doc())

    def started(self, headers: dict[str, str]) -> None:
        """A 200 stream opened: where it starts (``X-Hacluster-Since-Seq``), if no position
        was known yet (a watch "from now")."""
        since = headers.get("x-hacluster-since-seq", "")
        if self.next_seq is None and since.isdigit():
            self.next_seq = int(since)

    def read(self, line: bytes) -> list[Event] | None:
        """The new changes of one line ([] for progress); None when the server ended the
        stream with a reason to resume elsewhere. Raises WatchLost when it cannot resume."""
        doc = json.loads(line)
        if "events" in doc:
            seq = int(doc["seq"])
            if self.next_seq is not None and seq < self.next_seq:
                return []              # seen before a reconnect
            self.next_seq, self.epoch = seq + 1, int(doc["epoch"])
            return [self._event(e, seq, self.epoch) for e in doc["events"]]
        if "progress" in doc:
            progress = int(doc["progress"]) + 1
            if self.next_seq is None or progress > self.next_seq:
                self.next_seq = progress
            self.epoch = int(doc.get("epoch", self.epoch or 0)) or self.epoch
            return []
        status = int(doc.get("status", 500))
        if status in (409, 410):
            raise WatchLost(status, str(doc.get("error")), self.next_seq or 0)
        return None

    def _event(self, e: dict[str, Any], seq: int, epoch: int) -> Event:
        kind = str(e["type"])
        if kind == "delete_range":
            return Event(kind, _bytes(e, "start") or b"", None, seq, epoch, self.cf,
                         _bytes(e, "end"))
        return Event(kind, _bytes(e, "key") or b"", _bytes(e, "value"), seq, epoch, self.cf)


@dataclass(frozen=True, slots=True)
class Stream:
    """Open the watch stream; the driver answers with an ``Answer`` (any status but 200, body
    read), a ``Failure``, or — after handing out what the 200 stream carried until it ended —
    ``Streamed``."""

    url: str
    path: str
    headers: dict[str, str]
    read_timeout: float
    connect_timeout: float


@dataclass(frozen=True, slots=True)
class Streamed:
    """A 200 stream was read until it ended (the server ended it, or it broke or fell
    silent for longer than the read timeout)."""


WatchStep = Send | Sleep | Stream
WatchCall = Generator[WatchStep, Answer | Failure | Streamed | None, None]


def watch_call(nodes: Nodes, s: Settings, cursor: WatchCursor,
               headers: dict[str, str]) -> WatchCall:
    """A watch for ever: find the primary, open the stream from the cursor, and after it ends
    find the primary again (the same one if it still is) and resume. Raises ``NoLeader``
    after ``s.deadline`` seconds without an open stream, ``WatchLost`` when the position
    cannot be resumed."""
    attempt, down_since = 0, nodes.clock()
    read_timeout = PROGRESS_MS / 1000 * READ_TIMEOUT_FACTOR
    while True:
        url = nodes.leader_url
        if url is None:
            yield from find_leader(nodes, s, down_since + s.deadline, headers)
            url = nodes.leader_url
        if url is not None:
            got = yield Stream(url, cursor.path(), headers, read_timeout, s.connect_timeout)
            if isinstance(got, Streamed):
                attempt, down_since = 0, nodes.clock()
            elif isinstance(got, Failure):
                nodes.failed(url)
            elif isinstance(got, Answer) and not cursor.opened(got) and got.status == 307:
                target = redirect_target(got)
                if target is not None and target != url:
                    nodes.leader_url = target
                    continue
            nodes.leader_url = None
        if nodes.clock() - down_since > s.deadline:
            raise NoLeader(f"watch: no primary within {s.deadline} s")
        yield Sleep(backoff(attempt, s.backoff_first, s.backoff_cap, nodes.rng))
        attempt += 1

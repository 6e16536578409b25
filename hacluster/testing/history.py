"""Client-side write history and the checks run over it: what clients were told, judged.

Owns recording every write attempt a test client makes (``Op``: the key, the node asked, when
the request started and when its response ended on CLOCK_MONOTONIC, the HTTP status, and the
epoch and seq a 200 answer carried); the thread-safe, append-only ``History``, saved to and
loaded from JSON so that a writer running in another process or network namespace can record
and the test judges; the ``Writer`` that keeps writing unique keys to whichever node accepts
them (or, in register mode, writes and reads back a few shared keys); how each op's outcome is
classified (``Op.outcome``: took effect, certainly did not, or unknown); and pure checkers over
recorded ops: acknowledged writes lost, split brain (two epochs acknowledging in an order only
two writable primaries can produce), losses missing from the divergent-tail files,
acknowledgements after a fence, sequence numbers out of order, stale reads of hot keys, and
reads no order of the writes explains (``linearizable``, by ``linearizability.check``).

It must never trust the server's word over the recorded responses (a write is acknowledged
when, and only when, its client got a 200; status pages and logs are not evidence), never fake
the network (the writer speaks HTTP to real node processes), and never report a violation the
recorded times cannot prove: the server acknowledged an op somewhere inside its
``[start, end]``, so every ordering is judged on those bounds alone. CLOCK_MONOTONIC is shared by
all processes of one machine (namespaces included), so histories of several processes compare.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import random
import sys
import threading
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from hacluster.testing.harness import TOKEN, request, wait_for
from hacluster.testing.linearizability import MAX_STATES, SECONDS, Call, Outcome, check

FORMAT = "hacluster-history"
HOT = "hot-"           # hot keys: overwritten with a rising counter and read back
REG = "reg-"           # register keys: shared by every writer, written and read at random
VERSION = 1


@dataclass(frozen=True, slots=True)
class Op:
    """One write attempt as its client saw it."""

    key: str
    node: str              # the node asked
    start: float           # time.monotonic() before the request was sent
    end: float             # time.monotonic() after the response was read (or the error)
    status: int            # HTTP status; 0 for a connection error or timeout
    epoch: int | None = None   # from a 200 answer
    seq: int | None = None     # from a 200 answer
    note: str = ""         # for people: the error or refusal text
    kind: str = "put"      # "put", or "read" (a GET of a hot key)
    value: str | None = None   # hot keys: the counter written, or read (None: absent)

    @property
    def acked(self) -> bool:
        """A write the client was told is done (reads are never acknowledgements)."""
        return self.status == 200 and self.kind == "put"

    @property
    def answered(self) -> bool:
        """A read that returned the key's value, or that it is absent."""
        return self.kind == "read" and self.status in (200, 404)

    @property
    def refused(self) -> bool:
        """A write the node certainly did not apply.

        A connection refused (nothing was sent), a redirect, a 4xx (checked before writing),
        a 503 that does not say "outcome unknown" (the write gate shut before the local write)
        and a 507 (disk full, refused before writing). Anything else that is not a 200 (a
        timeout or a connection broken after the request went out, a 503 "outcome unknown", a
        500, a proxy's 502/504) may have been applied.
        """
        if self.kind != "put" or self.status == 200:
            return False
        if self.status == 0:
            return self.note.startswith("ConnectionRefusedError")
        if self.status == 503:
            return not self.note.startswith("outcome unknown")
        return self.status in (307, 507) or 400 <= self.status < 500

    @property
    def outcome(self) -> Outcome:
        """"ok": a write that took effect inside [start, end], or an answered read; "failed": a
        refused write, or a read that was not answered; "unknown": a write that may have taken
        effect at any time after its start, or never."""
        if self.kind == "read":
            return "ok" if self.answered else "failed"
        if self.acked:
            return "ok"
        return "failed" if self.refused else "unknown"

    def span(self) -> str:
        return f"request {self.start:.3f}..{self.end:.3f}"

    def detail(self) -> str:
        told = (f"epoch {self.epoch}, seq {self.seq}" if self.acked
                else f"status {self.status}")
        return f"{self.node}, {told}, {self.span()}"

    def describe(self) -> str:
        return f"{self.key!r} ({self.detail()})"

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Op:
        return cls(key=str(doc["key"]), node=str(doc["node"]), start=float(doc["start"]),
                   end=float(doc["end"]), status=int(doc["status"]),
                   epoch=None if doc.get("epoch") is None else int(doc["epoch"]),
                   seq=None if doc.get("seq") is None else int(doc["seq"]),
                   note=str(doc.get("note", "")), kind=str(doc.get("kind", "put")),
                   value=None if doc.get("value") is None else str(doc["value"]))


class History:
    """An append-only list of Ops, safe to append to from several threads."""

    def __init__(self, ops: Iterable[Op] = ()) -> None:
        self._lock = threading.Lock()
        self._ops: list[Op] = list(ops)

    def append(self, op: Op) -> None:
        with self._lock:
            self._ops.append(op)

    def extend(self, ops: Iterable[Op]) -> None:
        new = list(ops)
        with self._lock:
            self._ops.extend(new)

    def ops(self) -> list[Op]:
        """A snapshot: later appends do not change it."""
        with self._lock:
            return list(self._ops)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops())

    def __len__(self) -> int:
        with self._lock:
            return len(self._ops)

    def acked(self) -> list[Op]:
        return [op for op in self.ops() if op.acked]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the history as JSON, atomically (a reader never sees half a file)."""
        target = Path(path)
        doc = {"format": FORMAT, "version": VERSION, "clock": "CLOCK_MONOTONIC",
               "ops": [asdict(op) for op in self.ops()]}
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> History:
        doc = json.loads(Path(path).read_text())
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"{path}: not a {FORMAT} file")
        if doc.get("version") != VERSION:
            raise ValueError(f"{path}: {FORMAT} version {doc.get('version')}, "
                             f"expected {VERSION}")
        return cls(Op.from_json(op) for op in doc["ops"])


# --- writing ------------------------------------------------------------------------------


class Target(Protocol):
    """What the writer needs of a node; ``NodeProc`` is one."""

    @property
    def name(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def running(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A node known only by address (a writer in another process cannot see processes)."""

    name: str
    host: str
    port: int
    running: bool = True

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``name=host:port``."""
        name, sep, address = text.partition("=")
        host, colon, port = address.rpartition(":")
        if not (sep and colon and name and host and port.isdigit()):
            raise ValueError(f"{text!r}: expected name=host:port")
        return cls(name, host, int(port))


def read_once(target: Target, key: str, *, cf: str = "default", timeout: float = 2.0,
              token: str = TOKEN) -> Op:
    """One GET of ``key`` (never stale, never following a redirect), recorded as a read."""
    start = time.monotonic()
    try:
        resp = request(target.port, "GET", f"/v1/kv/{key}?cf={cf}", token=token,
                       timeout=timeout, host=target.host)
    except (OSError, http.client.HTTPException) as exc:
        return Op(key, target.name, start, time.monotonic(), 0,
                  note=f"{type(exc).__name__}: {exc}", kind="read")
    end = time.monotonic()
    value = resp.body.decode(errors="replace") if resp.status == 200 else None
    note = "" if resp.status in (200, 404) else resp.body[:200].decode(errors="replace")
    return Op(key, target.name, start, end, resp.status, note=note, kind="read", value=value)


def put_once(target: Target, key: str, *, value: bytes = b"x", cf: str = "default",
             timeout: float = 2.0, token: str = TOKEN) -> tuple[Op, str | None]:
    """One PUT, never following a redirect: the recorded Op and the leader hinted at, if any.

    The hint is the node name of a 503's ``leader``, or ``host:port`` of a 307's Location.
    """
    start = time.monotonic()
    status, epoch, seq, note, hint = 0, None, None, "", None
    try:
        resp = request(target.port, "PUT", f"/v1/kv/{key}?cf={cf}", body=value, token=token,
                       timeout=timeout, host=target.host)
    except (OSError, http.client.HTTPException) as exc:
        end = time.monotonic()
        note = f"{type(exc).__name__}: {exc}"
    else:
        end = time.monotonic()
        status = resp.status
        if status == 307:
            where = urlsplit(resp.headers.get("location", ""))
            hint = f"{where.hostname}:{where.port}" if where.hostname else None
            note = "redirect"
        else:
            try:
                doc = resp.json()
            except ValueError:
                doc = None
            if status == 200:
                try:
                    epoch, seq = int(doc["epoch"]), int(doc["seq"])
                except (TypeError, KeyError, ValueError):
                    note = f"200 without the expected JSON: {resp.body[:200]!r}"
            elif isinstance(doc, dict):
                note = str(doc.get("error", ""))
                if doc.get("outcome") == "unknown":
                    note = "outcome unknown: " + note
                leader = doc.get("leader")
                hint = leader if isinstance(leader, str) else None
            else:
                note = resp.body[:200].decode(errors="replace")
    text = value.decode(errors="replace") if key.startswith((HOT, REG)) else None
    return Op(key, target.name, start, end, status, epoch, seq, note, value=text), hint


class Writer:
    """Threads that write unique keys ``f"{prefix}{i:07d}"`` to whichever node accepts them.

    Each thread asks the node that last acknowledged it; after a refusal (307, 503, another
    status) or a connection error it moves on: to the node the answer named as leader when
    that is one of ``nodes`` and running, otherwise to the next running node in turn. Every
    attempt, failed or not, is recorded in ``history``; every attempt uses a new key.

    With ``register_keys=N`` each attempt is instead, at random, a write or (``read_share`` of
    the time) a primary read of one of the keys ``reg-0`` .. ``reg-{N-1}``, which every writer
    and thread shares, so that the ``linearizable`` check has concurrent ops to order. Written
    values are ``f"{prefix}{thread}-{n}"``: unique per key as long as writers that share a
    cluster use different prefixes, so a read names the write it saw.
    """

    def __init__(self, nodes: Sequence[Target], history: History | None = None, *,
                 prefix: str = "w", threads: int = 1, timeout: float = 2.0,
                 pause: float = 0.005, value: bytes = b"x", cf: str = "default",
                 token: str = TOKEN, hot: int = 0, register_keys: int = 0,
                 read_share: float = 0.5, seed: int | None = None) -> None:
        if not nodes:
            raise ValueError("a writer needs at least one node")
        self.nodes = list(nodes)
        self.history = history if history is not None else History()
        self.prefix = prefix
        self.timeout = timeout
        self.pause = pause
        self.value = value
        self.cf = cf
        self.token = token
        self.hot = hot       # per thread: hot keys it overwrites and reads back after each write
        self.register_keys = register_keys
        self.read_share = read_share
        self.seed = seed     # with one thread, the same ops in the same order on every run
        self._threads = [threading.Thread(target=self._run, args=(i,),
                                          name=f"writer-{prefix}-{i}", daemon=True)
                         for i in range(threads)]
        self._stop = threading.Event()
        self._counter = itertools.count()
        self._counter_lock = threading.Lock()

    def start(self) -> Writer:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> History:
        """Stop writing; wait for attempts in flight (each ends within its timeout)."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            raise RuntimeError(f"writer threads did not stop within {timeout} s: {stuck}")
        return self.history

    def __enter__(self) -> Writer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def acked(self, node: str | None = None, since: float | None = None) -> list[Op]:
        """Acknowledged ops, of ``node`` only and started after ``since`` when given."""
        return [op for op in self.history.acked()
                if (node is None or op.node == node) and (since is None or op.start > since)]

    def wait_acked(self, count: int, timeout: float, node: str | None = None,
                   since: float | None = None) -> list[Op]:
        """Wait until ``acked(node, since)`` has at least ``count`` ops; return them."""
        what = f"{count} acknowledged writes" + (f" from {node}" if node else "") + (
            f" started after {since:.3f}" if since is not None else "")
        result: list[Op] = wait_for(lambda: (a if len(a := self.acked(node, since)) >= count
                                             else None), timeout, what)
        return result

    def _next_key(self) -> str:
        with self._counter_lock:
            return f"{self.prefix}{next(self._counter):07d}"

    def _by_hint(self, hint: str | None, live: list[Target], tried: Target) -> Target | None:
        if hint is None:
            return None
        for node in live:
            if node is not tried and hint in (node.name, f"{node.host}:{node.port}"):
                return node
        return None

    def _register_op(self, node: Target, thread: int, n: int,
                     rng: random.Random) -> tuple[Op, str | None]:
        """One write or primary read of a random register key."""
        key = f"{REG}{rng.randrange(self.register_keys)}"
        if rng.random() < self.read_share:
            return read_once(node, key, cf=self.cf, timeout=self.timeout,
                             token=self.token), None
        return put_once(node, key, value=f"{self.prefix}{thread}-{n}".encode(), cf=self.cf,
                        timeout=self.timeout, token=self.token)

    def _run(self, thread: int = 0) -> None:
        preferred: Target | None = None
        last: Target | None = None
        turn = 0
        counter = 0
        written = itertools.count()
        rng = random.Random(None if self.seed is None else f"{self.seed}-{thread}")
        while not self._stop.is_set():
            live = [n for n in self.nodes if n.running]
            if not live:
                self._stop.wait(0.05)
                continue
            node: Target | None = preferred if any(n is preferred for n in live) else None
            while node is None:
                candidate = live[turn % len(live)]
                turn += 1
                if candidate is not last or len(live) == 1:
                    node = candidate
            if self.register_keys:
                op, hint = self._register_op(node, thread, next(written), rng)
            else:
                op, hint = put_once(node, self._next_key(), value=self.value, cf=self.cf,
                                    timeout=self.timeout, token=self.token)
            self.history.append(op)
            last = node
            # A read answers no leader hint: after a refused one, the next node in turn.
            preferred = node if op.acked or op.answered else self._by_hint(hint, live, node)
            if self.hot and op.acked:
                # One thread owns each hot key: its counter orders the key's writes, so a
                # read may never return less than a write acknowledged before it began.
                counter += 1
                key = f"{HOT}{self.prefix}{thread}-{counter % self.hot}"
                hot_op, _ = put_once(node, key, value=str(counter).encode(), cf=self.cf,
                                     timeout=self.timeout, token=self.token)
                self.history.append(hot_op)
                self.history.append(read_once(node, key, cf=self.cf, timeout=self.timeout,
                                              token=self.token))
            if self.pause > 0:
                self._stop.wait(self.pause)


def write_for(targets: Sequence[Target], seconds: float, out: str | os.PathLike[str],
              stop_file: str | os.PathLike[str] | None = None, **writer_kw: Any) -> History:
    """Run a Writer for ``seconds`` (or until ``stop_file`` exists), save its history to
    ``out`` and return it.

    For a writer that must run in another process (e.g. inside a network namespace):
    ``python -m hacluster.testing.history --seconds 6 --out h.json n1=10.0.0.1:8080``.
    """
    writer = Writer(targets, **writer_kw).start()
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (stop_file and Path(stop_file).exists()):
            time.sleep(0.05)
    finally:
        history = writer.stop()
        history.save(out)
    return history


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hacluster.testing.history",
        description="Write unique keys to the nodes for a while; save the history as JSON.")
    parser.add_argument("nodes", nargs="+", type=Endpoint.parse, help="name=host:port")
    parser.add_argument("--seconds", type=float, required=True,
                        help="the longest it writes")
    parser.add_argument("--stop-file", help="stop early once this file exists")
    parser.add_argument("--out", required=True)
    parser.add_argument("--prefix", default="w")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--pause", type=float, default=0.005)
    parser.add_argument("--token", default=TOKEN)
    parser.add_argument("--hot", type=int, default=0,
                        help="hot keys per thread, overwritten and read back")
    parser.add_argument("--register", type=int, default=0, metavar="N",
                        help="instead of unique keys, write and read N shared keys at random")
    parser.add_argument("--read-share", type=float, default=0.5,
                        help="with --register: the share of reads")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)
    history = write_for(args.nodes, args.seconds, args.out, args.stop_file, prefix=args.prefix,
                        threads=args.threads, timeout=args.timeout, pause=args.pause,
                        token=args.token, hot=args.hot, register_keys=args.register,
                        read_share=args.read_share, seed=args.seed)
    print(f"{len(history)} attempts, {len(history.acked())} acknowledged", file=sys.stderr)
    return 0


# --- checking -----------------------------------------------------------------------------


def _acks(history: Iterable[Op]) -> list[Op]:
    return [op for op in history if op.acked]


def lost_acked(history: Iterable[Op], final_keys: Container[bytes]) -> list[str]:
    """Acknowledged keys missing from the final primary's contents (sync mode: none)."""
    return [f"acknowledged write {op.describe()} is missing from the final state"
            for op in _acks(history) if op.key.encode() not in final_keys]


def unreported_losses(history: Iterable[Op], final_keys: Container[bytes],
                      tail_keys: Container[bytes]) -> list[str]:
    """Async mode: acknowledged keys missing from the final state and from every tail file."""
    return [f"acknowledged write {op.describe()} is missing from the final state and from "
            "every divergent-tail file"
            for op in _acks(history)
            if op.key.encode() not in final_keys and op.key.encode() not in tail_keys]


def overlapping_epochs(history: Iterable[Op]) -> list[str]:
    """Split brain: an epoch acknowledged a write certainly after a later epoch had.

    For epochs e1 < e2 every acknowledgement of e1 must precede every acknowledgement of e2
    (e2's primary took over only once e1's lease ran out). It is certainly violated when an e1
    ack's request *started* after an e2 ack's response *ended*. Ops in flight at the failover,
    whose intervals merely overlap the other epoch's, prove nothing and are not reported.
    """
    by_epoch: dict[int, list[Op]] = {}
    for op in _acks(history):
        if op.epoch is not None:
            by_epoch.setdefault(op.epoch, []).append(op)
    latest = {e: max(ops, key=lambda op: op.start) for e, ops in by_epoch.items()}
    earliest = {e: min(ops, key=lambda op: op.end) for e, ops in by_epoch.items()}
    out = []
    for e1, e2 in itertools.combinations(sorted(by_epoch), 2):
        late, early = latest[e1], earliest[e2]
        if late.start > early.end:
            count = sum(1 for op in by_epoch[e1] if op.start > early.end)
            gap = late.start - early.end
            out.append(f"split brain: epoch {e1} acknowledged {late.describe()} {gap:.3f} s "
                       f"after epoch {e2} had acknowledged {early.describe()}; {count} "
                       f"epoch-{e1} acknowledgements began after that one ended")
    return out


def acked_after(history: Iterable[Op], node: str, t: float,
                until: float | None = None) -> list[str]:
    """Acknowledgements by ``node`` certainly made after ``t`` (and before ``until``).

    For fencing: nothing may be acknowledged once the node's lease ran out. An ack counts when
    its request started after ``t`` (and, with ``until``, its response ended before it), so
    an ack in flight at ``t`` is not reported: pick ``t`` as the end of the lease.
    """
    return [f"{node} acknowledged {op.describe()}: request started {op.start - t:.3f} s after "
            f"{t:.3f}, after which it must acknowledge nothing"
            + (f" (until {until:.3f})" if until is not None else "")
            for op in _acks(history)
            if op.node == node and op.start > t and (until is None or op.end < until)]


def seq_anomalies(history: Iterable[Op]) -> list[str]:
    """Within one epoch, sequence numbers are unique and follow the order of acknowledgements.

    Two acknowledged writes with the same (epoch, seq), or an ack that certainly came later
    (its request started after the other's response ended) with a lower or equal seq, mean
    two writers in one epoch or a seq handed out twice. Across epochs async mode may reuse
    seqs of lost writes, so those are not compared.
    """
    by_epoch: dict[int, list[tuple[int, Op]]] = {}
    for op in _acks(history):
        if op.epoch is not None and op.seq is not None:
            by_epoch.setdefault(op.epoch, []).append((op.seq, op))
    out = []
    for epoch in sorted(by_epoch):
        pairs = by_epoch[epoch]
        first: dict[int, Op] = {}
        for seq, op in pairs:
            seen = first.setdefault(seq, op)
            if seen is not op:
                out.append(f"epoch {epoch}: seq {seq} acknowledged twice: "
                           f"{seen.describe()} and {op.describe()}")
        by_end = sorted(pairs, key=lambda p: p[1].end)
        i, best = 0, None      # best: (seq, op), the highest seq of acks that ended before
        for seq, op in sorted(pairs, key=lambda p: p[1].start):
            while i < len(by_end) and by_end[i][1].end < op.start:
                if best is None or by_end[i][0] > best[0]:
                    best = by_end[i]
                i += 1
            if best is not None and best[0] > seq:
                out.append(f"epoch {epoch}: {op.describe()} was acknowledged after "
                           f"{best[1].describe()} but has a lower seq")
    return out


def stale_reads(history: Iterable[Op]) -> list[str]:
    """A read of a hot key returned less than a write of it acknowledged before the read began.

    Each hot key is written by one thread with a rising counter, so its acknowledged writes
    are ordered by value. A read that started after a write's response ended must see that
    value or a later one; less is a stale read (a fenced primary answering, or a lost write).
    """
    ops = list(history)
    writes: dict[str, list[Op]] = {}
    for op in ops:
        if op.acked and op.key.startswith(HOT) and op.value is not None:
            writes.setdefault(op.key, []).append(op)
    out = []
    for read in ops:
        if not read.answered or read.key not in writes:
            continue
        got = int(read.value) if read.value is not None and read.value.isdigit() else -1
        done = [w for w in writes[read.key] if w.end < read.start]
        if not done:
            continue
        newest = max(done, key=lambda w: int(w.value or 0))
        if int(newest.value or 0) > got:
            out.append(f"stale read: {read.node} answered {read.key!r} with "
                       f"{read.value if read.value is not None else 'absent'} "
                       f"({read.span()}) after {newest.describe()} had been acknowledged "
                       f"with {newest.value}")
    return out


def linearizable(history: Iterable[Op], *, max_states: int = MAX_STATES,
                 seconds: float = SECONDS) -> tuple[list[str], list[str]]:
    """Keys read back whose reads no order of their writes explains; and keys left undecided.

    Each key is a register starting absent; writes are classified by ``Op.outcome`` (acked:
    took effect inside the request; refused: left out; anything else: may have taken effect
    any time after its start, or never) and answered primary reads (200, 404 = absent) must
    be explained. A key with a put that recorded no value (the unique keys, whose values are
    not kept) cannot be judged and is skipped. The second list names keys whose search ran
    over ``max_states`` or ``seconds``: not violations, but not proven either.
    """
    ops = list(history)
    blind = {op.key for op in ops if op.kind == "put" and op.value is None}
    calls = [Call(op.key, "read" if op.kind == "read" else "write", op.value, op.start,
                  op.end, op.outcome, op.detail())
             for op in ops if op.key not in blind]
    results = check(calls, max_states=max_states, seconds=seconds)
    return ([r.explain() for r in results if r.linearizable is False],
            [r.explain() for r in results if r.linearizable is None])


def divergent_tail_keys(data_dirs: Iterable[str | os.PathLike[str]],
                        cf: str | None = "default") -> set[bytes]:
    """Keys put by the writes in ``<data_dir>/divergent/*.cbor`` (of column family ``cf``)."""
    # Streamed a batch at a time (either file format): a tail may be as large as its cap.
    from hacluster.divergence import iter_tail_batches
    keys: set[bytes] = set()
    for data_dir in data_dirs:
        for path in sorted((Path(data_dir) / "divergent").glob("*.cbor")):
            for batch in iter_tail_batches(path):
                for op in batch["ops"]:
                    if op[0] == "put" and (cf is None or op[1] == cf):
                        keys.add(bytes(op[2]))
    return keys


Fence = tuple[str, float, float | None]     # (node, no acks after, until or None)


@dataclass
class Verdict:
    """The checks that applied to one history, and what each found."""

    attempts: int
    acked: int
    statuses: dict[int, int]
    epochs: list[int]
    violations: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())

    def summary(self, limit: int = 5) -> dict[str, Any]:
        out: dict[str, Any] = {"attempts": self.attempts, "acked": self.acked,
                               "statuses": self.statuses, "epochs": self.epochs, **self.notes}
        for name, found in self.violations.items():
            out[name] = found[:limit] + ([f"... and {len(found) - limit} more"]
                                         if len(found) > limit else [])
        return out

    def __str__(self) -> str:
        return json.dumps(self.summary(), indent=1, default=str)


def check_all(history: Iterable[Op], final_keys: Container[bytes] | None = None, *,
              tail_keys: Container[bytes] | None = None,
              fences: Iterable[Fence] = ()) -> Verdict:
    """Run every check that applies.

    Always: ``split_brain`` (overlapping_epochs) and ``seq_anomalies``. With reads:
    ``stale_reads`` and ``nonlinearizable`` (linearizable; keys it could not decide in time are
    noted as ``linearizability_unknown``); in async mode (``tail_keys`` given) both are only
    counted in the notes, as a failover may lose acknowledged writes. With ``final_keys``:
    ``lost_acked`` when ``tail_keys`` is None (sync mode: nothing acknowledged may be lost),
    otherwise ``unreported_losses`` (async: lost only into a tail file). Per fence
    ``(node, t, until)``: ``late_acks`` (acked_after).
    """
    ops = list(history)
    acks = _acks(ops)
    statuses: dict[int, int] = {}
    for op in ops:
        statuses[op.status] = statuses.get(op.status, 0) + 1
    verdict = Verdict(attempts=len(ops), acked=len(acks), statuses=dict(sorted(statuses.items())),
                      epochs=sorted({op.epoch for op in acks if op.epoch is not None}))
    verdict.violations["split_brain"] = overlapping_epochs(ops)
    verdict.violations["seq_anomalies"] = seq_anomalies(ops)
    reads = [op for op in ops if op.kind == "read"]
    if reads:
        verdict.notes["reads"] = sum(1 for op in reads if op.answered)
        stale = stale_reads(ops)
        # Async mode may lose acknowledged writes on failover, and a read then sees the
        # older value: reported, but a violation only where nothing may be lost.
        if tail_keys is None:
            verdict.violations["stale_reads"] = stale
        else:
            verdict.notes["stale_reads_after_async_loss"] = len(stale)
        wrong, undecided = linearizable(ops)
        if tail_keys is None:
            verdict.violations["nonlinearizable"] = wrong
        else:
            verdict.notes["nonlinearizable_after_async_loss"] = len(wrong)
        if undecided:
            verdict.notes["linearizability_unknown"] = undecided
    if final_keys is not None:
        missing = sum(1 for op in acks if op.key.encode() not in final_keys)
        verdict.notes["acked_missing_from_final"] = missing
        if tail_keys is None:
            verdict.violations["lost_acked"] = lost_acked(ops, final_keys)
        else:
            verdict.violations["unreported_losses"] = unreported_losses(ops, final_keys,
                                                                        tail_keys)
    fence_list = list(fences)
    if fence_list:
        verdict.violations["late_acks"] = [
            v for node, t, until in fence_list for v in acked_after(ops, node, t, until)]
    return verdict


if __name__ == "__main__":
    raise SystemExit(main())

"""The writers that record a history: single PUTs and GETs, ``Writer`` threads, and the CLI.

Owns ``put_once`` and ``read_once`` (one request, never following a redirect, recorded as an
``Op`` whatever happens), ``Writer`` (threads writing unique keys, or hot and register keys, to
whichever node accepts them), ``write_for`` and ``main`` (``python -m
hacluster.testing.history``: a writer in another process or network namespace). It must never
fake the network (real HTTP to real node processes), never leave an attempt unrecorded, and
never judge what it recorded.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from hacluster.testing.harness import TOKEN, request, wait_for
from hacluster.testing.history.ops import HOT, REG, History, Op


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

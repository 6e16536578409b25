"""Following a replica's rebuild (``hacluster reinit``) from its ``/status`` until it caught up.

Owns reading one ``/status`` document into a ``Rebuild`` snapshot (a pure function: which stage
the rebuild is in, bytes of the checkpoint done of the total, applied and primary seq), and the
polling loop that shows it through ``tools.progress``: the checkpoint download (bytes, rate,
ETA), then the catch-up to the primary's seq. It must never change the node (it only reads
``/status``), and never call the rebuild done before the node says it has caught up (the
phase ``caught_up``, judged as the ``/replica`` probe judges it).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, TextIO

from hacluster.tools.progress import Progress, amount, duration, progress

POLL_S = 0.5
# No change at all (stage, bytes, seq) for this long: the rebuild is stuck, stop waiting.
STALL_S = 120.0

DOWNLOADING = ("checkpoint", "downloading", "verifying")


@dataclass(frozen=True, slots=True)
class Rebuild:
    """Where a node's rebuild stands, from one /status document."""

    stage: str                    # waiting, download, catch-up, caught-up, failed
    attempt: float | None = None  # the bootstrap's started_at: tells attempts apart
    bytes_done: int = 0
    bytes_total: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    checkpoint_seq: int | None = None
    applied_seq: int | None = None
    primary_seq: int | None = None
    error: str | None = None

    def key(self) -> tuple[object, ...]:
        """What changes while the rebuild moves on (a stall is when it does not)."""
        return (self.stage, self.attempt, self.bytes_done, self.applied_seq)


def read_rebuild(status: dict[str, Any], before: float | None) -> Rebuild:
    """The rebuild in ``status`` (a node's /status); ``before`` is the start time of the
    bootstrap the node showed before the reinit was asked for, which is not ours."""
    rep = status.get("replication") or {}
    boot = rep.get("bootstrap")
    if not boot or boot.get("started_at") == before:
        return Rebuild("waiting", error=rep.get("error"))
    phase = boot.get("phase")
    stage = ("download" if phase in DOWNLOADING else "failed" if phase == "failed"
             else "caught-up" if phase == "caught_up" else "catch-up")
    return Rebuild(stage, attempt=boot.get("started_at"), bytes_done=int(boot["bytes_done"]),
                   bytes_total=boot.get("bytes_total"), started_at=boot.get("started_at"),
                   finished_at=boot.get("finished_at"),
                   checkpoint_seq=boot.get("checkpoint_seq"),
                   applied_seq=status.get("applied_seq"), primary_seq=rep.get("primary_seq"),
                   error=boot.get("error") or rep.get("error"))


def previous_attempt(status: dict[str, Any] | None) -> float | None:
    """The start time of the bootstrap a node shows now (before a reinit), if any."""
    boot = ((status or {}).get("replication") or {}).get("bootstrap") or {}
    started = boot.get("started_at")
    return float(started) if started is not None else None


def download_summary(name: str, r: Rebuild) -> str:
    """One line for a download that ended between two polls (no bar was shown for it)."""
    took = (r.finished_at or 0.0) - (r.started_at or 0.0)
    rate = r.bytes_done / took if took > 0 else 0.0
    return (f"{name}: checkpoint: done, {amount(r.bytes_done, 'B')} in {duration(max(took, 0))}"
            f" ({amount(rate, 'B')}/s)")


class Follower:
    """Shows one rebuild as it goes: a download bar, then a catch-up bar."""

    def __init__(self, name: str, stream: TextIO | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.stream = stream
        self.clock = clock
        self.bars = ExitStack()
        self.stage: tuple[str, float | None] | None = None
        self.bar: Progress | None = None
        self.failed_shown: float | None = None

    def _open(self, stage: str, attempt: float | None, total: int | None, unit: str) -> Progress:
        self.close()
        self.stage = (stage, attempt)
        self.bar = self.bars.enter_context(progress(total, f"{self.name}: {stage}", unit,
                                                    self.stream, clock=self.clock))
        return self.bar

    def close(self) -> None:
        self.bars.close()
        self.bars = ExitStack()
        self.stage = self.bar = None

    def show(self, r: Rebuild) -> None:
        if r.stage == "failed":
            self.close()
            if self.failed_shown != r.attempt:
                self.failed_shown = r.attempt
                self._line(f"{self.name}: bootstrap attempt failed ({r.error}); the node "
                           "tries again")
            return
        if r.stage == "download":
            bar = self.bar
            if bar is None or self.stage != ("checkpoint", r.attempt):
                bar = self._open("checkpoint", r.attempt, r.bytes_total, "B")
            bar.set_total(r.bytes_total)
            bar.set(r.bytes_done)
            return
        if r.stage not in ("catch-up", "caught-up"):
            return
        if self.stage is not None and self.stage[0] == "checkpoint" and self.bar is not None:
            self.bar.set(r.bytes_total or r.bytes_done)
            self.close()
        elif self.stage is None or self.stage[0] != "catch-up":
            self._line(download_summary(self.name, r))
        base = r.checkpoint_seq or 0
        bar = self.bar
        if bar is None:
            bar = self._open("catch-up", r.attempt, None, "seq")
        if r.primary_seq is not None:
            bar.set_total(max(r.primary_seq - base, 0))
        if r.applied_seq is not None:
            bar.set(max(r.applied_seq - base, 0))

    def _line(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)


def follow(name: str, fetch: Callable[[], dict[str, Any] | None], before: float | None,
           stream: TextIO | None = None, *, stall_s: float = STALL_S, poll_s: float = POLL_S,
           clock: Callable[[], float] = time.monotonic,
           sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Poll ``fetch`` (the node's /status, None while it does not answer) and show the rebuild
    until the node has caught up: None then, else why waiting stopped."""
    shown = Follower(name, stream, clock)
    last: tuple[object, ...] | None = None
    changed = clock()
    try:
        while True:
            doc = fetch()
            r = read_rebuild(doc, before) if doc is not None else None
            key = r.key() if r is not None else None
            if key != last:
                last, changed = key, clock()
            elif clock() - changed > stall_s:
                where = "not answering" if r is None else f"{r.stage}" + (
                    f": {r.error}" if r.error else "")
                return f"{name} made no progress for {stall_s:.0f} s ({where})"
            if r is not None:
                shown.show(r)
                if r.stage == "caught-up":
                    return None
            sleep(poll_s)
    finally:
        shown.close()

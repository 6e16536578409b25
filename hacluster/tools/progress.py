"""Progress of long work (downloads, restores, a replica's catch-up, the soak) for people.

Owns how progress is shown: a bar with amount, rate and ETA (tqdm) when the stream is a
terminal, and plain log-style lines when it is not (a file, a pipe, CI): at most one every
``interval_s`` seconds, plus one final line with the total, the time taken and the rate.
Callers only say how far they are (``update(n)`` or ``set(done)``). It must never write
anything but progress to its stream, never raise out of a report (a progress display must not
fail the work it reports), and never write to stdout unless told to (stdout carries ``--json``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TextIO

if TYPE_CHECKING:
    from tqdm import tqdm

# Plain lines: often enough that a log shows work going on, rarely enough not to flood it.
PLAIN_INTERVAL_S = 5.0


class Progress(Protocol):
    """What a caller reports through; both the bar and the plain lines implement it."""

    def update(self, n: int) -> None:
        """``n`` more units done."""

    def set(self, done: int) -> None:
        """``done`` units done in all (absolute; may go back, e.g. a restarted download)."""

    def set_total(self, total: int | None) -> None:
        """The total learnt (or changed) on the way; None when unknown."""

    def note(self, text: str) -> None:
        """A short figure shown after the amount from now on (e.g. ``acked 1,234``)."""

    def write(self, line: str, file: TextIO | None = None) -> None:
        """Print ``line`` (to stdout by default) without breaking the bar."""


def amount(n: float, unit: str) -> str:
    """``n`` units for people: bytes scaled to kB/MB/GB (powers of 1000, as tqdm shows them),
    other units as whole numbers."""
    if unit != "B":
        return f"{n:,.0f} {unit}"
    for prefix in ("", "k", "M", "G", "T"):
        # Compared as it will be printed: 999.96 kB reads 1.0 MB, not 1000.0 kB.
        if abs(round(n, 1 if prefix else 0)) < 1000 or prefix == "T":
            return f"{n:.0f} B" if not prefix else f"{n:.1f} {prefix}B"
        n /= 1000
    raise AssertionError("unreachable")


def per_second(rate: float, unit: str) -> str:
    """A rate for people: bytes scaled, other units with the decimals a slow rate needs
    (a soak does 0.2 faults/s, not 0)."""
    if unit == "B":
        return f"{amount(rate, unit)}/s"
    digits = 2 if rate < 1 else 1 if rate < 10 else 0
    return f"{rate:,.{digits}f} {unit}/s"


def duration(seconds: float) -> str:
    """``seconds`` as ``12.3 s``, ``4 min 05 s`` or ``2 h 03 min``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def plain_line(desc: str, done: int, total: int | None, elapsed: float, unit: str,
               note: str = "") -> str:
    """One progress line: how much of how much in how long, the mean rate so far, the ETA at
    it, and the caller's note."""
    rate = done / elapsed if elapsed > 0 else 0.0
    parts = [f"{desc}: {amount(done, unit)}"]
    if total:
        parts[0] += f" of {amount(total, unit)} ({100 * min(done / total, 1):.0f}%)"
    parts[0] += f" in {duration(elapsed)}"
    parts.append(per_second(rate, unit))
    if total and rate > 0 and done < total:
        parts.append(f"ETA {duration((total - done) / rate)}")
    if note:
        parts.append(note)
    return ", ".join(parts)


def final_line(desc: str, done: int, total: int | None, elapsed: float, unit: str,
               failed: bool, note: str = "") -> str:
    """The closing line: what was done in how long, at what mean rate (and the note)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    what = amount(done, unit) + (f" of {amount(total, unit)}" if total and done != total
                                 else "")
    verb = "stopped after" if failed else "done,"
    return (f"{desc}: {verb} {what} in {duration(elapsed)} ({per_second(rate, unit)})"
            + (f", {note}" if note else ""))


@dataclass
class PlainProgress:
    """Log-style lines for a stream that is not a terminal."""

    total: int | None
    desc: str
    unit: str
    stream: TextIO
    interval_s: float = PLAIN_INTERVAL_S
    clock: Callable[[], float] = time.monotonic
    done: int = 0
    notes: str = ""
    started: float = field(init=False)
    last_line: float = field(init=False)

    def __post_init__(self) -> None:
        self.started = self.last_line = self.clock()

    def update(self, n: int) -> None:
        self.set(self.done + n)

    def set(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if now - self.last_line >= self.interval_s:
            self.last_line = now
            self._write(plain_line(self.desc, self.done, self.total, now - self.started,
                                   self.unit, self.notes))

    def set_total(self, total: int | None) -> None:
        self.total = total

    def note(self, text: str) -> None:
        self.notes = text

    def write(self, line: str, file: TextIO | None = None) -> None:
        self._write(line, sys.stdout if file is None else file)

    def close(self, failed: bool = False) -> None:
        self._write(final_line(self.desc, self.done, self.total, self.clock() - self.started,
                               self.unit, failed, self.notes))

    def _write(self, line: str, file: TextIO | None = None) -> None:
        try:
            print(line, file=self.stream if file is None else file, flush=True)
        except (OSError, ValueError):     # a closed pipe or stream: the work goes on
            pass


@dataclass
class BarProgress:
    """A tqdm bar on a terminal; ``set`` is turned into tqdm's relative updates."""

    bar: tqdm

    def update(self, n: int) -> None:
        self.bar.update(n)

    def set(self, done: int) -> None:
        if done < self.bar.n:            # tqdm only counts forward: start the count again
            self.bar.reset(total=self.bar.total)
        self.bar.update(done - self.bar.n)

    def set_total(self, total: int | None) -> None:
        if total != self.bar.total:
            self.bar.total = total
            self.bar.refresh()

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def write(self, line: str, file: TextIO | None = None) -> None:
        # tqdm clears the bar, prints, and draws it again below the line.
        self.bar.write(line, file=sys.stdout if file is None else file)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _shape(stream: TextIO) -> dict[str, object]:
    """Follow the terminal's size, or a fixed one when it reports none (a pty nobody sized,
    as under ``script`` or some CI runners: tqdm would draw nothing at 0 columns or rows)."""
    try:
        size = os.get_terminal_size(stream.fileno())
        columns, lines = size.columns, size.lines
    except (OSError, ValueError, AttributeError):
        columns = lines = 0
    return {"dynamic_ncols": True} if columns and lines else {"ncols": columns or 100,
                                                             "nrows": lines or 24}


@contextmanager
def progress(total: int | None, desc: str, unit: str = "B", stream: TextIO | None = None,
             *, interval_s: float = PLAIN_INTERVAL_S,
             clock: Callable[[], float] = time.monotonic) -> Iterator[Progress]:
    """Report progress of one piece of work on ``stream`` (stderr by default), a bar on a
    terminal and plain lines otherwise. The final state is shown when the block ends, also
    when it ends with an exception (then as "stopped after")."""
    out = sys.stderr if stream is None else stream
    if is_terminal(out):
        from tqdm import tqdm  # only for a terminal: every node process imports this module

        # tqdm writes "12.3MB" but "12seq": words get their space.
        bar = tqdm(total=total, desc=desc, unit=unit if unit == "B" else f" {unit}",
                   unit_scale=unit == "B", file=out, mininterval=0.2, leave=True,
                   **_shape(out))
        try:
            yield BarProgress(bar)
        finally:
            bar.close()
        return
    plain = PlainProgress(total, desc, unit, out, interval_s, clock)
    failed = True
    try:
        yield plain
        failed = False
    finally:
        plain.close(failed)

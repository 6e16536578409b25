"""Which history does a position belong to? Pure arithmetic on the epoch history kept in Raft.

Owns the one rule every safety check about data lineage rests on. Each epoch record says that
the primary of epoch ``e`` wrote from ``start_seq`` on, on top of the data it held when it took
over. So the history the primary of epoch ``e`` serves (its *e-history*) agrees with the
history of a later epoch ``n`` at seq ``s`` exactly when no epoch in ``(e, n]`` took over at or
below ``s``. A node labels its data with the epoch whose primary it came from (its lineage):
data labelled ``e`` up to seq ``s`` lies on the newest history iff that holds — otherwise it is
a divergent tail, and its owner must neither be promoted nor keep it. Raft's up-to-date rule
(last term, last index) becomes (epoch of the last write, seq): the epoch that wrote seq ``s``
in a history is the newest epoch of that history that took over at or below ``s``.

Pure functions of numbers and records: no clock, no I/O. They must never call a position safe
that the kept records cannot vouch for: a label older than the oldest kept record (the history
is capped) is reported as unverifiable, not trusted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol


class Record(Protocol):
    @property
    def epoch(self) -> int: ...

    @property
    def start_seq(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Conflict:
    """Data labelled ``label`` up to ``last_seq`` leaves the newest history at ``first_seq``."""

    label: int
    first_seq: int       # the first seq the newest history gives to another epoch
    taken_by: int        # the epoch that took over there (0: unverifiable)
    last_seq: int

    @property
    def verifiable(self) -> bool:
        return self.taken_by > 0

    def __str__(self) -> str:
        if not self.verifiable:
            return (f"its data (epoch {self.label}, seq {self.last_seq}) is older than the "
                    "oldest epoch record kept in Raft, so it cannot be checked")
        return (f"its seqs {self.first_seq}..{self.last_seq} came from epoch {self.label}, "
                f"but epoch {self.taken_by} took over at seq {self.first_seq}")


def _newer(history: Iterable[Record], label: int, upto: int | None) -> list[Record]:
    return [r for r in history if r.epoch > label and (upto is None or r.epoch <= upto)]


def conflict(label: int, last_seq: int, history: Sequence[Record],
             upto: int | None = None) -> Conflict | None:
    """Does data labelled ``label`` up to ``last_seq`` leave the (``upto``-)newest history?

    ``label`` 0 means unknown lineage: only data older than every epoch record is safe then.
    """
    if last_seq <= 0 or not history:
        return None
    newer = _newer(history, label, upto)
    if not newer:
        return None
    oldest = min(r.epoch for r in history)
    if label + 1 < oldest:
        # Epochs between label and the oldest kept record are forgotten: where they took
        # over is unknown, so nothing of this data can be vouched for.
        return Conflict(label, 1, 0, last_seq)
    first = min(newer, key=lambda r: (r.start_seq, r.epoch))
    if first.start_seq <= last_seq:
        return Conflict(label, first.start_seq, first.epoch, last_seq)
    return None


def same_history(label_a: int, label_b: int, seq: int, history: Sequence[Record]) -> bool:
    """Do data labelled ``label_a`` and ``label_b`` agree on every seq up to ``seq``?"""
    low, high = sorted((label_a, label_b))
    return conflict(low, seq, history, upto=high) is None


def writer_epoch(label: int, seq: int, history: Sequence[Record]) -> int:
    """The epoch that wrote ``seq`` in the ``label``-history (0: before every kept record)."""
    boundary: int | None = None
    for r in sorted((r for r in history if r.epoch <= label), key=lambda r: -r.epoch):
        if r.start_seq <= seq and (boundary is None or r.start_seq < boundary):
            return r.epoch
        boundary = r.start_seq if boundary is None else min(boundary, r.start_seq)
    return 0

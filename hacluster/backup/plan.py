"""The archive's decisions, as pure functions of what it lists and the epoch history.

Owns which archived ranges lie on the surviving history (``kept_through``: a range archived by
the primary of epoch e is good up to the first seq a later epoch took over at — the history
says so; a former primary cut off in async mode may have archived past it), the chain of
segments a restore replays from a base backup and the first gap in it (``chain``), where a new
primary continues archiving (``next_seq``), which base backup a restore starts from and how
far it goes (``restore_plan``), and what retention deletes (``retention``). No I/O, no clock:
``now`` is given. They must never call a range usable that the history says was superseded,
and never skip over a gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hacluster.backup import BackupError
from hacluster.backup.layout import BaseRef, SegmentRef
from hacluster.consensus.epochs import conflict

INCOMPLETE_GRACE_S = 86400.0     # an unfinished base backup older than this is debris


@dataclass(frozen=True, slots=True)
class Epoch:
    """One record of the epoch history: the primary of ``epoch`` wrote from ``start_seq``."""

    epoch: int
    start_seq: int
    primary: str = ""
    wall_time: float = 0.0


def merge_history(*histories: Sequence[Epoch]) -> list[Epoch]:
    """One history from several views of it (records of one epoch never change)."""
    by_epoch: dict[int, Epoch] = {}
    for history in histories:
        for r in history:
            by_epoch.setdefault(r.epoch, r)
    return sorted(by_epoch.values(), key=lambda r: r.epoch)


def kept_through(seg: SegmentRef, history: Sequence[Epoch],
                 segments: Sequence[SegmentRef]) -> int:
    """The last seq of ``seg`` on the surviving history (below ``seg.first``: superseded).

    A later epoch took over at its record's ``start_seq``; an epoch the history does not
    list (static mode, or records capped away) counts from the first seq it archived, so
    its copy wins wherever two epochs archived the same seqs.
    """
    starts = {r.epoch: r.start_seq for r in history}
    for s in segments:
        if s.epoch not in starts:
            starts[s.epoch] = min(x.first for x in segments if x.epoch == s.epoch)
    cut = min((start for e, start in starts.items() if e > seg.epoch), default=None)
    return seg.last if cut is None else min(seg.last, cut - 1)


def base_kept(base: BaseRef, history: Sequence[Epoch]) -> bool:
    """Whether the base backup's data lies on the surviving history."""
    return conflict(base.epoch, base.seq, history) is None


@dataclass(frozen=True, slots=True)
class Step:
    """Replay ``segment``'s batches from ``first`` through ``last``."""

    segment: SegmentRef
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class Chain:
    steps: tuple[Step, ...]
    top: int                           # the last seq the chain reaches
    gap: tuple[int, int] | None        # the first missing range after it, if more exists


def chain(segments: Sequence[SegmentRef], history: Sequence[Epoch], start: int,
          stop_seq: int | None = None, stop_time: float | None = None) -> Chain:
    """The segments that replay seqs ``start`` onward, in order, up to ``stop_seq`` or to
    the segments seen by ``stop_time``; where the chain ends and the first gap after it."""
    usable = [(s, kept_through(s, history, segments)) for s in segments]
    usable = [(s, k) for s, k in usable if k >= s.first]
    steps: list[Step] = []
    p = start
    while stop_seq is None or p <= stop_seq:
        covering = [(s, k) for s, k in usable if s.first <= p <= k]
        if not covering:
            later = [s.first for s, k in usable if k >= p]
            gap = (p, min(later) - 1) if later else None
            return Chain(tuple(steps), p - 1, gap)
        seg, kept = max(covering, key=lambda sk: (sk[1], sk[0].epoch))
        if stop_time is not None and seg.first_time > stop_time:
            break
        last = kept if stop_seq is None else min(kept, stop_seq)
        steps.append(Step(seg, p, last))
        p = last + 1
    return Chain(tuple(steps), p - 1, None)


def newest_base(bases: Sequence[BaseRef], history: Sequence[Epoch]) -> BaseRef | None:
    kept = [b for b in bases if b.complete and base_kept(b, history)]
    return max(kept, key=lambda b: (b.seq, b.created)) if kept else None


def next_seq(bases: Sequence[BaseRef], segments: Sequence[SegmentRef],
             history: Sequence[Epoch]) -> int | None:
    """Where archiving continues: after the chain that starts at the newest base backup on
    the history; None when there is no such base backup (take one first)."""
    base = newest_base(bases, history)
    if base is None:
        return None
    return chain(segments, history, base.seq + 1).top + 1


@dataclass(frozen=True, slots=True)
class RestorePlan:
    base: BaseRef
    steps: tuple[Step, ...]
    target: int                 # the seq the restored database will be at (a batch end)


def restorable(bases: Sequence[BaseRef], segments: Sequence[SegmentRef],
               history: Sequence[Epoch]) -> list[tuple[BaseRef, int, tuple[int, int] | None]]:
    """Per usable base backup: the last seq a restore from it reaches, and the gap after."""
    out = []
    for b in sorted(bases, key=lambda b: b.seq):
        if b.complete and base_kept(b, history):
            c = chain(segments, history, b.seq + 1)
            out.append((b, c.top, c.gap))
    return out


def restore_plan(bases: Sequence[BaseRef], segments: Sequence[SegmentRef],
                 history: Sequence[Epoch], *, to_seq: int | None = None,
                 to_time: float | None = None) -> RestorePlan:
    """What a restore to ``to_seq``, to ``to_time``, or (neither) to the latest replays."""
    usable = [b for b in bases if b.complete and base_kept(b, history)]
    if not usable:
        raise BackupError("the archive holds no complete base backup on the surviving "
                          "history: nothing to restore from")
    if to_seq is not None:
        candidates = [b for b in usable if b.seq <= to_seq]
        if not candidates:
            raise BackupError(f"no base backup at or before seq {to_seq} (the oldest kept "
                              f"is at seq {min(b.seq for b in usable)})")
    elif to_time is not None:
        # A base's time is its name's, whole seconds rounded down: one named 12:00:14 may have
        # been taken at 12:00:14.9 and hold writes made after 12:00:14.05. Only a base whose
        # whole second ended by ``to_time`` is certainly from before it.
        candidates = [b for b in usable if b.created + 1 <= to_time]
        if not candidates:
            raise BackupError(f"no base backup at or before that time (the oldest kept was "
                              f"taken at {min(b.created for b in usable):.0f})")
    else:
        candidates = usable
    base = max(candidates, key=lambda b: (b.seq, b.created))
    c = chain(segments, history, base.seq + 1, stop_seq=to_seq, stop_time=to_time)
    if to_seq is not None and c.top < to_seq:
        if c.gap is not None:
            raise BackupError(f"the archive has a gap: seqs {c.gap[0]}..{c.gap[1]} are "
                              f"missing, so seq {to_seq} cannot be reached from the base "
                              f"backup at seq {base.seq} (the latest reachable is {c.top})")
        raise BackupError(f"seq {to_seq} is not archived: the archive reaches seq {c.top}")
    if to_seq is None and to_time is None and c.gap is not None:
        raise BackupError(f"the archive has a gap: seqs {c.gap[0]}..{c.gap[1]} are missing; "
                          f"a restore from the base backup at seq {base.seq} reaches seq "
                          f"{c.top} at most: restore --to-seq {c.top} to accept that")
    return RestorePlan(base, c.steps, c.top)


@dataclass(frozen=True, slots=True)
class Retention:
    bases: tuple[BaseRef, ...]           # to delete
    segments: tuple[SegmentRef, ...]     # to delete
    oldest_kept_seq: int | None


def retention(bases: Sequence[BaseRef], segments: Sequence[SegmentRef],
              history: Sequence[Epoch], keep_last: int, keep_days: float,
              now: float) -> Retention:
    """Keep the newest ``keep_last`` base backups and every one younger than ``keep_days``
    (at least one, and none is deleted while it is the newest); delete the others, the
    segments wholly at or below the oldest kept base backup, and unfinished base backups
    older than a day."""
    usable = sorted((b for b in bases if b.complete and base_kept(b, history)),
                    key=lambda b: (b.seq, b.created), reverse=True)
    if not usable:
        return Retention((), (), None)
    kept = usable[:max(1, keep_last)] + [b for b in usable[keep_last:]
                                          if now - b.created < keep_days * 86400]
    oldest = min(b.seq for b in kept)
    drop = [b for b in bases if b not in kept and (
        (b.complete and b.seq <= oldest) or
        (not b.complete and now - b.created > INCOMPLETE_GRACE_S))]
    old_segments = [s for s in segments if s.last <= oldest]
    return Retention(tuple(drop), tuple(old_segments), oldest)

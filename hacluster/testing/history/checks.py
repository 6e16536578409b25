"""The checks over a recorded history: lost writes, split brain, late or stale answers, order.

Owns the pure checkers ``lost_acked``, ``unreported_losses``, ``overlapping_epochs``,
``acked_after``, ``seq_anomalies``, ``stale_reads``, ``linearizable`` (by
``linearizability.check``) and ``divergent_tail_keys`` (what the divergent-tail files hold),
and ``check_all`` with its ``Verdict``. It must never trust the server's word over the recorded
responses, and never report a violation the recorded ``[start, end]`` times cannot prove.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Container, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hacluster.testing.history.ops import HOT, Op
from hacluster.testing.linearizability import MAX_STATES, SECONDS, Call, check


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
    from hacluster.lineage.tails import iter_tail_batches
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
    # These three read only acknowledged writes: given just those (the simulator checks
    # thousands of histories a minute).
    verdict.violations["split_brain"] = overlapping_epochs(acks)
    verdict.violations["seq_anomalies"] = seq_anomalies(acks)
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
            verdict.violations["lost_acked"] = lost_acked(acks, final_keys)
        else:
            verdict.violations["unreported_losses"] = unreported_losses(acks, final_keys,
                                                                        tail_keys)
    fence_list = list(fences)
    if fence_list:
        verdict.violations["late_acks"] = [
            v for node, t, until in fence_list for v in acked_after(ops, node, t, until)]
    return verdict

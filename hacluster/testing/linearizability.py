"""Linearizability of a register history: can one order of the writes explain every read?

Owns the Wing-Gong/Lowe search (WGL) over ``Call``s, each a write of a value or a read that
returned one (``None``: the key is absent, its initial state), with the invocation ``start`` and
response ``end`` its client recorded. Keys are checked one by one (P-compositionality: a history
is linearizable exactly when each key's is); the search memoizes the (linearized set, value)
pairs it has explored and gives up with "unknown" once a budget of states or time is spent. For
a key that fails it finds the read that could not be explained (the first whose answer made the
key's history non-linearizable) and a smallest window of ops that still cannot be ordered.

It must never report a violation the recorded bounds cannot prove: ops whose intervals touch
are concurrent, a write whose outcome is unknown may have taken effect at any time after its
start or never, and only writes the caller knows failed are left out. It must never hang on a
pathological history (over budget the answer is "unknown", not a violation), and it knows
nothing of HTTP: callers classify their ops' outcomes (``history.Op.outcome`` does).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

Outcome = Literal["ok", "failed", "unknown"]

MAX_STATES = 200_000      # per search; a history of thousands of ops needs far fewer
SECONDS = 30.0            # for a whole check, explanations included
SHOWN = 20                # ops of a window an explanation lists


@dataclass(frozen=True, slots=True)
class Call:
    """One operation on one key as its client saw it.

    ``outcome``: "ok" (a write took effect inside [start, end], a read returned ``value``),
    "failed" (a write certainly not applied, a read that returned nothing: both left out) or
    "unknown" (a write that may have taken effect at any time after ``start``, or never; an
    unknown read tells nothing and is left out). A write of ``None`` is a delete.
    """

    key: str
    kind: Literal["write", "read"]
    value: str | None
    start: float
    end: float
    outcome: Outcome = "ok"
    label: str = ""           # for people: which request this was (node, status, ...)

    def describe(self) -> str:
        shown = "absent" if self.value is None else repr(self.value)
        what = f"write {shown}" if self.kind == "write" else f"read -> {shown}"
        if self.outcome != "ok":
            what += f" ({self.outcome})"
        return f"{what} [{self.label or f'{self.start:.3f}..{self.end:.3f}'}]"


@dataclass
class Result:
    """One key's verdict: ``linearizable`` is None when the budget ran out first."""

    key: str
    linearizable: bool | None
    states: int                          # explored by the search of the whole history
    read: Call | None = None             # the read no order of the writes explains
    window: list[Call] = field(default_factory=list)   # a smallest set that cannot be ordered
    hint: str = ""

    def explain(self) -> str:
        if self.linearizable:
            return f"key {self.key!r}: linearizable ({self.states} states)"
        if self.linearizable is None:
            return (f"key {self.key!r}: unknown, the budget ran out after {self.states} "
                    "states")
        read = self.read.describe() if self.read else "(no single read found in time)"
        ops = "; ".join(c.describe() for c in self.window[:SHOWN])
        if len(self.window) > SHOWN:
            ops += f"; ... and {len(self.window) - SHOWN} more"
        return (f"key {self.key!r}: not linearizable: no order of the writes explains {read}"
                + (f" ({self.hint})" if self.hint else "")
                + f"; ops that cannot be ordered ({len(self.window)}): {ops}")


class _OverBudget(Exception):
    pass


@dataclass
class _Budget:
    max_states: int
    deadline: float
    states: int = 0        # of the latest search


def check(calls: Iterable[Call], *, max_states: int = MAX_STATES,
          seconds: float = SECONDS) -> list[Result]:
    """One Result per key with at least one answered read (a key nobody read back is always
    linearizable), sorted by key."""
    by_key: dict[str, list[Call]] = {}
    for call in calls:
        by_key.setdefault(call.key, []).append(call)
    budget = _Budget(max_states, time.monotonic() + seconds)
    results = []
    for key in sorted(by_key):
        if any(_answered(c) for c in by_key[key]):
            try:
                ok = _search(by_key[key], budget)
            except _OverBudget:
                results.append(Result(key, None, budget.states))
            else:
                results.append(Result(key, ok, budget.states))
    # Explaining comes after every key has its verdict, so that it never spends the time
    # another key's check needs; out of time, the window is less small (or the whole key).
    for result in results:
        if result.linearizable is False:
            calls = by_key[result.key]
            result.read, result.window = _explain(calls, budget)
            result.hint = _hint(result.read, calls, result.window) if result.read else ""
    return results


def _answered(call: Call) -> bool:
    return call.kind == "read" and call.outcome == "ok"


def _search(calls: Sequence[Call], budget: _Budget) -> bool:
    """WGL for one key: True when some order of the ops explains every answered read.

    The state is (which ops are linearized, the register's value). An op may go next when no
    other op still waiting ended before it started. Required ops (answered reads, writes that
    took effect) must all go; an unknown write may go at any point after its start, or never.
    """
    budget.states = 0
    if time.monotonic() > budget.deadline:
        raise _OverBudget
    required = sorted((c for c in calls if c.outcome == "ok"), key=lambda c: c.start)
    readers: dict[str | None, int] = {}            # value -> bitmask of the reads of it
    for i, c in enumerate(required):
        if c.kind == "read":
            readers[c.value] = readers.get(c.value, 0) | 1 << i
    # An unknown write helps only while a read of its value waits: applying it otherwise can
    # only make a later read fail. So those nobody read are left out, and the others are
    # not branched on once their readers have gone. Never waited for, they bound no one.
    optional = sorted((c for c in calls if c.kind == "write" and c.outcome == "unknown"
                       and c.value in readers), key=lambda c: c.start)
    ops = required + optional
    m = len(required)
    starts = [c.start for c in ops]
    ends = [c.end for c in required]
    reads = [c.kind == "read" for c in ops]
    values = [c.value for c in ops]
    writes_of: dict[str | None, int] = {}          # value -> bitmask of the writes of it
    for i, c in enumerate(ops):
        if c.kind == "write":
            writes_of[c.value] = writes_of.get(c.value, 0) | 1 << i
    done = (1 << m) - 1
    if any(v is not None and v not in writes_of for v in readers):
        return False                               # a read of a value nobody wrote

    def step(mask: int, value: str | None) -> tuple[int, list[int]]:
        """Linearize every read that can go now and sees ``value``; then list the writes that
        could go next."""
        while True:
            low = (~mask & (mask + 1)).bit_length() - 1     # the first required op waiting
            horizon, ready = math.inf, []
            i = low
            # Sorted by start: once an op starts after every waiting op's end seen so far,
            # so does every later one.
            while i < m and starts[i] <= horizon:
                if not mask >> i & 1:
                    horizon = min(horizon, ends[i])
                    ready.append(i)
                i += 1
            # Reads change nothing, so a read that can go now and sees the value goes now:
            # taking it first never rules out an order that taking it later allows.
            seen = [i for i in ready if reads[i] and values[i] == value]
            if seen:
                for i in seen:
                    mask |= 1 << i
                continue
            writes = [i for i in ready if not reads[i]]
            for j in range(m, len(ops)):
                if starts[j] > horizon:
                    break
                if not mask >> j & 1 and readers[values[j]] & ~mask:
                    writes.append(j)
            return mask, writes

    stack: list[tuple[int, str | None]] = [(0, None)]
    explored: set[tuple[int, str | None]] = set()
    while stack:
        mask, value = stack.pop()
        mask, writes = step(mask, value)
        if mask & done == done:
            return True
        if (mask, value) in explored:
            continue
        explored.add((mask, value))
        budget.states += 1
        if budget.states > budget.max_states or (
                budget.states % 1024 == 0 and time.monotonic() > budget.deadline):
            raise _OverBudget
        # Pushed last, popped first: the write that started first is tried first.
        for i in reversed(writes):
            after = mask | 1 << i
            # Each write takes effect once: overwriting the value while a read of it waits
            # and no write of it is left dooms that read (the initial absence included).
            if (values[i] != value and readers.get(value, 0) & ~after
                    and not writes_of.get(value, 0) & ~after):
                continue
            stack.append((after, values[i]))
    return False


def _prefix(calls: Sequence[Call], t: float) -> list[Call]:
    """The history as it stood at time ``t``: ops started by then, those still in flight
    pending (a write may or may not have taken effect yet, a read has told nothing)."""
    out = []
    for c in calls:
        if c.start > t:
            continue
        if c.outcome != "ok" or c.end <= t:
            out.append(c)
        elif c.kind == "write":
            out.append(replace(c, outcome="unknown"))
    return out


def _explain(calls: list[Call], budget: _Budget) -> tuple[Call | None, list[Call]]:
    """The read that could not be explained and a smallest window of ops that proves it.

    A prefix of a linearizable history is linearizable, so the first answered read whose end
    makes the prefix fail is found by bisection over read ends. Then groups of ops are dropped
    while the rest still fails: a write together with every read of its value (dropping both
    keeps a linearizable history linearizable, so what remains still convicts that read), or
    one read; then single reads. Over budget, the window found so far is the answer.
    """
    live = [c for c in calls if c.outcome != "failed"]
    ends = sorted({c.end for c in live if _answered(c)})
    lo, hi = 0, len(ends) - 1
    try:
        while lo < hi:
            mid = (lo + hi) // 2
            if _search(_prefix(live, ends[mid]), budget):
                lo = mid + 1
            else:
                hi = mid
    except _OverBudget:
        return None, sorted(live, key=lambda c: c.start)
    t = ends[hi]
    window = _prefix(live, t)
    ending = [c for c in window if _answered(c) and c.end == t]
    read = ending[0]
    if len(ending) > 1:
        # Several reads ended at t: the culprit is one that fails without the others (when
        # only some of them together fail, the first stands for them and they all stay).
        try:
            for c in ending:
                trial = [x for x in window if x is c or all(x is not o for o in ending)]
                if not _search(trial, budget):
                    read, window = c, trial
                    break
        except _OverBudget:
            pass
    rest = [c for c in window if c is not read]
    fixed = [read] + [c for c in rest if c.kind == "write" and c.value == read.value]
    groups: list[list[Call]] = []
    by_value: dict[str | None, list[Call]] = {}
    for c in rest:
        if c.kind == "write" and c.value != read.value:
            by_value.setdefault(c.value, []).append(c)
    for c in rest:
        if c.kind == "read":
            if c.value in by_value:
                by_value[c.value].append(c)
            else:
                groups.append([c])
    groups += by_value.values()
    groups = _minimize(groups, fixed, budget)
    # Then the reads one by one, the writes that remain staying.
    kept = [c for g in groups for c in g]
    writes = [c for c in kept if c.kind == "write"]
    groups = _minimize([[c] for c in kept if c.kind == "read"], fixed + writes, budget)
    fixed += writes
    # Shown as recorded (not as the pending writes of the prefix), with every write of the
    # value read, even those that cannot explain it (refused, or started after the read
    # ended): adding them cannot make the window explicable.
    recorded = {replace(c, outcome="unknown"): c for c in live
                if c.kind == "write" and c.outcome == "ok"}
    shown = [recorded.get(c, c) for c in fixed + [c for g in groups for c in g]]
    shown += [c for c in calls if c.kind == "write" and c.value == read.value and c not in shown]
    return read, sorted(shown, key=lambda c: c.start)


def _minimize(groups: list[list[Call]], fixed: list[Call],
              budget: _Budget) -> list[list[Call]]:
    """Drop chunks of groups, halving the chunk size, while ``fixed`` plus the rest fails."""
    size = max(1, len(groups) // 2)
    try:
        while groups:
            i = 0
            while i < len(groups):
                trial = groups[:i] + groups[i + size:]
                if _search(fixed + [c for g in trial for c in g], budget):
                    i += size
                else:
                    groups = trial
            if size == 1:
                break
            size = max(1, size // 2)
    except _OverBudget:
        pass
    return groups


def _hint(read: Call, calls: Sequence[Call], window: Sequence[Call]) -> str:
    """Why the read is wrong, when one sentence can say it."""
    writes = [c for c in calls if c.kind == "write" and c.value == read.value]
    if read.value is None and not writes:
        return "the key was read as absent after a write to it had taken effect"
    if not writes:
        return f"no write of {read.value!r} was recorded"
    if all(c.outcome == "failed" for c in writes):
        return f"the only write of {read.value!r} was refused, so never applied"
    applied = [c for c in writes if c.outcome != "failed"]
    if all(c.start > read.end for c in applied):
        return f"{read.value!r} was written only after the read ended"
    for later in [*window, *calls]:
        if (later.kind == "write" and later.outcome == "ok" and later.end < read.start
                and all(c.end < later.start for c in applied)):
            return f"{read.value!r} had been overwritten by {later.value!r} before the read began"
    return "the other ops in the window rule out every order that would give it that value"

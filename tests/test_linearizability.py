"""The register linearizability checker: it accepts what an atomic register can produce and
convicts what none can, naming the read and a smallest window of ops.

Hand-written histories pin each rule (times are made-up monotonic seconds); hypothesis simulates
a real atomic register (each op takes effect at one instant inside its interval, unknown writes
at any instant after their start or never) and checks every such history passes, and that
making one read return a value overwritten before it began is always caught.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

from hypothesis import assume, given
from hypothesis import strategies as st

from hacluster.testing.linearizability import (
    MAX_STATES,
    SECONDS,
    Call,
    Outcome,
    Result,
    check,
)
from tests.fuzzing import fuzz_settings, time_limit


def w(value: str | None, start: float, end: float, outcome: Outcome = "ok",
      key: str = "k") -> Call:
    return Call(key, "write", value, start, end, outcome)


def r(value: str | None, start: float, end: float, outcome: Outcome = "ok",
      key: str = "k") -> Call:
    return Call(key, "read", value, start, end, outcome)


def verdict(calls: list[Call], max_states: int = MAX_STATES, seconds: float = SECONDS) -> Result:
    results = check(calls, max_states=max_states, seconds=seconds)
    assert len(results) == 1, results
    return results[0]


def violation(calls: list[Call]) -> Result:
    result = verdict(calls)
    assert result.linearizable is False, result.explain()
    return result


def ok(calls: list[Call]) -> None:
    result = verdict(calls)
    assert result.linearizable is True, result.explain()


# --- hand-written histories ----------------------------------------------------------------

def test_a_sequential_history_is_linearizable() -> None:
    ok([r(None, 0, 1), w("a", 2, 3), r("a", 4, 5), w("b", 6, 7), r("b", 8, 9)])


def test_concurrent_writes_may_take_effect_in_either_order() -> None:
    both = [w("a", 0, 10), w("b", 1, 9)]
    ok([*both, r("a", 11, 12)])
    ok([*both, r("b", 11, 12)])
    ok([*both, r("b", 2, 3), r("a", 4, 5)])      # b, then a, both seen while in flight
    ok([*both, r(None, 2, 3), r("a", 11, 12)])   # absent until one took effect
    ok([w("a", 0, 1), w("b", 1, 2), r("a", 3, 4)])   # touching intervals are concurrent


def test_a_stale_read_after_a_completed_write_is_a_violation() -> None:
    found = violation([w("a", 0, 1), w("b", 2, 3), r("c", 2.5, 7.5), r("a", 4, 5)])
    assert found.read == r("a", 4, 5)
    # The unrelated read is not needed to convict it: the window is the three ops that are.
    assert found.window == [w("a", 0, 1), w("b", 2, 3), r("a", 4, 5)]
    text = found.explain()
    assert "'k'" in text and "read -> 'a'" in text and "overwritten by 'b'" in text


def test_reads_seeing_two_writes_in_opposite_orders_are_a_violation() -> None:
    found = violation([w("a", 0, 10), w("b", 0, 10), r("a", 1, 2), r("b", 3, 4),
                       r("a", 5, 6)])
    assert found.read == r("a", 5, 6) and len(found.window) == 5


def test_absent_after_a_completed_write_is_a_violation() -> None:
    found = violation([w("a", 0, 1), r(None, 2, 3)])
    assert found.read == r(None, 2, 3) and "read as absent" in found.explain()


def test_a_read_of_a_value_never_written_is_a_violation() -> None:
    found = violation([w("a", 0, 1), r("a", 2, 3), r("zz", 4, 5)])
    assert found.read == r("zz", 4, 5) and found.window == [r("zz", 4, 5)]
    assert "no write of 'zz'" in found.explain()


def test_a_write_of_unknown_outcome_may_take_effect_late_or_never() -> None:
    ok([w("a", 0, 1, "unknown"), r("a", 5, 6)])          # after its client gave up
    ok([w("a", 0, 1, "unknown"), r(None, 5, 6)])         # never
    ok([w("a", 0, 1), w("b", 2, 3, "unknown"), r("a", 4, 5), r("b", 6, 7), r("b", 8, 9)])


def test_a_write_of_unknown_outcome_is_not_visible_before_it_started() -> None:
    found = violation([r("a", 0, 1), w("a", 2, 3, "unknown")])
    assert found.read == r("a", 0, 1) and w("a", 2, 3, "unknown") in found.window
    assert "written only after the read ended" in found.explain()


def test_a_write_of_unknown_outcome_once_seen_stays_until_overwritten() -> None:
    found = violation([w("a", 0, 1, "unknown"), r("a", 2, 3), r(None, 4, 5)])
    assert found.read == r(None, 4, 5)


def test_a_refused_write_read_back_is_a_violation() -> None:
    found = violation([w("a", 0, 1, "failed"), r("a", 2, 3)])
    assert found.read == r("a", 2, 3) and w("a", 0, 1, "failed") in found.window
    assert "refused" in found.explain()


def test_failed_reads_are_left_out() -> None:
    ok([w("a", 0, 1), w("b", 2, 3), r("a", 4, 5, "failed"), r("b", 6, 7)])


def test_a_delete_makes_the_key_absent_again() -> None:
    ok([w("a", 0, 1), w(None, 2, 3), r(None, 4, 5)])
    violation([w("a", 0, 1), w(None, 2, 3), r("a", 4, 5)])


def test_keys_are_judged_independently_and_unread_keys_not_at_all() -> None:
    results = check([w("a", 0, 1, key="x"), w("b", 2, 3, key="x"), r("a", 4, 5, key="x"),
                     w("a", 0, 1, key="y"), r("a", 4, 5, key="y"),
                     w("a", 0, 1, key="z")])
    assert [(res.key, res.linearizable) for res in results] == [("x", False), ("y", True)]


def test_over_budget_the_answer_is_unknown_not_a_violation() -> None:
    # Sixteen concurrent writes, then reads of two of them: both cannot have been last, but
    # proving it means trying every subset of the other fourteen before either, 2**14 sets.
    def concurrent(n: int) -> list[Call]:
        return [w(f"v{i}", 0, 10) for i in range(n)] + [r("v0", 11, 12), r("v1", 13, 14)]

    started = time.monotonic()
    result = verdict(concurrent(16), max_states=5_000)
    assert result.linearizable is None and "unknown" in result.explain()
    assert result.window == [] and result.read is None
    assert verdict(concurrent(16), seconds=0.0).linearizable is None
    assert time.monotonic() - started < 10
    # With a budget big enough the same search does finish, with the violation.
    assert verdict(concurrent(6), max_states=5_000).linearizable is False


# --- simulated atomic registers --------------------------------------------------------------

WRITE_OUTCOMES: list[Outcome] = ["ok", "ok", "ok", "unknown", "failed"]
READ_OUTCOMES: list[Outcome] = ["ok", "ok", "ok", "failed"]


@st.composite
def register_histories(draw: st.DrawFn) -> list[Call]:
    """Clients, each doing one op at a time, on an atomic register per key.

    Times are integers, so intervals often touch. Every op takes effect at one instant
    strictly inside its interval; an unknown write at an instant after its start (possibly
    after its client gave up) or never; a refused write never.
    """
    keys = draw(st.integers(1, 3))
    events: list[tuple[float, int, Call]] = []     # (instant, tiebreak, op)
    calls: list[Call] = []
    for client in range(draw(st.integers(1, 5))):
        t = draw(st.integers(0, 5))
        for n in range(draw(st.integers(1, 12))):
            t += draw(st.integers(0, 3))
            start, end = t, t + draw(st.integers(1, 6))
            t = end
            key = f"k{draw(st.integers(0, keys - 1))}"
            at = start + draw(st.integers(1, 99)) / 100 * (end - start)
            if draw(st.booleans()):
                outcome: Outcome = draw(st.sampled_from(WRITE_OUTCOMES))
                call = Call(key, "write", f"c{client}-{n}", start, end, outcome)
                if outcome == "unknown":
                    late = draw(st.integers(1, 99)) / 100 * (end - start + 10)
                    applied = draw(st.booleans())
                    at = start + late if applied else -1
                elif outcome == "failed":
                    at = -1
            else:
                outcome = draw(st.sampled_from(READ_OUTCOMES))
                call = Call(key, "read", "junk" if outcome == "failed" else None, start, end,
                            outcome)
            calls.append(call)
            if at >= 0:
                events.append((at, len(events), call))
    # Run the register: each op at its instant, in order; reads take the value of the moment.
    state: dict[str, str | None] = {}
    seen: dict[int, str | None] = {}
    for _, _, call in sorted(events, key=lambda e: (e[0], e[1])):
        if call.kind == "write":
            state[call.key] = call.value
        elif call.outcome == "ok":
            seen[id(call)] = state.get(call.key)
    return [replace(c, value=seen[id(c)]) if id(c) in seen else c for c in calls]


@given(register_histories())
@fuzz_settings(300)
def test_every_history_of_an_atomic_register_is_linearizable(calls: list[Call]) -> None:
    with time_limit(20):
        results = check(calls)
    assert all(res.linearizable for res in results), [res.explain() for res in results]


@given(register_histories(), st.data())
@fuzz_settings(300)
def test_a_read_of_a_value_overwritten_before_it_began_is_caught(
        calls: list[Call], data: st.DataObject) -> None:
    # (read, stale value) where the value is certainly overwritten before the read began: its
    # write, or the initial absence, is followed by an acknowledged write that ended before
    # the read started. Unknown writes may take effect any time, so they prove nothing.
    acked = [c for c in calls if c.kind == "write" and c.outcome == "ok"]
    choices: list[tuple[Call, str | None]] = []
    for read in calls:
        if read.kind != "read" or read.outcome != "ok":
            continue
        mine = [c for c in acked if c.key == read.key]
        if any(later.end < read.start for later in mine):
            choices.append((read, None))
        choices += [(read, old.value) for old in mine
                    for later in mine if old.end < later.start and later.end < read.start]
    choices = [(read, value) for read, value in choices if read.value != value]
    assume(choices)
    read, value = data.draw(st.sampled_from(choices))
    stale = replace(read, value=value)
    with time_limit(20):
        results = check([stale if c is read else c for c in calls])
    [found] = [res for res in results if res.linearizable is not True]
    assert found.linearizable is False and found.key == read.key, found.explain()
    # The culprit is that read (every read ending earlier is as the register answered), and
    # its window is itself a history no order explains.
    assert found.read == stale and stale in found.window
    assert check(found.window)[0].linearizable is False


# --- speed -----------------------------------------------------------------------------------

def simulate(rng: random.Random, keys: int, clients: int = 8, ops: int = 250) -> list[Call]:
    """Clients doing ``ops`` ops each (half writes, 2% of them unknown) on an atomic register
    per key, each op taking effect at a random instant of its interval."""
    calls, events = [], []
    for client in range(clients):
        t = rng.uniform(0, 0.01)
        for n in range(ops):
            start = t + rng.uniform(0, 0.002)
            end = start + rng.uniform(0.001, 0.02)
            t = end
            key = f"k{rng.randrange(keys)}"
            if rng.random() < 0.5:
                outcome: Outcome = "unknown" if rng.random() < 0.02 else "ok"
                call = Call(key, "write", f"c{client}-{n}", start, end, outcome)
            else:
                call = Call(key, "read", None, start, end)
            calls.append(call)
            events.append((rng.uniform(start, end), call))
    state: dict[str, str | None] = {}
    seen: dict[int, str | None] = {}
    for _, call in sorted(events, key=lambda e: e[0]):
        if call.kind == "write":
            state[call.key] = call.value
        else:
            seen[id(call)] = state.get(call.key)
    return [replace(c, value=seen[id(c)]) if id(c) in seen else c for c in calls]


def test_two_thousand_ops_over_five_keys_from_eight_clients_check_quickly() -> None:
    calls = simulate(random.Random(7), keys=5)
    assert len(calls) == 2000
    started = time.monotonic()
    results = check(calls)
    took = time.monotonic() - started
    assert [res.key for res in results] == [f"k{i}" for i in range(5)]
    assert all(res.linearizable for res in results), [res.explain() for res in results]
    assert took < 3.0, f"{took:.2f} s"


def test_a_stale_read_late_in_two_thousand_ops_on_one_key_is_found_quickly() -> None:
    calls = simulate(random.Random(8), keys=1)
    late = [c for c in calls if c.kind == "read" and c.start > 0.8 * max(x.end for x in calls)]
    first = min((c for c in calls if c.kind == "write" and c.outcome == "ok"),
                key=lambda c: c.end)
    stale = replace(late[0], value=first.value)
    started = time.monotonic()
    [found] = check([stale if c is late[0] else c for c in calls])
    took = time.monotonic() - started
    assert found.linearizable is False and found.read == stale, found.explain()
    assert first in found.window and len(found.window) <= 5, found.explain()
    assert took < 3.0, f"{took:.2f} s"

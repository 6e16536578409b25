"""Clock-rate measurement (hacluster.consensus.clock) with a fake clock, and what a rate
difference does to the lease inequality (hacluster.consensus.lease). No sockets, no sleeps."""

from __future__ import annotations

import random

import pytest

from hacluster.consensus.clock import (
    BEYOND,
    OK,
    UNKNOWN,
    WARNING,
    ClockPolicy,
    ClockWatch,
    Estimate,
    Sample,
    describe,
    fit_rate,
    judge,
)
from hacluster.consensus.lease import LeaseTiming, holder_lease_end, observer_lease_end
from hacluster.consensus.raft import decode_command, encode_command
from hacluster.consensus.state import ClusterState, CommandError, Report, apply_command

REPORT_S = 0.5      # consensus.report_interval_s


def deliveries(rate: float, seconds: float, seed: int, *, jitter_s: float = 0.06,
               stall_every: int = 0, stall_s: float = 0.0,
               base: float = 5000.0) -> list[tuple[float, float]]:
    """(observer's clock when it saw a report, the peer's clock when it proposed it).

    The observer's clock is the reference (rate 1); the peer's runs at ``rate``. Each report
    is applied on the observer a few ms plus up to ``jitter_s`` after it was proposed (a Raft
    heartbeat and a tick: 0.06 s with the default timings); every ``stall_every``-th one is
    held up a further ``stall_s`` (a GC pause, a busy core, a Raft election).
    """
    rng = random.Random(seed)
    out, t, k = [], 1.0, 0
    while t < seconds:
        k += 1
        applied = t + 0.003 + rng.random() * jitter_s
        if stall_every and k % stall_every == 0:
            applied += stall_s * rng.random()
        out.append((applied, base + rate * t))
        t += REPORT_S * (1 + 0.1 * (rng.random() - 0.5))
    return out


def run(rate: float, seconds: float = 60.0, seed: int = 1, bound: float = 0.05,
        **kw: float) -> tuple[ClockWatch, list[str]]:
    """Feed one peer's deliveries into a ClockWatch; returns it and every verdict it reached."""
    watch = ClockWatch("n1", ClockPolicy(bound=bound))
    verdicts = []
    for seen, peer in deliveries(rate, seconds, seed, **kw):  # type: ignore[arg-type]
        watch.observe("n2", seen, peer)
        verdicts.append(watch.estimates["n2"].verdict)
    return watch, verdicts


@pytest.mark.parametrize(("rate", "verdict"), [
    (1.0, OK), (1.02, OK), (0.98, OK), (1.04, WARNING), (0.96, WARNING),
    (1.08, BEYOND), (0.92, BEYOND), (1.15, BEYOND)])
def test_verdict_by_rate(rate: float, verdict: str) -> None:
    watch, seen = run(rate)
    est = watch.estimates["n2"]
    assert est.verdict == verdict
    assert est.rate == pytest.approx(rate, abs=0.003)
    assert est.span_s > 55 and est.samples > 100
    # Once judged, the verdict never strayed (the first samples are 'unknown').
    judged = [v for v in seen if v != UNKNOWN]
    assert judged and set(judged) == {verdict}


def test_no_verdict_before_the_minimum_span() -> None:
    watch, seen = run(1.15, seconds=19.0)
    assert set(seen) == {UNKNOWN}
    assert watch.estimates["n2"].rate is None
    watch, seen = run(1.15, seconds=23.0)
    assert seen[-1] == BEYOND


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize(("rate", "jitter_s"), [
    (1.0, 0.2), (1.01, 0.2), (0.99, 0.2), (1.02, 0.06), (0.98, 0.06)])
def test_jittered_delivery_gives_no_false_alarm(seed: int, rate: float,
                                                jitter_s: float) -> None:
    # One report in five held up to 2 s more: one such stall at the end of a 20 s window moves
    # a least-squares slope by ~1.5 %, were the late deliveries averaged in.
    _, seen = run(rate, seconds=120.0, seed=seed, jitter_s=jitter_s, stall_every=5,
                  stall_s=2.0)
    assert set(seen) <= {UNKNOWN, OK}, seen


def test_a_least_squares_fit_would_have_false_alarmed() -> None:
    """The same stalls that the envelope fit ignores pull a least-squares slope past the
    warning threshold: the reason for the one-sided fit (and proof the jitter test bites)."""
    worst = 0.0
    for seed in range(40):
        samples = [Sample(s, p) for s, p in deliveries(1.0, 21.0, seed, stall_every=5,
                                                       stall_s=2.0)]
        n = len(samples)
        mx = sum(s.local for s in samples) / n
        my = sum(s.peer for s in samples) / n
        slope = (sum((s.local - mx) * (s.peer - my) for s in samples)
                 / sum((s.local - mx) ** 2 for s in samples))
        worst = max(worst, abs(slope - 1))
        assert abs(fit_rate(samples) - 1) < 0.025  # type: ignore[operator]
    assert worst > 0.025


@pytest.mark.parametrize("seed", range(30))
def test_error_within_the_documented_bound(seed: int) -> None:
    """|rate error| <= eps / D, eps the smallest excess delay at least D either side of the
    mean time (the module docstring's bound, with D = S / 4)."""
    rate = 1.0 + (seed - 15) / 200
    rng = random.Random(seed)
    pairs = deliveries(rate, 10.0 + 50 * rng.random(), seed, jitter_s=0.3, stall_every=3,
                       stall_s=1.0)
    samples = [Sample(s, p) for s, p in pairs]
    fitted = fit_rate(samples)
    assert fitted is not None
    span = samples[-1].local - samples[0].local
    mean = sum(s.local for s in samples) / len(samples)
    d = span / 4
    # The delay of each sample above the fastest possible delivery (0.003 s commit).
    excess = [s.local - (s.peer - 5000.0) / rate - 0.003 for s in samples]
    early = min(e for s, e in zip(samples, excess, strict=True) if s.local <= mean - d)
    late = min(e for s, e in zip(samples, excess, strict=True) if s.local >= mean + d)
    assert abs(fitted - rate) <= max(early, late) / d * rate + 1e-9


def test_peer_clock_restart_starts_a_new_measurement() -> None:
    watch = ClockWatch("n1")
    for seen, peer in deliveries(1.0, 30.0, 3):
        watch.observe("n2", seen, peer)
    assert watch.estimates["n2"].verdict == OK
    # The peer restarts with another clock (a reboot; libfaketime): far back, then far ahead.
    changes = []
    for later, offset in ((40.0, -4000.0), (80.0, 90000.0)):
        for seen, peer in deliveries(1.0, 30.0, 4, base=5000.0 + offset):
            change = watch.observe("n2", seen + later, peer)
            if change is not None:
                changes.append(change.verdict)
    assert BEYOND not in changes and WARNING not in changes
    assert watch.estimates["n2"].verdict == OK


def test_verdict_changes_are_reported_once() -> None:
    watch = ClockWatch("n1")
    changes = [c for s, p in deliveries(1.08, 60.0, 5)
               if (c := watch.observe("n2", s, p)) is not None]
    assert [c.verdict for c in changes] == [BEYOND]
    assert watch.beyond() == ["n2"]
    assert watch.status()["n2"]["verdict"] == BEYOND
    # Our own reports and reports without a clock (older nodes) are not measured.
    assert watch.observe("n1", 100.0, 5.0) is None
    assert watch.observe("n3", 100.0, 0.0) is None
    assert "n1" not in watch.estimates and "n3" not in watch.estimates


def test_thresholds_have_hysteresis() -> None:
    assert judge(0.026, 0.05) == WARNING and judge(0.024, 0.05) == OK
    assert judge(0.024, 0.05, WARNING) == WARNING        # not yet clearly below 2.5 %
    assert judge(0.019, 0.05, WARNING) == OK
    assert judge(-0.048, 0.05, BEYOND) == BEYOND
    assert judge(-0.044, 0.05, BEYOND) == WARNING
    assert judge(0.051, 0.05, OK) == BEYOND and judge(None, 0.05, BEYOND) == UNKNOWN


def test_log_sentence() -> None:
    est = Estimate(1.079, BEYOND, 120, 59.5)
    assert describe("n2", "n1", est, 0.05) == (
        "n2's clock runs 7.9 % fast relative to n1, beyond consensus.drift 5 %: "
        "leases are not safe")
    assert "3.0 % slow" in describe("n3", "n1", Estimate(0.97, WARNING, 20, 10.0), 0.05)


def test_report_carries_the_clock_through_the_log() -> None:
    report = Report("n2", "http://b", 7, "replica", True, frozenset(), 3, clock=1234.5)
    raw = encode_command(report)
    assert decode_command(raw) == report
    # An entry written before the field existed still decodes: no clock (0.0).
    old = decode_command(raw[:-1])
    assert isinstance(old, Report) and old.clock == 0.0
    state, ok = apply_command(ClusterState(), report)
    member = state.member("n2")
    assert ok and member is not None and member.clock == 1234.5
    for bad in (-1.0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(CommandError):
            Report("n2", "http://b", 7, "replica", True, clock=bad)  # type: ignore[arg-type]


# -- what a clock rate difference does to leases --------------------------------------------

def overlap_s(holder_rate: float, observer_rate: float, t: LeaseTiming,
              apply_delay_s: float = 0.0) -> float:
    """Real seconds the holder may still write after an observer judges its lease expired
    (negative: the observer waits that much longer). Both measure from one renewal: the holder
    from its proposal at real time 0, the observer from applying it ``apply_delay_s`` later."""
    holder_end = holder_lease_end(0.0, t) / holder_rate
    observer_end = apply_delay_s + observer_lease_end(0.0, t) / observer_rate
    return holder_end - observer_end


def test_only_a_fast_observer_against_a_slower_holder_is_unsafe() -> None:
    t = LeaseTiming(lease_s=0.6, renew_interval_s=0.1, drift=0.05, margin_s=0.05)  # defaults
    # Within the bound, either way round: the observer waits over 0.1 s beyond the holder.
    assert overlap_s(1.0, 1.04, t) < -0.05 and overlap_s(1.04, 1.0, t) < -0.1
    # A fast holder stops early (in real time): safe at any rate.
    assert overlap_s(1.15, 1.0, t) < overlap_s(1.0, 1.0, t) < 0
    # 15 % fast observer: still no overlap with the default lease, but the margin meant for
    # scheduling pauses is nearly gone (~0.02 s instead of ~0.11 s).
    assert -0.03 < overlap_s(1.0, 1.15, t) < 0
    # Where it breaks: observer / holder rate above ((1 + d) * lease + margin) / ((1 - d) * lease)
    # = 1.19 with the defaults; 1.105 with no margin.
    assert overlap_s(1.0, 1.20, t) > 0
    assert overlap_s(1.0, 1.15, LeaseTiming(0.6, 0.1, 0.05, 0.0)) > 0
    assert overlap_s(1.0, 1.10, LeaseTiming(0.6, 0.1, 0.05, 0.0)) < 0

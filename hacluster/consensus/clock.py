"""Clock-rate measurement between nodes: is ``consensus.drift`` actually true?

Owns estimating, for each peer, the rate of its monotonic clock relative to this node's, from
pairs (this node's monotonic time when it saw a peer's Raft report, the peer's monotonic time
when it proposed that report), and judging the rate against the drift bound the leases rely on
(see ``lease``). Pure: no clock is read here (the caller passes its own time in), no I/O. It
must never change a decision, an election or a lease: a node cannot tell from its own
measurements whether a peer's clock is off or its own is, so the result is only reported.

The estimator. A sample is seen ``d >= d_min`` after it was proposed (Raft commit, the
observer's pass interval, scheduling), so every point ``(l, o = l - p)`` lies on or above the
line ``o = a + s * l`` traced by an ideal delivery at the minimum delay, with ``rate = 1 - s``.
Delays are one-sided, so a least-squares fit is pulled about by every late delivery; instead
the fit is the highest line that stays under every point at the window's mean time ``l_bar``
(a one-sided L1 fit, Moon, Skelly & Towsley 1999): the edge of the points' lower convex hull
that spans ``l_bar``. Late deliveries, however many, lie above it and do not move it.

Error bound: the true line is also under every point, and the fitted one is at least as high
at ``l_bar``; a line that is higher at ``l_bar`` and still under every point can differ in
slope by at most ``eps / D``, where ``eps`` is the smallest excess delay (over ``d_min``) of
any sample at least ``D`` before, and of any at least ``D`` after, ``l_bar``. With samples
spread over a span ``S`` and ``D = S / 4``: |rate error| <= 4 * eps / S. One prompt delivery in
each quarter of the window is enough, however late the others. Samples are timed when the Raft
thread applies a report, so the spread of delays is about a Raft heartbeat plus a tick (0.06 s
with the defaults); with reports every 0.5 s a quarter of the 20 s minimum span holds ~10
samples, eps is then ~0.006 s and the error ~0.1 % (0.4 % at worst in tests/test_clock.py's
simulations with reports stalled up to 2 s); with no prompt delivery at all it is at most that
spread times 4 / S (1.2 % at 20 s, 0.4 % over the full 60 s window).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

UNKNOWN, OK, WARNING, BEYOND = "unknown", "ok", "warning", "beyond"
_RANK = {UNKNOWN: -1, OK: 0, WARNING: 1, BEYOND: 2}


@dataclass(frozen=True, slots=True)
class ClockPolicy:
    bound: float = 0.05          # consensus.drift: the rate difference leases tolerate
    window_s: float = 60.0       # samples older than this (on our clock) are dropped
    min_span_s: float = 20.0     # no verdict before the samples span this long
    min_samples: int = 8
    max_samples: int = 512       # a cap for very short report intervals
    # A verdict only goes down once the drift is this fraction of the bound below the
    # threshold it crossed, so a drift sitting on a threshold does not flap (and log).
    hysteresis: float = 0.1
    # A peer clock that jumps (a restart with another clock, a reboot) by more than this
    # many seconds plus half the time elapsed starts a new measurement.
    jump_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Sample:
    local: float                 # this node's monotonic time when it saw the report
    peer: float                  # the peer's monotonic time when it proposed the report


@dataclass(frozen=True, slots=True)
class Estimate:
    rate: float | None           # peer seconds per second of ours; None: not enough samples
    verdict: str                 # unknown | ok | warning | beyond
    samples: int
    span_s: float

    @property
    def drift(self) -> float | None:
        """How much faster (positive) or slower the peer's clock runs, as a fraction."""
        return None if self.rate is None else self.rate - 1.0


def add_sample(samples: Sequence[Sample], local: float, peer: float,
               policy: ClockPolicy) -> tuple[tuple[Sample, ...], bool]:
    """The window with ``(local, peer)`` added and old samples dropped; True if it restarted.

    A peer clock that goes backwards or jumps far from what the last sample predicts is not
    the same clock any more: measuring across it would report a huge drift.
    """
    if samples:
        last = samples[-1]
        elapsed = local - last.local
        moved = peer - last.peer
        if elapsed < 0:
            return tuple(samples), False      # our own clock never goes back: ignore
        if moved < 0 or abs(moved - elapsed) > policy.jump_s + 0.5 * elapsed:
            return (Sample(local, peer),), True
    kept = [s for s in samples if local - s.local <= policy.window_s]
    kept.append(Sample(local, peer))
    return tuple(kept[-policy.max_samples:]), False


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def fit_rate(samples: Sequence[Sample]) -> float | None:
    """The peer's clock rate relative to ours (see the module docstring); None if undefined."""
    if len(samples) < 2:
        return None
    t0 = samples[0].local
    # Offsets relative to the first sample keep the arithmetic small (clocks may be ~1e9).
    pts = sorted((s.local - t0, (s.local - s.peer) - (samples[0].local - samples[0].peer))
                 for s in samples)
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        if hull and hull[-1][0] == p[0]:
            continue                           # same instant, sorted: keep the lower one
        hull.append(p)
    if len(hull) < 2:
        return None
    mean = math.fsum(p[0] for p in pts) / len(pts)
    for a, b in itertools.pairwise(hull):
        if a[0] <= mean <= b[0]:
            return 1.0 - (b[1] - a[1]) / (b[0] - a[0])
    return None


def judge(drift: float | None, bound: float, previous: str = UNKNOWN,
          hysteresis: float = 0.1) -> str:
    """ok, warning (over half the bound) or beyond (over the bound); unknown without a rate."""
    if drift is None:
        return UNKNOWN
    size = abs(drift)
    verdict = BEYOND if size > bound else WARNING if size > bound / 2 else OK
    if _RANK.get(previous, -1) > _RANK[verdict]:
        # Going down: only once clearly below the threshold that was crossed.
        slack = hysteresis * bound
        threshold = bound if previous == BEYOND else bound / 2
        if size > threshold - slack:
            return previous
    return verdict


def estimate(samples: Sequence[Sample], policy: ClockPolicy,
             previous: str = UNKNOWN) -> Estimate:
    span = samples[-1].local - samples[0].local if samples else 0.0
    rate = None
    if len(samples) >= policy.min_samples and span >= policy.min_span_s:
        rate = fit_rate(samples)
    verdict = judge(None if rate is None else rate - 1.0, policy.bound, previous,
                    policy.hysteresis)
    return Estimate(rate, verdict, len(samples), span)


def describe(peer: str, me: str, est: Estimate, bound: float) -> str:
    """The one log sentence for a verdict."""
    if est.rate is None:
        return f"{peer}'s clock: measuring anew relative to {me} (too few samples to judge)"
    drift = est.rate - 1.0
    how = f"{abs(drift) * 100:.1f} % {'fast' if drift >= 0 else 'slow'}"
    limit = f"consensus.drift {bound * 100:g} %"
    tail = {OK: f"within {limit}",
            WARNING: f"over half of {limit}: check its time source",
            BEYOND: f"beyond {limit}: leases are not safe"}[est.verdict]
    return f"{peer}'s clock runs {how} relative to {me}, {tail}"


@dataclass
class ClockWatch:
    """Each peer's window and last verdict on this node. Time is always passed in."""

    me: str
    policy: ClockPolicy = field(default_factory=ClockPolicy)
    windows: dict[str, tuple[Sample, ...]] = field(default_factory=dict)
    estimates: dict[str, Estimate] = field(default_factory=dict)

    def observe(self, peer: str, local: float, peer_clock: float) -> Estimate | None:
        """Add a sample; returns the new estimate when the peer's verdict changed."""
        if peer == self.me or not math.isfinite(peer_clock) or peer_clock <= 0:
            return None                       # 0: a report from a node that sends no clock
        window, restarted = add_sample(self.windows.get(peer, ()), local, peer_clock,
                                       self.policy)
        self.windows[peer] = window
        old = self.estimates.get(peer)
        previous = UNKNOWN if old is None or restarted else old.verdict
        new = estimate(window, self.policy, previous)
        self.estimates[peer] = new
        return new if (old.verdict if old else UNKNOWN) != new.verdict else None

    def forget(self, peer: str) -> None:
        self.windows.pop(peer, None)
        self.estimates.pop(peer, None)

    def status(self) -> dict[str, dict[str, object]]:
        return {peer: {"rate": None if e.rate is None else round(e.rate, 5),
                       "drift": None if e.drift is None else round(e.drift, 5),
                       "verdict": e.verdict, "samples": e.samples,
                       "span_s": round(e.span_s, 1)}
                for peer, e in sorted(self.estimates.items())}

    def beyond(self) -> list[str]:
        return sorted(p for p, e in self.estimates.items() if e.verdict == BEYOND)

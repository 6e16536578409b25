"""The simulated world's ground: seeded time, events, links and the ordered consensus log.

Owns the simulator's configuration, one node's simulated state (its store as a list of
lineage-labelled entries with a synced prefix, its Raft position, its process state), the event
queue (a heap of (true time, order, incarnation, action): nothing happens between events), each
node's drifting monotonic clock, the links between nodes (a partition, and one-way loss: a
muted node receives but nothing it sends arrives), and the consensus log — the real
``apply_command`` over an in-memory totally ordered log, a proposal committing after a seeded
delay only from a node whose messages reach a majority. It must never read a real clock or use
unseeded randomness, and never decide anything the product decides.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from hacluster.consensus.epochs import conflict
from hacluster.consensus.lease import LeaseTiming
from hacluster.consensus.model import Decision, Policy
from hacluster.consensus.reports import ReportTracker
from hacluster.consensus.state import Acquire, ClusterState, Command, Release, apply_command
from hacluster.testing.history import Op

Callback = Callable[[bool | None, float], None]


@dataclass
class Config:
    nodes: int = 3
    seconds: float = 200.0
    clients: int = 2
    drift: bool = True
    mode: str = "sync"           # replication.mode: "sync" (one standby) or "async"
    # Patroni-like coarse timings by default (each pass costs real time); ``fine()`` gives the
    # product's defaults (lease 0.6 s, renewals every 0.1 s).
    timing: LeaseTiming = field(default_factory=lambda: LeaseTiming(
        lease_s=3.0, renew_interval_s=0.75, drift=0.05, margin_s=0.05))
    report_s: float = 1.5        # consensus.report_interval_s
    member_stale_s: float = 6.0
    commit_s: tuple[float, float] = (0.005, 0.04)     # proposal to commit
    link_s: tuple[float, float] = (0.002, 0.03)       # one replication message
    sync_s: tuple[float, float] = (0.001, 0.008)      # one group commit (fsync)
    think_s: tuple[float, float] = (0.1, 1.0)         # a client between requests
    sync_timeout_s: float = 5.0
    client_timeout_s: float = 1.0
    fault_every_s: tuple[float, float] = (1.0, 7.0)
    faults: bool = True          # False: only what a scenario scripts
    # Dynamic changes of consensus.lease_s among the faults, each reaching the nodes at
    # different times (as each applies the Raft entry): the lease cap must hold across them.
    lease_changes: bool = False
    settle_s: float = 15.0       # faults healed, writers stopped: time to converge

    @classmethod
    def fine(cls, **kw: object) -> Config:
        return cls(timing=LeaseTiming(lease_s=0.6, renew_interval_s=0.1, drift=0.05,
                                      margin_s=0.05), report_s=0.5, member_stale_s=3.0,
                   fault_every_s=(0.5, 4.0), settle_s=8.0, **kw)  # type: ignore[arg-type]


@dataclass(slots=True)
class Pending:
    client: int                  # -1: its client gave up; nobody hears the answer
    key: str
    start: float
    seq: int
    epoch: int
    deadline: float              # local clock: the sync timeout


@dataclass(slots=True)
class SimNode:
    name: str
    rate: float
    offset: float
    entries: list[tuple[int, str]] = field(default_factory=list)  # (lineage label, key)
    synced: int = 0
    log_index: int = 0           # consensus entries applied (Raft's state is durable: rule 4)
    up: bool = True
    incarnation: int = 0
    disk_full: str | None = None  # the store refuses writes (a fault), until it has room
    room_at: float = 0.0          # true time the disk has room again
    watchdog_until: float = 0.0   # true time the watchdog device can be armed again
    # -- process state, reset by a restart ------------------------------------------------
    started_at: float = 0.0
    last_report: float = -1e9
    lock_key: tuple[int, int] = (0, 0)
    lock_seen_at: float | None = None
    reports: ReportTracker = field(default_factory=ReportTracker)
    claimed_epoch: int | None = None
    claimed_start: int = 0
    claim_confirmed: bool = False
    acquiring: float | None = None
    primary_epoch: int | None = None     # role: primary of this epoch (serves the stream)
    gate_reason: str | None = "starting"  # why writes are refused; None: the gate is open
    gate_proposed_at: float | None = None
    gate_lock_lease: float | None = None  # the lease the lock records for its gate's epoch
    policy: Policy | None = None          # its dynamic configuration; None: the cluster's first
    fencing_failed: tuple[int, str] | None = None
    switching: bool = False
    handover_epoch: int | None = None
    following: str | None = None
    diverged: bool = False
    acked_seq: int = 0
    sync_pending: frozenset[str] = frozenset()
    sync_unknown: bool = False
    sync_proposed_at: float = 0.0
    positions: dict[str, tuple[int, float]] = field(default_factory=dict)  # name: seq, moved
    waiting: list[Pending] = field(default_factory=list)
    pull_due: bool = False
    sync_due: bool = False
    last: Decision | None = None
    last_shape: str = ""        # last.sentence without its figures

    def label(self, seq: int) -> int:
        return self.entries[seq - 1][0] if 0 < seq <= len(self.entries) else 0

    @property
    def seq(self) -> int:
        return len(self.entries)


@dataclass
class Result:
    seed: int
    ok: bool
    violations: dict[str, list[str]]
    failovers: int
    acked: int
    attempts: int
    seconds: float
    trace: list[str]
    tails_dropped: int
    stuck: bool = False          # liveness, not safety: no primary after the settle period
    split_brain_windows: int = 0  # moments two nodes' gates were open in different epochs
    switchovers: int = 0

    def short_trace(self, lines: int = 30) -> str:
        """The decision sentences leading to the first sign of trouble (an epoch granted to
        data off the history, a refused stream), else the last ones."""
        marks = [i for i, line in enumerate(self.trace)
                 if "LEFT THE HISTORY" in line or "(409)" in line]
        end = marks[0] + 5 if marks else len(self.trace)
        return "\n".join(self.trace[max(0, end - lines):end])


class Core:
    """Time, events, links and the consensus log."""

    def __init__(self, seed: int, cfg: Config | None = None) -> None:
        self.cfg = cfg = cfg or Config()
        self.seed = seed
        self.rng = random.Random(seed)
        self._random = self.rng.random
        t = cfg.timing
        self.policy = Policy(timing=t, sync_mode=cfg.mode == "sync",
                             member_stale_s=cfg.member_stale_s,
                             sync_stall_s=min(1.0, cfg.sync_timeout_s / 2))
        bound = t.drift / 2.5 if cfg.drift else 0.0       # rates apart by less than drift
        self.nodes = [SimNode(f"n{i + 1}", self.rng.uniform(-bound, bound),
                              self.rng.uniform(100, 1000)) for i in range(cfg.nodes)]
        self.by_name = {n.name: n for n in self.nodes}
        self.log: list[Command] = []
        self.states: list[ClusterState] = [ClusterState()]
        self._cut: frozenset[str] = frozenset()            # one side of the partition
        self._muted: frozenset[str] = frozenset()          # one-way loss: sends nothing
        # name -> (its proposals commit, it hears commits); None: recompute (links changed)
        self._reach: dict[str, tuple[bool, bool]] | None = None
        self.ops: list[Op] = []
        self.trace: list[str] = []
        self.failovers = 0
        self.switchovers = 0
        self.stale_elected = 0     # epochs granted to data off the history (reverted fix)
        self.faulting = True
        self.now = 0.0
        self._queue: list[tuple[float, int, SimNode | None, int, Callable[[], None]]] = []
        self._order = 0

    def pol(self, n: SimNode) -> Policy:
        """The settings node ``n`` has in effect (a dynamic change reaches each in its time)."""
        return n.policy or self.policy

    # -- time and events ----------------------------------------------------------------

    def local(self, n: SimNode, t: float | None = None) -> float:
        return n.offset + (self.now if t is None else t) * (1 + n.rate)

    def at(self, t: float, fn: Callable[[], None], n: SimNode | None = None) -> None:
        """Run ``fn`` at true time ``t``; with ``n``, only if that process still runs then."""
        self._order += 1
        heapq.heappush(self._queue, (t, self._order, n, n.incarnation if n else 0, fn))

    def after(self, delay: float | tuple[float, float], fn: Callable[[], None],
              n: SimNode | None = None) -> None:
        # at(), inlined: this and the loop below are the simulator's hottest lines.
        if isinstance(delay, tuple):
            low, high = delay
            delay = low + (high - low) * self._random()  # random.uniform, without its call
        self._order += 1
        heapq.heappush(self._queue, (self.now + delay, self._order, n,
                                     n.incarnation if n else 0, fn))

    def run_until(self, end: float) -> None:
        q, pop = self._queue, heapq.heappop
        while q and q[0][0] <= end:
            t, _, n, inc, fn = pop(q)
            self.now = t
            if n is None or (n.incarnation == inc and n.up):
                fn()
        self.now = end

    def say(self, text: str) -> None:
        self.trace.append(f"{self.now:8.2f} {text}")

    # -- links ----------------------------------------------------------------------------

    @property
    def cut(self) -> frozenset[str]:
        return self._cut

    @cut.setter
    def cut(self, names: frozenset[str]) -> None:
        self._cut, self._reach = names, None

    @property
    def muted(self) -> frozenset[str]:
        return self._muted

    @muted.setter
    def muted(self, names: frozenset[str]) -> None:
        self._muted, self._reach = names, None

    def links_changed(self) -> None:
        """A node went down or came up: who reaches a majority must be worked out again."""
        self._reach = None

    def _reachability(self) -> dict[str, tuple[bool, bool]]:
        if self._reach is None:
            total = len(self.nodes)
            reach = {}
            for n in self.nodes:
                side = n.name in self._cut
                peers = [m for m in self.nodes if m.up and (m.name in self._cut) == side]
                sends = n.up and n.name not in self._muted and 2 * len(peers) > total
                hears = n.up and 2 * sum(1 for m in peers if m.name not in self._muted) > total
                reach[n.name] = (sends, hears)
            self._reach = reach
        return self._reach

    def linked(self, a: SimNode, b: SimNode) -> bool:
        """Can ``a`` send to ``b``?"""
        return (a.up and b.up and a.name not in self._muted
                and (a.name in self._cut) == (b.name in self._cut))

    def majority(self, n: SimNode) -> bool:
        """Do ``n``'s proposals commit and their answers come back?"""
        return n.up and (self._reach or self._reachability())[n.name][0]

    def hears_commits(self, n: SimNode) -> bool:
        return n.up and (self._reach or self._reachability())[n.name][1]

    # -- consensus ------------------------------------------------------------------------

    def state(self, n: SimNode) -> ClusterState:
        return self.states[n.log_index]

    def propose(self, n: SimNode, cmd: Command, cb: Callback | None = None) -> None:
        at = self.local(n)
        if not self.majority(n):
            if cb is not None:
                cb(None, at)              # no leader reachable: the outcome is never known
            return
        inc = n.incarnation
        self.after(self.cfg.commit_s, lambda: self._commit(cmd, n.name, inc, at, cb))

    def _commit(self, cmd: Command, who: str, inc: int, at: float, cb: Callback | None) -> None:
        before = self.states[-1]
        after, ok = apply_command(before, cmd)
        self.log.append(cmd)
        self.states.append(after)
        if isinstance(cmd, Acquire) and ok:
            self.failovers += before.lock.epoch > 0 and cmd.reason != "switchover"
            self.switchovers += cmd.reason == "switchover"
            off = conflict(cmd.last_epoch, cmd.start_seq - 1, before.history)
            self.stale_elected += off is not None
            self.say(f"commit: {cmd.candidate} acquired epoch {after.lock.epoch} from seq "
                     f"{cmd.start_seq} ({cmd.reason}, lineage {cmd.last_epoch})"
                     + (f"; ITS DATA LEFT THE HISTORY: {off}" if off else ""))
            self.on_acquired(cmd.candidate)
        elif isinstance(cmd, Release) and ok:
            self.say(f"commit: {cmd.holder} released epoch {cmd.epoch}"
                     + (f" to {cmd.successor}" if cmd.successor else "")
                     + f" (acked seq {cmd.acked_seq})")
        self.deliver()
        n = self.by_name[who]
        if cb is not None and n.incarnation == inc and n.up:
            # The answer reaches only a proposer whose messages still reach a majority.
            cb(ok if self.majority(n) else None, at)

    def deliver(self) -> None:
        """Every node that hears the majority applies the log up to its end."""
        end = len(self.log)
        reach = self._reach or self._reachability()
        for n in self.nodes:
            if n.log_index < end and n.up and reach[n.name][1]:
                n.log_index = end
                lock = self.states[end].lock
                if (lock.epoch, lock.renewals) != n.lock_key:
                    n.lock_key = (lock.epoch, lock.renewals)
                    n.lock_seen_at = n.offset + self.now * (1 + n.rate)     # local(n)

    def on_acquired(self, name: str) -> None:
        """Hook for the fault model: a new primary was granted an epoch."""

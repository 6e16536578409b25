"""A deterministic simulated cluster that runs the real pure core under one seed.

Owns the simulated world around ``decide`` and ``apply_command``: a totally ordered
consensus log (a proposal commits only from the majority side of a partition; commits reach
each connected node in order), a monotonic clock per node (with drift within the lease
bound), a tick loop where each node's control pass runs every renew interval, a store per
node (entries labelled with their lineage, a synced prefix that a power loss keeps),
streaming replication with delays and the divergent-tail drop, a model of the control loop's
effects (renew, acquire, release, the synchronous set with rule 6's union, rule 3 via
``acquired_epoch``, the acknowledged floor), clients recording ``Op``s, and faults drawn from
the seed. The result is judged by ``history.check_all`` against the final primary's keys,
plus a check that every replica ends identical to it; a run that ends with no primary is
reported as stuck (liveness), not as a safety violation.

It must never reimplement a decision (every election, lease and refusal judgement comes from
``decide`` and ``apply_command``), never read a real clock or use unseeded randomness (the
same seed must give the same trace), and never touch the disk or the network.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from hacluster.consensus.decide import Action, Decision, Observation, Policy, decide, lag_allowance
from hacluster.consensus.epochs import conflict, same_history
from hacluster.consensus.lease import LeaseTiming, holder_lease_end
from hacluster.consensus.state import (
    Acquire,
    ClusterState,
    Command,
    Release,
    Renew,
    Report,
    SetSyncSet,
    apply_command,
)
from hacluster.testing.history import Op, check_all

TICK = 0.01                    # seconds of true time per step
COMMIT_TICKS = 2               # consensus latency: proposal to commit
REPL_TICKS = 3                 # a write reaches a follower this many ticks after the primary
SYNC_TIMEOUT_S = 5.0           # replication.sync_timeout_s
CLIENT_TIMEOUT_S = 1.0         # a client gives up (status 0, outcome unknown)
REPORT_INTERVAL_S = 0.5
SETTLE_S = 8.0                 # faults healed, no writes: time to converge before judging

Callback = Callable[[bool | None, float], None]


@dataclass
class Config:
    nodes: int = 3
    seconds: float = 200.0
    clients: int = 3
    drift: bool = True
    mode: str = "sync"         # replication.mode: "sync" (1 standby) or "async"
    timing: LeaseTiming = field(default_factory=lambda: LeaseTiming(
        lease_s=0.6, renew_interval_s=0.1, drift=0.05, margin_s=0.05))


@dataclass
class Pending:
    op_client: int
    key: str
    start: float
    seq: int
    epoch: int
    deadline: float            # local clock


@dataclass
class Node:
    name: str
    rate: float
    offset: float
    entries: list[tuple[int, str]] = field(default_factory=list)  # (lineage label, key)
    synced: int = 0
    log_index: int = 0         # consensus entries applied (Raft's state is durable: rule 4)
    up: bool = True
    incarnation: int = 0
    # process state, reset by a restart
    started_at: float = 0.0
    next_pass: float = 0.0     # true time
    last_report: float = -1e9
    lock_key: tuple[int, int] = (0, 0)
    lock_seen_at: float | None = None
    member_reports: dict[str, int] = field(default_factory=dict)
    member_seen: dict[str, float] = field(default_factory=dict)
    claimed_epoch: int | None = None
    claimed_start: int = 0
    claim_confirmed: bool = False
    acquiring: float | None = None
    gate_epoch: int | None = None       # primary of this epoch (write gate), None: replica
    gate_proposed_at: float | None = None
    following: str | None = None
    diverged: bool = False
    acked_seq: int = 0
    released_epoch: int | None = None   # given up (disk full): never reopened for it
    sync_pending: frozenset[str] = frozenset()
    sync_unknown: bool = False
    sync_proposed_at: float = 0.0
    waiting: list[Pending] = field(default_factory=list)
    last: Decision | None = None

    def label(self, seq: int) -> int:
        return self.entries[seq - 1][0] if 0 < seq <= len(self.entries) else 0

    @property
    def seq(self) -> int:
        return len(self.entries)


@dataclass
class Client:
    hint: int = 0
    busy_until: float = 0.0    # true time: next request no earlier
    n: int = 0


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
    # Liveness, not safety: no primary after the settle period (the trace says why).
    stuck: bool = False

    def short_trace(self, lines: int = 30) -> str:
        """The decision sentences leading to the first sign of trouble (an epoch granted to
        data off the history, a refused stream), else the last ones."""
        marks = [i for i, line in enumerate(self.trace)
                 if "LEFT THE HISTORY" in line or "(409)" in line]
        end = marks[0] + 5 if marks else len(self.trace)
        return "\n".join(self.trace[max(0, end - lines):end])


class World:
    def __init__(self, seed: int, cfg: Config | None = None) -> None:
        self.cfg = cfg = cfg or Config()
        self.seed = seed
        self.rng = random.Random(seed)
        t = cfg.timing
        self.policy = Policy(timing=t, sync_mode=cfg.mode == "sync", member_stale_s=3.0)
        bound = t.drift / 2.5 if cfg.drift else 0.0     # rates apart by less than drift
        self.nodes = [Node(f"n{i + 1}", self.rng.uniform(-bound, bound),
                           self.rng.uniform(100, 1000)) for i in range(cfg.nodes)]
        self.by_name = {n.name: n for n in self.nodes}
        for n in self.nodes:
            n.next_pass = self.rng.uniform(0, t.renew_interval_s)
            n.started_at = self.local(n, 0.0)
        self.log: list[Command] = []
        self.states: list[ClusterState] = [ClusterState()]
        self.proposals: list[tuple[int, Command, str, int, float, Callback | None]] = []
        self.cut: frozenset[str] = frozenset()      # one side of the partition
        self.tick = 0
        self.ops: list[Op] = []
        self.clients = [Client(hint=i % cfg.nodes) for i in range(cfg.clients)]
        self.trace: list[str] = []
        self.faults: list[tuple[float, Callable[[], None]]] = []
        self.failovers = 0
        self.tails_dropped = 0
        self.tail_keys: set[bytes] = set()     # every divergent tail saved to a file
        self.stale_elected = 0      # epochs granted to data off the history (reverted fix)
        self.next_fault = 3.0
        self.faulting = True
        self.keyno = 0
        self._now = 0.0
        self._majority = {False: True, True: False}

    # -- time and connectivity ---------------------------------------------------------------

    @property
    def now(self) -> float:
        return self._now

    def local(self, n: Node, t: float | None = None) -> float:
        return n.offset + (self.now if t is None else t) * (1 + n.rate)

    def linked(self, a: Node, b: Node) -> bool:
        return a.up and b.up and ((a.name in self.cut) == (b.name in self.cut))

    def majority(self, n: Node) -> bool:
        return n.up and self._majority[n.name in self.cut]

    def _sides(self) -> None:
        """Which side of the partition can commit (faults change it only between steps)."""
        ups = [m.name in self.cut for m in self.nodes if m.up]
        self._majority = {side: 2 * ups.count(side) > len(self.nodes) for side in (False, True)}

    def say(self, text: str) -> None:
        self.trace.append(f"{self.now:8.2f} {text}")

    def state(self, n: Node) -> ClusterState:
        return self.states[n.log_index]

    # -- consensus ---------------------------------------------------------------------------

    def propose(self, n: Node, cmd: Command, cb: Callback | None = None) -> None:
        at = self.local(n)
        if not self.majority(n):
            if cb is not None:
                cb(None, at)            # no leader reachable: the outcome is never known
            return
        self.proposals.append((self.tick + COMMIT_TICKS, cmd, n.name, n.incarnation, at, cb))

    def _commit(self) -> None:
        while self.proposals and self.proposals[0][0] <= self.tick:
            _, cmd, who, inc, at, cb = self.proposals.pop(0)
            before = self.states[-1]
            after, ok = apply_command(before, cmd)
            self.log.append(cmd)
            self.states.append(after)
            if isinstance(cmd, Acquire) and ok:
                self.failovers += before.lock.epoch > 0
                off = conflict(cmd.last_epoch, cmd.start_seq - 1, before.history)
                self.stale_elected += off is not None
                self.say(f"commit: {cmd.candidate} acquired epoch {after.lock.epoch} from seq "
                         f"{cmd.start_seq} ({cmd.reason}, lineage {cmd.last_epoch})"
                         + (f"; ITS DATA LEFT THE HISTORY: {off}" if off else ""))
                self._aftershock(cmd.candidate)
            elif isinstance(cmd, Release) and ok:
                self.say(f"commit: {cmd.holder} released epoch {cmd.epoch} (acked seq "
                         f"{cmd.acked_seq})")
            n = self.by_name[who]
            if cb is not None and n.incarnation == inc and n.up:
                # The answer reaches only a proposer still on the majority side.
                cb(ok if self.majority(n) else None, at)
        for n in self.nodes:
            if self.majority(n) and n.log_index < len(self.log):
                n.log_index = len(self.log)
                lock = self.states[n.log_index].lock
                if (lock.epoch, lock.renewals) != n.lock_key:
                    n.lock_key = (lock.epoch, lock.renewals)
                    n.lock_seen_at = self.local(n)

    # -- faults ------------------------------------------------------------------------------

    def _primary(self) -> Node | None:
        live = [n for n in self.nodes if n.up and n.gate_epoch is not None]
        return max(live, key=lambda n: n.gate_epoch or 0) if live else None

    def _schedule_faults(self) -> None:
        if not self.faulting or self.now < self.next_fault:
            return
        rng = self.rng
        self.next_fault = self.now + rng.uniform(0.5, 4.0)
        primary = self._primary()
        victim = (primary if primary is not None and rng.random() < 0.6
                  else rng.choice(self.nodes))
        kind = rng.choice(["crash", "power", "partition", "partition", "release"])
        back = self.now + rng.uniform(0.3, 4.0)
        if kind == "release":
            if victim.gate_epoch is not None and victim.up:
                self.say(f"fault: {victim.name} gives the lock up (disk full)")
                self._release(victim)
            return
        if kind == "partition":
            if self.cut:
                return
            size = 1 if len(self.nodes) == 3 or rng.random() < 0.5 else 2
            others = [n.name for n in self.nodes if n is not victim]
            side = frozenset([victim.name, *rng.sample(others, size - 1)])
            self.cut = side
            self.say(f"fault: partition {sorted(side)} from the rest")
            self.faults.append((back, self._heal))
            return
        if not victim.up:
            return
        self._kill(victim, power=kind == "power")
        self.faults.append((back, lambda: self._restart(self.by_name[victim.name])))

    def _aftershock(self, name: str) -> None:
        """Often strike a new primary early: the windows where its epoch holds few writes
        (a release, a crash, a power loss then) are where lineage mistakes show."""
        if not self.faulting or self.rng.random() < 0.5:
            return
        at = self.now + self.rng.uniform(0.05, 1.5)
        kind = self.rng.choice(["release", "crash", "power"])
        back = at + self.rng.uniform(0.3, 3.0)

        def strike() -> None:
            n = self.by_name[name]
            if not n.up:
                return
            if kind == "release":
                if n.gate_epoch is not None:
                    self.say(f"fault: {name} gives the lock up (disk full)")
                    self._release(n)
                return
            self._kill(n, power=kind == "power")
            self.faults.append((back, lambda: self._restart(self.by_name[name])))

        self.faults.append((at, strike))

    def _heal(self) -> None:
        if self.cut:
            self.say("fault: partition healed")
        self.cut = frozenset()

    def _kill(self, n: Node, power: bool) -> None:
        n.up = False
        n.incarnation += 1
        for p in n.waiting:
            self._finish(p, n, 0, "RemoteDisconnected: connection lost")
        n.waiting = []
        if power:
            lost = len(n.entries) - n.synced
            del n.entries[n.synced:]
            self.say(f"fault: power loss of {n.name} (seq {n.seq} kept, {lost} unsynced lost)")
        else:
            self.say(f"fault: crash of {n.name} at seq {n.seq}")

    def _restart(self, n: Node) -> None:
        if n.up:
            return
        fresh = Node(n.name, n.rate, n.offset, n.entries, n.synced, n.log_index,
                     incarnation=n.incarnation)
        fresh.started_at = self.local(n)
        fresh.next_pass = self.now + self.rng.uniform(0, self.cfg.timing.renew_interval_s)
        lock = self.states[n.log_index].lock
        fresh.lock_key = (lock.epoch, lock.renewals)
        self.nodes[self.nodes.index(n)] = fresh
        self.by_name[n.name] = fresh
        self.say(f"fault: {n.name} restarted at seq {fresh.seq}")

    def _run_faults(self) -> None:
        due = [f for f in self.faults if f[0] <= self.now]
        self.faults = [f for f in self.faults if f[0] > self.now]
        for _, fn in due:
            fn()

    # -- the control loop's effects ----------------------------------------------------------

    def _acquired_epoch(self, n: Node) -> int | None:
        if n.claimed_epoch is None:
            return None
        if n.claim_confirmed or n.seq == n.claimed_start - 1:
            return n.claimed_epoch
        return None

    def _observe(self, n: Node, state: ClusterState, now: float) -> Observation:
        for m in state.members:
            previous = n.member_reports.get(m.name)
            if previous != m.reports:
                n.member_reports[m.name] = m.reports
                if previous is not None:
                    n.member_seen[m.name] = now
        holder = state.lock.held and state.lock.holder == n.name
        return Observation(
            me=n.name, now=now, has_quorum=self.majority(n), lock_seen_at=n.lock_seen_at,
            renewal_proposed_at=n.gate_proposed_at if holder else None,
            my_applied_seq=n.seq, member_seen_at=dict(n.member_seen),
            my_last_epoch=n.label(n.seq), acquired_epoch=self._acquired_epoch(n),
            uptime_s=now - n.started_at)

    def _pass(self, n: Node) -> None:
        now = self.local(n)
        if now - n.last_report >= REPORT_INTERVAL_S:
            n.last_report = now
            self.propose(n, Report(n.name, f"http://{n.name}", n.seq,
                                   "primary" if n.gate_epoch is not None else "replica",
                                   not n.diverged, frozenset(), n.label(n.seq), clock=now))
        state = self.state(n)
        d = decide(state, self._observe(n, state, now), self.policy)
        prev = n.last
        n.last = d
        if prev is None or (prev.action, prev.target, prev.epoch) != (d.action, d.target,
                                                                       d.epoch):
            self.say(d.sentence)
        self._act(n, d, state, now)

    def _release(self, n: Node) -> None:
        lock = self.state(n).lock
        n.gate_epoch, n.gate_proposed_at, n.released_epoch = None, None, lock.epoch
        self.propose(n, Release(n.name, lock.epoch, None, n.acked_seq))

    def _become_primary(self, n: Node, epoch: int, proposed_at: float) -> None:
        if n.released_epoch == epoch:
            return
        if n.gate_epoch != epoch:
            n.gate_epoch, n.following = epoch, None
        n.gate_proposed_at = max(proposed_at, n.gate_proposed_at or proposed_at)

    def _become_replica(self, n: Node, target: str | None) -> None:
        if n.gate_epoch is not None:
            n.gate_epoch, n.gate_proposed_at = None, None
            n.sync_pending, n.sync_unknown = frozenset(), False
        n.following = target

    def _act(self, n: Node, d: Decision, state: ClusterState, now: float) -> None:
        lock = state.lock
        inc = n.incarnation
        if d.action is Action.RELEASE or (lock.held and lock.holder == n.name
                                          and n.released_epoch == lock.epoch):
            self._release(n)
            return
        if lock.held and lock.holder == n.name and self._acquired_epoch(n) == lock.epoch:
            epoch = lock.epoch

            def renewed(ok: bool | None, proposed_at: float) -> None:
                if n.incarnation != inc:
                    return
                if ok and n.claimed_epoch == epoch and n.seq == n.claimed_start - 1:
                    n.claim_confirmed = True
                if ok:
                    self._become_primary(n, epoch, proposed_at)

            self.propose(n, Renew(n.name, epoch, n.seq, n.acked_seq), renewed)
            if n.gate_epoch is not None and self.policy.sync_mode:
                self._maintain_sync_set(n, state, now)
            return
        if n.gate_epoch is not None:
            self._become_replica(n, lock.holder if lock.held else None)
        if d.action is Action.FOLLOW and d.target is not None:
            self._become_replica(n, d.target)
        elif d.action is Action.PROMOTE and (n.acquiring is None or now - n.acquiring > 2.0):
            assert d.epoch is not None
            n.acquiring = now
            n.following = None          # stop applying first: the epoch starts after it
            start = n.seq + 1
            reason = ("restart" if lock.held and lock.holder == n.name else
                      "bootstrap" if lock.holder is None else "failover")
            cmd = Acquire(n.name, lock.epoch, lock.renewals, start, self.policy.timing.lease_s,
                          reason, 0.0, n.label(start - 1), lag_allowance(self.policy))
            n.claimed_epoch, n.claimed_start, n.claim_confirmed = d.epoch, start, False
            epoch = d.epoch

            def acquired(ok: bool | None, proposed_at: float) -> None:
                if n.incarnation != inc:
                    return
                n.acquiring = None
                if ok:
                    if n.claimed_epoch == epoch:
                        n.claim_confirmed = True
                    self._become_primary(n, epoch, proposed_at)
                elif ok is False and n.claimed_epoch == epoch:
                    st = self.state(n)
                    rec = next((r for r in st.history if r.epoch == epoch), None)
                    won = (st.lock.holder == n.name and st.lock.epoch == epoch
                           and rec is not None and rec.start_seq == start)
                    if not won:
                        n.claimed_epoch = None

            self.propose(n, cmd, acquired)

    def _connected(self, p: Node) -> list[Node]:
        return [m for m in self.nodes if m is not p and m.following == p.name
                and self.linked(m, p) and not m.diverged]

    def _maintain_sync_set(self, n: Node, state: ClusterState, now: float) -> None:
        need = 1
        settle = False
        if n.sync_pending:
            if not n.sync_unknown and now - n.sync_proposed_at < 2.0:
                return
            settle = True
        conn = {m.name: m.synced for m in self._connected(n)}
        keep = set(state.sync_set) & set(conn)
        ready = sorted((m for m in set(conn) - keep if conn[m] >= n.seq),
                       key=lambda m: (-conn[m], m))
        new = frozenset(keep | set(ready[:max(0, need - len(keep))]))
        unchanged = keep == set(state.sync_set) and len(keep) >= need
        useless = len(new) < min(need, len(state.sync_set)) or not new or new == state.sync_set
        if unchanged or useless:
            if not settle:
                return
            new = state.sync_set
        n.sync_pending = n.sync_pending | new
        n.sync_unknown = False
        n.sync_proposed_at = now
        inc = n.incarnation

        def done(ok: bool | None, proposed_at: float) -> None:
            if n.incarnation != inc:
                return
            if ok is None:
                n.sync_unknown = True
                return
            n.sync_pending, n.sync_unknown = frozenset(), False

        self.propose(n, SetSyncSet(n.name, state.lock.epoch, new), done)

    # -- data: writes, syncs, replication ----------------------------------------------------

    def _gate_refusal(self, n: Node) -> str | None:
        if n.gate_epoch is None or n.gate_proposed_at is None:
            return f"{n.name} is not primary"
        if self.local(n) >= holder_lease_end(n.gate_proposed_at, self.policy.timing):
            return "lease expired"
        return None

    def _finish(self, p: Pending, n: Node, status: int, note: str) -> None:
        if p.op_client < 0:
            return                      # its client gave up long ago: nobody hears this
        ok = status == 200
        self.ops.append(Op(p.key, n.name, p.start, self.now + TICK, status,
                           p.epoch if ok else None, p.seq if ok else None, note))
        c = self.clients[p.op_client]
        c.busy_until = self.now + self.rng.uniform(0.02, 0.3)

    def _clients(self) -> None:
        for i, c in enumerate(self.clients):
            if c.busy_until > self.now or c.busy_until < 0:
                continue
            n = self.nodes[c.hint]
            self.keyno += 1
            key = f"k{self.keyno}"
            start = self.now
            if not n.up:
                self.ops.append(Op(key, n.name, start, start + TICK, 0,
                                   note="ConnectionRefusedError"))
                c.hint = (c.hint + 1) % len(self.nodes)
                c.busy_until = self.now + 0.05
                continue
            why = self._gate_refusal(n)
            if why is not None:
                self.ops.append(Op(key, n.name, start, start + TICK, 503, note=why))
                holder = self.state(n).lock.holder
                c.hint = ([m.name for m in self.nodes].index(holder)
                          if holder is not None and holder != n.name and self.rng.random() < 0.8
                          else (c.hint + 1) % len(self.nodes))
                c.busy_until = self.now + 0.05
                continue
            assert n.gate_epoch is not None
            n.entries.append((n.gate_epoch, key))
            c.busy_until = -1.0                 # waiting for the answer
            n.waiting.append(Pending(i, key, start, n.seq, n.gate_epoch,
                                     self.local(n) + SYNC_TIMEOUT_S))

    def _acks(self, n: Node) -> None:
        if not n.waiting:
            return
        state = self.state(n)
        lock = state.lock
        positions = {m.name: m.synced for m in self._connected(n)}
        confirmers = state.sync_set | n.sync_pending
        still = []
        for p in n.waiting:
            if not (lock.held and lock.holder == n.name and lock.epoch == p.epoch
                    and n.gate_epoch == p.epoch):
                self._finish(p, n, 503, "outcome unknown: the lock was lost")
                continue
            confirmed = not self.policy.sync_mode or (
                len(state.sync_set) >= 1
                and all(positions.get(m, 0) >= p.seq for m in confirmers))
            if n.synced >= p.seq and confirmed:
                late = self._gate_refusal(n)
                if late is not None:
                    self._finish(p, n, 503, f"outcome unknown: {late}")
                else:
                    n.acked_seq = max(n.acked_seq, p.seq)
                    self._finish(p, n, 200, "")
                continue
            if self.local(n) >= p.deadline:
                self._finish(p, n, 503, "outcome unknown: sync timeout")
            elif self.now - p.start >= CLIENT_TIMEOUT_S:
                # The client gives up; the server keeps the write and may still apply it.
                self.ops.append(Op(p.key, n.name, p.start, self.now, 0, note="timeout"))
                self.clients[p.op_client].busy_until = self.now
                p.op_client = -1
                still.append(p)
            else:
                still.append(p)
        n.waiting = still

    def _replicate(self, f: Node) -> None:
        if f.following is None or f.diverged:
            return
        history = self.state(f).history
        off = conflict(f.label(f.seq), f.seq, history)
        if off is not None and off.verifiable:
            # Node._handle_divergence, before following: the tail goes to a file and the
            # node starts over from the primary (modelled as keeping the common prefix).
            dropped = f.seq - off.first_seq + 1
            self.tail_keys.update(k.encode() for _, k in f.entries[off.first_seq - 1:])
            del f.entries[off.first_seq - 1:]
            f.synced = min(f.synced, f.seq)
            self.tails_dropped += dropped
            self.say(f"{f.name}: divergent tail seqs {off.first_seq}..{off.first_seq + dropped - 1}"
                     f" saved and dropped ({off})")
        p = self.by_name[f.following]
        # The replication stream is served by the primary only (api.add_replication_routes).
        if p is f or p.gate_epoch is None or not self.linked(f, p):
            return
        seq = f.seq
        if seq > 0 and not same_history(f.label(seq), p.label(seq), seq,
                                        self.state(p).history):
            f.diverged = True           # the primary answers 409: replication stops
            self.say(f"{f.name}: {p.name} refuses the stream at seq {seq} (409): diverged")
            return
        # Data is labelled with the epoch of the primary it came from; labels never go back
        # (Lineage.record ignores an older epoch).
        label = max(p.gate_epoch, f.label(seq))
        # Everything the primary wrote before this step, synced there or not: a replica may
        # hold writes its primary loses at a power loss (rule 3 makes those a divergent tail).
        while f.seq < p.seq and f.seq < seq + 50:
            f.entries.append((label, p.entries[f.seq][1]))

    def _sync(self) -> None:
        for n in self.nodes:
            if n.up:
                n.synced = n.seq

    # -- the run -----------------------------------------------------------------------------

    def step(self) -> None:
        self._now = self.tick * TICK
        self._run_faults()
        self._schedule_faults()
        self._sides()
        self._commit()
        for n in self.nodes:
            if n.up and self.now >= n.next_pass:
                n.next_pass += self.policy.timing.renew_interval_s / (1 + n.rate)
                self._pass(n)
        if self.tick % REPL_TICKS == 0:
            for n in self.nodes:
                if n.up:
                    self._replicate(n)
        self._sync()
        for n in self.nodes:
            if n.up:
                self._acks(n)
        if self.faulting:
            self._clients()
        self.tick += 1

    def run(self) -> Result:
        end = round(self.cfg.seconds / TICK)
        while self.tick < end:
            self.step()
        # Heal everything, stop the writers, let the cluster converge, then judge.
        self.faulting = False
        self._now = self.tick * TICK
        for _, fn in sorted(self.faults, key=lambda f: f[0]):
            fn()
        self.faults = []
        self._heal()
        for n in list(self.nodes):
            self._restart(n)
        self._sides()
        for n in self.nodes:
            for p in n.waiting:
                if p.op_client >= 0:
                    self._finish(p, n, 0, "writer stopped")
            n.waiting = []
        settle = end + round(SETTLE_S / TICK)
        while self.tick < settle:
            self.step()
        return self.judge()

    def judge(self) -> Result:
        lock = self.states[-1].lock
        final = self.by_name[lock.holder] if lock.held and lock.holder else None
        violations: dict[str, list[str]] = {}
        keys = {k.encode() for _, k in final.entries} if final else None
        verdict = check_all(self.ops, keys,
                            tail_keys=None if self.policy.sync_mode else self.tail_keys)
        violations.update({k: v for k, v in verdict.violations.items() if v})
        stuck = final is None
        if final is not None:
            mine = [k for _, k in final.entries]
            differ = [f"{n.name} holds seq 1..{n.seq} differing from {final.name}'s 1..{final.seq}"
                      + (" (diverged, replication stopped)" if n.diverged else "")
                      for n in self.nodes if n is not final and [k for _, k in n.entries] != mine]
            if differ:
                violations["replicas_differ"] = differ
        return Result(self.seed, not violations, violations, self.failovers, verdict.acked,
                      verdict.attempts, self.cfg.seconds, self.trace, self.tails_dropped,
                      stuck)


def run_seed(seed: int, cfg: Config | None = None) -> Result:
    return World(seed, cfg).run()

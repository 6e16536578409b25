"""The control loop on its own: a real one-node Raft in-process, a fake node behind the port.

No node processes. ``FakeNode`` implements ``NodePort`` (the only way the loop reaches its
node): the test sets its condition (seq, acknowledged seq, a full disk, unfitness, a watchdog
that will not arm, whether a reopen of the store works) and it records every role transition,
gate closing and fencing call in order, cut into passes (each pass ends with the one
``tend_fencing`` call ``run_once`` makes). The loop under test is the real ``ControlLoop`` over
a real single-node pysyncobj cluster on a free loopback port, its journal in ``tmp_path``;
assertions read the fake's recorded calls, the replicated state (``loop.state()``) and what the
loop says (``loop.last``, ``loop.status()``), never a mock of the loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from hacluster.config import ClusterConfig, load_config
from hacluster.consensus.loop import ControlLoop, RequestRefused
from hacluster.consensus.model import (
    Action,
    CloseGate,
    Decision,
    ProposeAcquire,
    ProposeRelease,
    RecoverDisk,
    StepDown,
)
from hacluster.consensus.ports import LocalState
from hacluster.consensus.state import Acquire, Command
from hacluster.testing.harness import free_ports

NAME = "n1"
TOKEN = "loop-unit-token-0123456789"
PASSWORD = "loop-unit-raft-password-0123"
DISK_FULL = "IO error: No space left on device"
NO_WATCHDOG = "watchdog required but /dev/watchdog is not writable"
LEASE_LEFT = 0.4321          # what the fake says is left of its lease (status shows it)


# -- the fake node ---------------------------------------------------------------------------

@dataclass
class Pass:
    """What the loop asked of the node in one pass (and what became due since the last)."""

    calls: list[tuple[Any, ...]] = field(default_factory=list)
    decision: Decision | None = None

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


class FakeNode:
    """A ``NodePort`` whose condition the test sets and which records every call, in order.

    Its role follows the transitions the loop calls, as the real node's does: become_primary
    opens the gate (and a new epoch starts right after its latest seq), become_replica and
    close_gate shut it.
    """

    def __init__(self, name: str = NAME, seq: int | None = 7, *, has_database: bool = True,
                 lineage: list[tuple[int, int]] | None = None) -> None:
        self._name = name
        self.seq = seq
        self.has_database = has_database
        self.acked = 0
        self.disk_full: str | None = None
        self.space_low: str | None = None
        self.unfit: str | None = None
        self.fencing_failure: str | None = None    # tend_fencing returns it while writable
        self.recover_ok = True
        self.recover_block: asyncio.Event | None = None   # recover_disk waits for it
        self.lineage = list(lineage or [])          # (epoch, first seq it wrote), oldest first
        self.primary = False
        self.gate_open = False
        self.epoch = 0
        self.renewal_proposed_at: float | None = None
        self.control: ControlLoop | None = None     # attached: passes record its decision
        self.calls: list[tuple[Any, ...]] = []      # every transition, in order
        self.passes: list[Pass] = []
        self._current = Pass()
        self.queries = 0
        # Port calls made off the event loop's thread (Raft callbacks run on Raft's thread):
        # must stay empty. The node's state, its store above all, belongs to the loop.
        self.loop_thread = threading.get_ident()
        self.off_loop: list[str] = []

    def _on_loop(self, what: str) -> None:
        if threading.get_ident() != self.loop_thread:
            self.off_loop.append(f"{what} on thread {threading.current_thread().name}")

    def attach(self, loop: ControlLoop) -> None:
        self.control = loop

    def _call(self, *call: Any) -> None:
        self.calls.append(call)
        self._current.calls.append(call)

    # -- NodePort ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def is_primary(self) -> bool:
        self._on_loop("is_primary")
        return self.primary

    def local_state(self) -> LocalState:
        self._on_loop("local_state")
        self.queries += 1
        return LocalState(
            seq=self.seq, has_database=self.has_database, is_primary=self.primary,
            gate_open=self.primary and self.gate_open,
            renewal_proposed_at=self.renewal_proposed_at if self.primary else None,
            disk_full=self.disk_full, space_low=self.space_low, unfit=self.unfit,
            acked_seq=self.acked, replicas=())

    def latest_seq(self) -> int:
        self._on_loop("latest_seq")
        return self.seq or 0

    def lineage_label(self, seq: int) -> int:
        self._on_loop("lineage_label")
        if seq <= 0:
            return 0
        return max((e for e, start in self.lineage if start <= seq), default=0)

    def leader(self) -> str | None:
        self._on_loop("leader")
        return self._name if self.primary and self.gate_open else None

    def lease_left(self) -> float:
        self._on_loop("lease_left")
        return LEASE_LEFT if self.primary else 0.0

    def close_gate(self, reason: str) -> None:
        self._call("close_gate", reason)
        self.gate_open = False

    async def quiesce(self) -> None:
        pass

    def tend_fencing(self, paused: bool) -> str | None:
        failed = None
        if self.fencing_failure is not None and self.primary and self.gate_open:
            failed = self.fencing_failure
            self.gate_open = False          # as the real node: shut now, the loop releases
        self._call("tend_fencing", paused, failed)
        self._current.decision = self.control.last if self.control is not None else None
        self.passes.append(self._current)
        self._current = Pass()
        return failed

    async def become_primary(self, epoch: int, proposed_at: float) -> None:
        # What the replicated state said when the node was told: the commit came first.
        lock = self.control.state().lock if self.control is not None else None
        self._call("become_primary", epoch, proposed_at,
                   None if lock is None else (lock.holder, lock.epoch, lock.renewals))
        if epoch != self.epoch or not self.primary:
            if epoch != self.epoch:
                self.lineage.append((epoch, (self.seq or 0) + 1))
            self.epoch = epoch
            self.primary = True
        self.gate_open = True
        self.renewal_proposed_at = proposed_at

    async def become_replica(self, primary: str | None, epoch: int) -> None:
        self._call("become_replica", primary, epoch)
        self.gate_open = False
        self.primary = False
        self.epoch = epoch

    async def make_durable(self, seq: int) -> None:
        self._call("make_durable", seq)

    async def stop_following(self) -> int:
        self._call("stop_following")
        return self.seq or 0

    async def recover_disk(self) -> bool:
        self._call("recover_disk")
        if self.recover_block is not None:
            await self.recover_block.wait()
        if self.recover_ok:
            self.disk_full = None
        return self.recover_ok

    # -- reading the record ------------------------------------------------------------------

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == name]

    def index(self, call: tuple[Any, ...]) -> int:
        return self.calls.index(call)


# -- the cluster of one ----------------------------------------------------------------------

def write_config(root: Path, consensus: dict[str, Any] | None = None) -> ClusterConfig:
    api, raft = free_ports(2)
    doc = {
        "cluster": {"name": "unit", "token": TOKEN, "raft_password": PASSWORD},
        "tls": "off",
        # One node: no replica to be synchronous, so async mode (sync needs 2 nodes).
        "replication": {"mode": "async"},
        "consensus": {"lease_s": 0.6, "renew_interval_s": 0.1, "election_min_s": 0.15,
                      "election_max_s": 0.35, "raft_heartbeat_s": 0.04,
                      **(consensus or {})},
        "nodes": [{"name": NAME, "api": f"127.0.0.1:{api}", "data_dir": str(root / NAME),
                   "raft": f"127.0.0.1:{raft}"}],
    }
    path = root / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return load_config(path, env={})


class Harness:
    """Builds, starts and (at teardown) stops control loops over fake nodes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cfg = write_config(root)
        self.loops: list[ControlLoop] = []
        self.fakes: list[FakeNode] = []

    async def start(self, fake: FakeNode | None = None) -> tuple[ControlLoop, FakeNode]:
        fake = fake or FakeNode()
        loop = ControlLoop(fake, self.cfg)
        fake.attach(loop)
        loop.start()
        self.loops.append(loop)
        self.fakes.append(fake)
        await until(loop.raft.ready.is_set, "the Raft log to be replayed")
        return loop, fake

    async def stop(self, loop: ControlLoop) -> None:
        self.loops.remove(loop)
        await asyncio.wait_for(loop.stop(), 10)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    yield h
    for loop in list(h.loops):
        await h.stop(loop)
    # Every test: the loop never reached into its node from Raft's thread.
    for fake in h.fakes:
        assert not fake.off_loop, fake.off_loop[:5]


async def until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def passes(fake: FakeNode, n: int) -> list[Pass]:
    """The next ``n`` complete passes."""
    start = len(fake.passes)
    await until(lambda: len(fake.passes) >= start + n, f"{n} more passes")
    return fake.passes[start:start + n]


async def primary(loop: ControlLoop, fake: FakeNode, epoch: int = 1) -> None:
    """Wait until ``fake`` serves ``epoch``: the lock is in its name, the node was told."""
    await until(lambda: loop.state().lock.held and loop.state().lock.holder == fake.name
                and loop.state().lock.epoch == epoch and fake.primary and fake.epoch == epoch,
                f"{fake.name} to be primary of epoch {epoch}")


async def propose(loop: ControlLoop, cmd: Command, timeout: float = 5.0) -> bool:
    """Set the replicated state up: commit ``cmd`` as any member might have."""
    done = threading.Event()
    result: list[bool | None] = []

    def cb(ok: bool | None, proposed_at: float) -> None:
        result.append(ok)
        done.set()

    loop.raft.propose(cmd, cb)
    assert await asyncio.to_thread(done.wait, timeout), f"{cmd} not decided in {timeout} s"
    assert result[0] is not None, f"{cmd} was not committed"
    return result[0]


def since(fake: FakeNode, mark: int) -> list[tuple[Any, ...]]:
    return fake.calls[mark:]


def decisions(ps: list[Pass]) -> list[Decision]:
    return [p.decision for p in ps if p.decision is not None]


# -- promotion and renewal -------------------------------------------------------------------

async def test_a_fresh_node_reports_promotes_itself_in_epoch_1_and_renews(
        cluster: Harness) -> None:
    began = time.monotonic()
    loop, fake = await cluster.start(FakeNode(seq=7))
    await primary(loop, fake)
    state = loop.state()
    me = state.member(NAME)
    assert me is not None and me.applied_seq == 7 and me.healthy
    assert me.api_url == cluster.cfg.nodes[0].api.url
    [record] = state.history
    assert (record.epoch, record.primary, record.start_seq, record.reason) == (
        1, NAME, 8, "bootstrap")

    # The promoting pass: stop applying, then propose; the Acquire carries its reason.
    promoting = [p for p in fake.passes if p.decision and p.decision.action is Action.PROMOTE]
    assert len(promoting) == 1, "the Acquire was proposed again while its answer was due"
    d = promoting[0].decision
    assert d is not None and d.sentence == "n1: promoting, epoch 1 from seq 8; no primary yet"
    assert d.effects == (ProposeAcquire(1, "bootstrap", False,
                                        cluster.cfg.consensus.maximum_lag_on_failover),)
    assert len(fake.named("stop_following")) == 1
    # Told only after the commit: when become_primary ran, the lock was already its own.
    first = fake.named("become_primary")[0]
    assert first[1] == 1 and began <= first[2] <= time.monotonic()
    assert first[3] == (NAME, 1, 0)
    assert fake.index(fake.named("stop_following")[0]) < fake.index(first)
    # Before the promotion no pass told the node anything but to tend fencing, and none
    # elected anyone: not before a commit proved quorum and its report was in.
    for p in fake.passes[:fake.passes.index(promoting[0])]:
        assert p.decision is not None and p.decision.action is Action.WAIT
        assert p.decision.sentence in ("n1: no quorum, electing no one", "n1: no primary yet; "
                                       "not a candidate until my report is in the cluster "
                                       "state"), p.decision.sentence
    before = fake.calls[:fake.index(fake.named("stop_following")[0])]
    assert {c[0] for c in before} <= {"tend_fencing"}

    # Routine renewals: every pass renews, each commit tells the node again.
    renewals = loop.state().lock.renewals
    told = len(fake.named("become_primary"))
    await until(lambda: loop.state().lock.renewals >= renewals + 5, "five more renewals")
    await until(lambda: len(fake.named("become_primary")) >= told + 5, "five more tellings")
    calls = fake.named("become_primary")
    assert all(c[1] == 1 for c in calls)
    stamps = [c[2] for c in calls]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    # Each routine call came after its renewal committed (the counter had moved).
    assert all(c[3][2] >= 1 for c in calls[1:])
    assert loop.state().lock.epoch == 1 and len(loop.state().history) == 1
    assert len(fake.named("stop_following")) == 1
    assert fake.named("become_replica") == [] and fake.named("close_gate") == []
    assert loop.epoch_changes == {"bootstrap": 1}
    # The report follows the role.
    await until(lambda: (m := loop.state().member(NAME)) is not None and m.role == "primary",
                "a report as primary")


async def test_the_decision_is_said_in_one_sentence_in_last_and_in_status(
        cluster: Harness) -> None:
    loop, fake = await cluster.start()
    await primary(loop, fake)
    await until(lambda: loop.state().lock.renewals >= 1, "a renewal")
    [p] = await passes(fake, 1)
    assert p.decision is not None and p.decision.action is Action.RENEW
    assert p.decision.sentence.startswith("n1: primary, epoch 1; lease valid for ")
    last = loop.last
    assert last is not None and last.action is Action.RENEW and last.epoch == 1
    assert last.sentence.startswith("n1: primary, epoch 1; lease valid for ")
    status = loop.status()
    assert status["decision"] == loop.last.sentence
    assert status["lock"] == {"holder": NAME, "epoch": 1, "released": False,
                              "renewals": status["lock"]["renewals"]}
    assert status["lock"]["renewals"] >= 1
    assert status["lease_left_s"] == round(LEASE_LEFT, 3)
    assert status["paused"] is False and status["failover_request"] is None
    assert [m["name"] for m in status["members"]] == [NAME]
    assert status["history"][0]["reason"] == "bootstrap"
    assert loop.passes >= len(fake.passes) and loop.last_pass_at is not None


# -- giving the lock up ----------------------------------------------------------------------

async def test_disk_full_without_a_successor_closes_the_gate_and_releases_at_the_acked_floor(
        cluster: Harness) -> None:
    loop, fake = await cluster.start()
    await primary(loop, fake)
    await passes(fake, 2)
    assert loop.state().acked_seq == 0
    fake.seq, fake.acked = 50, 42
    fake.recover_ok = False
    fake.disk_full = DISK_FULL
    mark = len(fake.calls)
    first = len(fake.passes)
    await until(lambda: loop.state().lock.released, "the lock to be released")
    state = loop.state()
    assert (state.lock.holder, state.lock.epoch, state.lock.successor) == (NAME, 1, None)
    # The floor is what the node acknowledged, carried by the Release (renewals carried 0).
    assert (state.acked_seq, state.acked_epoch) == (42, 1)

    # The very next pass: gate shut, then release; no renewal, no handover.
    releasing = fake.passes[first]
    d = releasing.decision
    assert d is not None and d.action is Action.RELEASE
    assert d.sentence == f"n1: {DISK_FULL}; releasing the lock of epoch 1"
    assert d.effects[-1] == ProposeRelease(1, 42)
    assert d.effects == (CloseGate("disk full"), ProposeRelease(1, 42))
    assert ("close_gate", "disk full") in releasing.calls
    assert "stop_following" not in releasing.names()
    assert loop.status()["lock"]["released"] is True

    # Released, still primary by role: step down (no one to follow), then try the disk.
    await until(lambda: fake.named("recover_disk"), "a reopen of the store")
    later = since(fake, mark)
    down = ("become_replica", None, 1)
    assert down in later and later.index(down) < later.index(("recover_disk",))
    # Its store refuses writes: it does not take the lock back.
    await passes(fake, 5)
    assert loop.state().lock.epoch == 1 and loop.state().lock.released
    assert not fake.primary
    last = loop.last
    assert last is not None and "not a candidate (my store refuses writes" in last.sentence


async def test_a_disk_that_recovers_lets_the_releaser_take_a_new_epoch(cluster: Harness) -> None:
    loop, fake = await cluster.start()
    await primary(loop, fake)
    fake.seq, fake.acked = 50, 42
    fake.recover_ok = False
    fake.disk_full = DISK_FULL
    await until(lambda: loop.state().lock.released, "the lock to be released")
    await passes(fake, 3)
    fake.recover_ok = True
    await primary(loop, fake, epoch=2)
    await passes(fake, 1)
    record = loop.state().history[-1]
    assert (record.epoch, record.primary, record.start_seq, record.reason) == (
        2, NAME, 51, "failover")
    assert loop.epoch_changes == {"bootstrap": 1, "failover": 1}


async def test_a_fencing_failure_releases_the_lock_on_the_next_pass(cluster: Harness) -> None:
    loop, fake = await cluster.start()
    await primary(loop, fake)
    await passes(fake, 2)
    fake.acked = 3
    fake.fencing_failure = NO_WATCHDOG
    await until(lambda: loop.state().lock.released, "the lock to be released")
    fake.fencing_failure = None
    failed_at = next(i for i, p in enumerate(fake.passes)
                     if ("tend_fencing", False, NO_WATCHDOG) in p.calls)
    releasing = fake.passes[failed_at + 1]
    d = releasing.decision
    assert d is not None and d.action is Action.RELEASE
    assert d.sentence == f"n1: {NO_WATCHDOG}; releasing the lock of epoch 1"
    assert ("close_gate", NO_WATCHDOG) in releasing.calls
    state = loop.state()
    assert (state.lock.holder, state.lock.epoch, state.lock.released) == (NAME, 1, True)
    assert state.acked_seq == 3
    # Only one release pass: the failure is for epoch 1, which it no longer holds.
    released = [p for p in fake.passes if p.decision and p.decision.action is Action.RELEASE]
    assert len(released) == 1


async def test_no_renewal_tells_the_node_to_serve_after_its_fencing_failed(
        cluster: Harness) -> None:
    loop, fake = await cluster.start()
    await primary(loop, fake)
    await passes(fake, 2)
    fake.fencing_failure = NO_WATCHDOG
    await until(lambda: loop.state().lock.released, "the lock to be released")
    fake.fencing_failure = None
    failed = fake.index(("tend_fencing", False, NO_WATCHDOG))
    closed = fake.index(("close_gate", NO_WATCHDOG))
    assert [c for c in fake.calls[failed:closed] if c[0] == "become_primary"] == []


async def test_a_fencing_failure_reported_by_the_node_itself_releases_the_lock(
        cluster: Harness) -> None:
    # The real node reports it from become_primary when the watchdog will not arm.
    loop, fake = await cluster.start()
    await primary(loop, fake)
    loop.fencing_failed(1, NO_WATCHDOG)
    fake.close_gate(NO_WATCHDOG)
    await until(lambda: loop.state().lock.released, "the lock to be released")
    d = next(p.decision for p in fake.passes
             if p.decision and p.decision.action is Action.RELEASE)
    assert d.sentence == f"n1: {NO_WATCHDOG}; releasing the lock of epoch 1"


async def test_a_fencing_failure_for_an_older_epoch_changes_nothing(cluster: Harness) -> None:
    loop, fake = await cluster.start()
    await primary(loop, fake)
    loop.fencing_failed(0, NO_WATCHDOG)
    ps = await passes(fake, 5)
    assert all(d.action is Action.RENEW for d in decisions(ps))
    assert not loop.state().lock.released


# -- not a candidate -------------------------------------------------------------------------

async def test_an_unfit_node_does_not_promote_itself_and_says_why(cluster: Harness) -> None:
    fake = FakeNode()
    fake.unfit = "replication diverged"
    loop, fake = await cluster.start(fake)
    await until(lambda: loop.state().member(NAME) is not None, "its report")
    ps = await passes(fake, 8)
    me = loop.state().member(NAME)
    assert me is not None and not me.healthy
    assert loop.state().lock.holder is None and loop.state().history == ()
    assert {c[0] for c in fake.calls} == {"tend_fencing"}
    last = loop.last
    assert last is not None and last.action is Action.WAIT
    assert last.sentence == "n1: no primary yet; not a candidate (replication diverged)"
    assert loop.status()["decision"] == last.sentence
    assert all(d.effects == () for d in decisions(ps))
    # Fit again: it promotes itself.
    fake.unfit = None
    await primary(loop, fake)


# -- RecoverDisk ------------------------------------------------------------------------------

async def test_a_store_that_refuses_writes_is_reopened_before_anything_else(
        cluster: Harness) -> None:
    fake = FakeNode()
    fake.disk_full = DISK_FULL
    fake.recover_ok = False
    loop, fake = await cluster.start(fake)
    await until(lambda: loop.state().member(NAME) is not None, "its report")
    # Someone else holds the lock, for longer than the test: this node should follow it.
    assert await propose(loop, Acquire("ghost", 0, 0, 1, 60.0, "bootstrap", time.time()))
    ps = await passes(fake, 6)
    following = [p for p in ps if p.decision and p.decision.action is Action.FOLLOW]
    assert following, [p.decision for p in ps]
    for p in following:
        d = p.decision
        assert d is not None and d.effects[0] == RecoverDisk()
        assert len(d.effects) == 2, d.effects
        # It failed: nothing after it in the list happened in that pass.
        assert p.names() == ["recover_disk", "tend_fencing"], p.calls
    assert fake.named("become_replica") == []
    me = loop.state().member(NAME)
    assert me is not None and not me.healthy
    assert loop.state().lock.holder == "ghost"

    # The disk has room again: reopened first, then it follows.
    fake.recover_ok = True
    await until(lambda: fake.named("become_replica"), "it to follow")
    p = next(p for p in fake.passes if ("become_replica", "ghost", 1) in p.calls)
    assert p.names()[:2] == ["recover_disk", "become_replica"]
    assert fake.disk_full is None
    # Nothing refuses writes now: no more reopen attempts.
    count = len(fake.named("recover_disk"))
    await passes(fake, 3)
    assert len(fake.named("recover_disk")) == count
    assert not fake.primary and loop.state().lock.holder == "ghost"


async def test_a_primary_that_lost_the_lock_steps_down_before_reopening_its_store(
        cluster: Harness) -> None:
    # A node that is primary by role though the lock is another's (a lapsed lease).
    fake = FakeNode()
    fake.unfit = "not yet"
    loop, fake = await cluster.start(fake)
    await until(lambda: loop.state().member(NAME) is not None, "its report")
    assert await propose(loop, Acquire("ghost", 0, 0, 1, 60.0, "bootstrap", time.time()))
    await passes(fake, 2)
    mark = len(fake.calls)
    fake.primary, fake.gate_open = True, True
    fake.disk_full, fake.recover_ok = DISK_FULL, False
    await until(lambda: fake.named("recover_disk"), "a reopen")
    later = since(fake, mark)
    # With a broken store it follows no one: it only stops writing, then tries the disk.
    assert later[:3] == [("become_replica", None, 1), ("recover_disk",),
                         ("tend_fencing", False, None)]
    d = next(p.decision for p in fake.passes if ("recover_disk",) in p.calls)
    assert d is not None and d.effects[:2] == (StepDown(None, 1), RecoverDisk())
    assert not fake.primary


# -- operators' requests ---------------------------------------------------------------------

async def test_a_switchover_with_no_other_member_is_refused_and_changes_nothing(
        cluster: Harness) -> None:
    loop, fake = await cluster.start()
    await primary(loop, fake)
    with pytest.raises(RequestRefused, match="no healthy replica qualifies as successor"):
        await loop.switchover(None, timeout=0.3)
    with pytest.raises(RequestRefused, match="no healthy replica named n1 qualifies"):
        await loop.switchover(NAME, timeout=0.2)
    with pytest.raises(RequestRefused, match="'n9' is not a member of this cluster"):
        await loop.switchover("n9", timeout=0.2)
    # The gate was never shut, and the lock is still served.
    assert fake.named("close_gate") == [] and not loop.switching
    renewals = loop.state().lock.renewals
    await until(lambda: loop.state().lock.renewals > renewals, "another renewal")
    assert fake.primary and fake.gate_open and not loop.state().lock.released


async def test_a_switchover_from_a_node_that_is_not_primary_is_refused(cluster: Harness) -> None:
    fake = FakeNode()
    fake.unfit = "replication diverged"
    loop, fake = await cluster.start(fake)
    await until(lambda: loop.state().member(NAME) is not None, "its report")
    with pytest.raises(RequestRefused, match="n1 is not the primary"):
        await loop.switchover(None, timeout=0.2)


async def test_failover_requests_are_refused_while_a_primary_serves_or_for_strangers(
        cluster: Harness) -> None:
    fake = FakeNode()
    fake.unfit = "replication diverged"
    loop, fake = await cluster.start(fake)
    await until(lambda: loop.state().member(NAME) is not None, "its report")
    with pytest.raises(RequestRefused, match="'nobody' is not a node of this cluster"):
        await loop.request_failover("nobody", force=False)
    with pytest.raises(RequestRefused, match=r"n1 is unhealthy; --force to promote it anyway"):
        await loop.request_failover(NAME, force=False)
    assert loop.state().failover is None
    fake.unfit = None
    await primary(loop, fake)
    with pytest.raises(RequestRefused, match=r"n1 is a healthy primary \(epoch 1\); use a "
                       "switchover"):
        await loop.request_failover(NAME, force=True)
    assert loop.state().failover is None


async def test_a_forced_manual_failover_waits_for_the_candidate_to_be_fit(
        cluster: Harness) -> None:
    fake = FakeNode()
    fake.unfit = "replication diverged"
    loop, fake = await cluster.start(fake)
    await until(lambda: loop.state().member(NAME) is not None, "its report")
    assert await loop.request_failover(NAME, force=True) == 0
    request = loop.state().failover_request
    assert request is not None and (request.candidate, request.force) == (NAME, True)
    assert loop.status()["failover_request"] == {"to": NAME, "force": True, "epoch": 0}
    await passes(fake, 3)
    last = loop.last
    assert last is not None and last.sentence == (
        "n1: no primary yet; manual failover to me refused: replication diverged")
    assert fake.named("stop_following") == []
    fake.unfit = None
    await primary(loop, fake)
    record = loop.state().history[-1]
    assert (record.epoch, record.reason) == (1, "manual failover")
    promote = next(p.decision for p in fake.passes
                   if p.decision and p.decision.action is Action.PROMOTE)
    assert promote.sentence == ("n1: promoting, epoch 1 from seq 8; no primary yet; manual "
                                "failover (forced)")
    assert promote.effects[0] == ProposeAcquire(1, "manual failover", True,
                                                cluster.cfg.consensus.maximum_lag_on_failover)
    assert loop.state().failover_request is None


async def test_pause_holds_back_the_first_election_and_unpause_lets_it_happen(
        cluster: Harness) -> None:
    fake = FakeNode()
    fake.unfit = "not yet"          # keeps it from promoting before the pause commits
    loop, fake = await cluster.start(fake)
    await until(lambda: loop.state().member(NAME) is not None, "its report")
    assert await loop.set_paused(True) is True
    assert loop.state().paused and loop.status()["paused"] is True
    fake.unfit = None
    ps = await passes(fake, 8)
    assert loop.state().lock.holder is None
    assert fake.named("stop_following") == []
    last = loop.last
    assert last is not None and last.sentence == (
        "PAUSE: n1: no primary yet; no automatic failover in maintenance mode")
    assert all(c[1] is True for p in ps for c in p.calls if c[0] == "tend_fencing")
    assert await loop.set_paused(False) is True
    assert not loop.state().paused
    await primary(loop, fake)


async def test_a_paused_primary_keeps_renewing_and_its_fencing_is_told_so(
        cluster: Harness) -> None:
    loop, fake = await cluster.start()
    await primary(loop, fake)
    assert await loop.set_paused(True) is True
    assert loop.state().paused
    await passes(fake, 1)
    renewals = loop.state().lock.renewals
    told = len(fake.named("become_primary"))
    ps = await passes(fake, 5)
    assert loop.state().lock.renewals > renewals
    assert len(fake.named("become_primary")) > told
    for p in ps:
        d = p.decision
        assert d is not None and d.action is Action.RENEW
        assert d.sentence.startswith("PAUSE: n1: primary, epoch 1; lease valid for ")
        assert [c for c in p.calls if c[0] == "tend_fencing"] == [("tend_fencing", True, None)]
    # Paused, a disk failure still gives the lock up (pause holds back failovers, not this).
    fake.disk_full, fake.recover_ok = DISK_FULL, False
    await until(lambda: loop.state().lock.released, "the lock to be released")
    await passes(fake, 3)
    assert loop.last is not None and loop.last.sentence.startswith("PAUSE: n1: ")
    assert loop.state().lock.epoch == 1


async def test_membership_requests_that_make_no_sense_are_refused(cluster: Harness) -> None:
    loop, fake = await cluster.start()
    await primary(loop, fake)
    own = str(cluster.cfg.nodes[0].raft)
    with pytest.raises(RequestRefused, match="n1 is already a member"):
        await loop.add_member(NAME, "127.0.0.1:1")
    with pytest.raises(RequestRefused, match=f"{own} is already a Raft member"):
        await loop.add_member("n2", own)
    with pytest.raises(RequestRefused, match="n1 is the primary; switch over first"):
        await loop.remove_member(NAME, own)
    with pytest.raises(RequestRefused, match="a node cannot remove itself"):
        await loop.remove_member("n2", own)
    with pytest.raises(RequestRefused, match=r"127\.0\.0\.1:1 is not a Raft member"):
        await loop.remove_member("n2", "127.0.0.1:1")
    assert loop.raft_members() == [own]
    assert [m.name for m in loop.state().members] == [NAME]


# -- restart and stop ------------------------------------------------------------------------

async def test_a_restarted_holder_takes_a_new_epoch_never_its_old_one(cluster: Harness) -> None:
    loop, fake = await cluster.start(FakeNode(seq=7))
    await primary(loop, fake)
    await passes(fake, 2)
    await cluster.stop(loop)
    assert loop.state().lock.holder == NAME

    # Same data dir: the Raft journal says the lock of epoch 1 is in n1's name.
    again = FakeNode(seq=7, lineage=[(1, 8)])
    loop2, again = await cluster.start(again)
    await primary(loop2, again, epoch=2)
    assert all(c[1] == 2 for c in again.named("become_primary"))
    record = loop2.state().history[-1]
    assert (record.epoch, record.start_seq, record.reason) == (2, 8, "restart")
    promote = next(p.decision for p in again.passes
                   if p.decision and p.decision.action is Action.PROMOTE)
    assert promote.sentence == ("n1: promoting, epoch 2 from seq 8; n1 holds the lock of "
                                "epoch 1 from before a restart: a new epoch, never its old one")


async def test_stop_ends_the_passes_and_raft(cluster: Harness) -> None:
    loop, fake = await cluster.start()
    await primary(loop, fake)
    await cluster.stop(loop)
    count, calls = loop.passes, len(fake.calls)
    await asyncio.sleep(0.4)
    assert loop.passes == count and len(fake.calls) == calls
    assert loop._task is not None and loop._task.done()
    tick = loop.raft_tick_at()
    await asyncio.sleep(0.2)
    assert loop.raft_tick_at() == tick


async def test_stop_cancels_a_pass_stuck_in_a_node_transition(cluster: Harness) -> None:
    fake = FakeNode()
    fake.disk_full = DISK_FULL
    fake.recover_block = asyncio.Event()      # never set: the reopen hangs
    loop, fake = await cluster.start(fake)
    await until(lambda: fake.named("recover_disk"), "the reopen to start")
    passes_then = loop.passes
    await cluster.stop(loop)
    assert loop.passes == passes_then
    assert fake.passes == []


# -- keep the helpers honest -----------------------------------------------------------------

def test_the_fake_implements_the_port() -> None:
    from hacluster.consensus.ports import NodePort

    def takes(port: NodePort) -> str:
        return port.name

    assert takes(FakeNode()) == NAME
    fake = FakeNode(seq=9, lineage=[(1, 3), (4, 8)])
    assert [fake.lineage_label(s) for s in (0, 2, 3, 7, 8, 9)] == [0, 0, 1, 1, 4, 4]


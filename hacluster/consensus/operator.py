"""Operators' requests to the consensus layer: switchover, failover, membership, pause, and
the dynamic configuration (changed here, and taken on by every node's loop).

Owns ``OperatorRequests``, the part of the control loop an operator (through the admin API or
the CLI) calls: each request is checked against the same eligibility rule the loop elects by
(``eligibility``), recorded in Raft, and awaited; a refusal raises ``RequestRefused`` with the
reason and changes nothing, an outcome Raft did not decide in time raises ``NotCommitted``.
Like Patroni's API it records intent and lets the loop act — except a switchover, which the
primary itself carries out (shut the gate, wait for the successor, release naming it). It must
never promote anyone itself, nor let a refused request leave the gate shut, nor record a
dynamic change that does not validate against this node's file (``dynamic.effective``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

from hacluster.config import ClusterConfig, ConfigError
from hacluster.config.dynamic import check_key, check_value, effective, merge, values
from hacluster.consensus import settings
from hacluster.consensus.eligibility import failover_refusal, successors
from hacluster.consensus.errors import NotCommitted, RequestRefused, SettingsInvalid
from hacluster.consensus.model import Policy
from hacluster.consensus.ports import NodePort
from hacluster.consensus.raft import RaftNode
from hacluster.consensus.reports import ReportTracker
from hacluster.consensus.state import (
    ClusterState,
    Command,
    Forget,
    Release,
    SetFailover,
    SetPaused,
    SetSettings,
)

log = logging.getLogger("hacluster.consensus.loop")


class OperatorRequests:
    """Mixed into ``ControlLoop``; these are the attributes it provides."""

    node: NodePort
    cfg: ClusterConfig
    raft: RaftNode
    policy: Policy
    reports: ReportTracker
    switching: bool
    _loop: asyncio.AbstractEventLoop | None
    timing: Any
    quorum_window: float
    file_cfg: ClusterConfig          # the file's config: what the Raft overrides lie over
    settings_version = 0             # the dynamic configuration's version in effect here
    settings_error: str | None = None   # why the latest version is not in effect here

    async def switchover(self, target: str | None, timeout: float = 5.0) -> str:
        """Hand the primary role over with no acknowledged write lost; returns the successor.

        Stops acknowledging writes, waits until the successor has applied everything this
        primary wrote, then releases the lock naming it. Raises RequestRefused (and reopens
        the gate) if no successor qualifies or it does not catch up within ``timeout``.
        """
        node = self.node
        state = self.raft.snapshot()
        lock = state.lock
        if not (node.is_primary and lock.held and lock.holder == node.name):
            raise RequestRefused(f"{node.name} is not the primary")
        # A configured node that has not reported yet (just started, or an election just
        # happened) is waited for like an unnamed successor; only a name nobody knows is
        # refused at once.
        if (target is not None and state.member(target) is None
                and all(n.name != target for n in self.cfg.nodes)):
            raise RequestRefused(f"{target!r} is not a member of this cluster")
        deadline = time.monotonic() + timeout
        while not (choices := self._successors(target)):
            # Just after an election or a start, reports may not have been seen yet: give
            # them a moment.
            if time.monotonic() > deadline:
                raise RequestRefused(f"no healthy replica "
                                      f"{'named ' + target + ' ' if target else ''}"
                                      "qualifies as successor")
            await asyncio.sleep(0.05)
        successor = choices[0]
        self.switching = True
        node.close_gate(f"switchover to {successor}")
        await node.quiesce()        # managed mode: the service stops writing first
        last = node.latest_seq()
        deadline = time.monotonic() + timeout
        while True:
            # Wait for the successor's own report in Raft: that is what every node's election
            # reads, so it must already show the successor holding every acknowledged write.
            report = self.raft.snapshot().member(successor)
            if report is not None and report.role == "replica" and report.applied_seq >= last:
                break
            if time.monotonic() > deadline:
                self.switching = False     # the next effective renewal reopens the gate
                raise RequestRefused(f"{successor} did not reach seq {last} within "
                                      f"{timeout} s; still primary")
            await asyncio.sleep(0.01)
        # What this primary acknowledged is final now (the gate is shut): the floor (rule 2).
        ok = await self._propose_and_wait(
            Release(node.name, lock.epoch, successor, node.local_state().acked_seq), timeout)
        if not ok:
            self.switching = False
            raise RequestRefused("the release could not be committed; still primary")
        log.info("%s: switchover: handed over to %s at seq %d (epoch %d)", node.name,
                 successor, last, lock.epoch)
        # The Raft leadership follows, so restarting this node next (a rolling upgrade) costs
        # no Raft election under the new primary's lease.
        raft_address = next((n.raft for n in self.cfg.nodes if n.name == successor), None)
        if raft_address is not None:
            self.raft.transfer_leadership(str(raft_address))
        await node.become_replica(None, lock.epoch)
        self.switching = False
        return successor

    def _successors(self, target: str | None) -> list[str]:
        """Who may take over in a switchover, best first (``eligibility.successors``)."""
        return successors(self.raft.snapshot(), self.node.name, self.policy,
                          self.reports.seen, time.monotonic(), target)

    async def _raft_result(self, start: Any, timeout: float) -> bool | None:
        """Call ``start(settle)``; wait for the Raft thread to call ``settle(ok)``.

        None when nothing came within ``timeout``.
        """
        assert self._loop is not None
        loop = self._loop
        result: asyncio.Future[bool | None] = loop.create_future()

        def settle(ok: bool | None) -> None:
            if not result.done():
                result.set_result(ok)

        start(lambda ok: loop.call_soon_threadsafe(settle, ok))
        try:
            async with asyncio.timeout(timeout):
                return await result
        except TimeoutError:
            return None

    async def _propose_and_wait(self, cmd: Command, timeout: float) -> bool | None:
        return await self._raft_result(
            lambda settle: self.raft.propose(cmd, lambda ok, proposed_at: settle(ok)), timeout)

    async def request_failover(self, candidate: str, force: bool,
                               timeout: float = 5.0) -> int:
        """Record an operator's failover to ``candidate``; returns the epoch it applies to.

        Raises RequestRefused when a primary is serving (use a switchover), when the
        candidate would lose acknowledged writes and ``force`` is not given, or when Raft does
        not commit the request.
        """
        state = self.raft.snapshot()
        leader = self.node.leader()
        if leader is not None:
            raise RequestRefused(f"{leader} is a healthy primary (epoch {state.lock.epoch}); "
                                  "use a switchover")
        if candidate not in {n.name for n in self.cfg.nodes} | {
                m.name for m in state.members}:
            raise RequestRefused(f"{candidate!r} is not a node of this cluster")
        refusal = failover_refusal(state, candidate, force, self.policy,
                                   dict(self.reports.seen), time.monotonic())
        if refusal is not None:
            forceable = not force and failover_refusal(
                state, candidate, True, self.policy, dict(self.reports.seen),
                time.monotonic()) is None
            raise RequestRefused(refusal + ("; --force to promote it anyway" if forceable
                                             else ""))
        ok = await self._propose_and_wait(SetFailover(candidate, state.lock.epoch, force),
                                          timeout)
        if not ok:
            raise RequestRefused("the failover request was not committed (no quorum, or the "
                                  "epoch changed meanwhile)")
        log.warning("%s: manual failover to %s requested%s (epoch %d)", self.node.name,
                    candidate, " with --force" if force else "", state.lock.epoch)
        return state.lock.epoch

    async def _membership(self, action: str, address: str, timeout: float) -> bool:
        return bool(await self._raft_result(
            lambda settle: self.raft.change_membership(action, address, settle), timeout))

    async def add_member(self, name: str, raft_address: str, timeout: float = 10.0) -> None:
        """Make ``raft_address`` a Raft member, before the new node ``name`` starts."""
        state = self.raft.snapshot()
        if state.member(name) is not None:
            raise RequestRefused(f"{name} is already a member")
        if raft_address in self.raft.raft_members():
            raise RequestRefused(f"{raft_address} is already a Raft member")
        if not await self._membership("add", raft_address, timeout):
            raise NotCommitted(f"adding {name} ({raft_address}) was not committed in time")
        log.warning("%s: member added: %s (raft %s); start it now", self.node.name, name,
                    raft_address)

    async def remove_member(self, name: str, raft_address: str,
                            timeout: float = 10.0) -> None:
        """Take ``name`` out of the Raft membership and forget its reports. Never the primary."""
        state = self.raft.snapshot()
        if state.lock.held and state.lock.holder == name:
            raise RequestRefused(f"{name} is the primary; switch over first")
        if raft_address == self.raft.self_address:
            raise RequestRefused(f"ask another node to remove {name}: a node cannot remove "
                                  "itself")
        if raft_address not in self.raft.raft_members():
            raise RequestRefused(f"{raft_address} is not a Raft member")
        if not await self._membership("remove", raft_address, timeout):
            raise NotCommitted(f"removing {name} ({raft_address}) was not committed in time")
        if state.member(name) is not None and not await self._propose_and_wait(Forget(name),
                                                                                timeout):
            log.warning("%s: %s left Raft but its member record was not dropped",
                        self.node.name, name)
        log.warning("%s: member removed: %s (raft %s)", self.node.name, name, raft_address)

    async def set_paused(self, paused: bool, timeout: float = 5.0) -> bool | None:
        """Record the maintenance flag in Raft; None if it could not be committed in time."""
        return await self._propose_and_wait(SetPaused(paused), timeout)

    async def set_settings(self, changes: Iterable[tuple[str, Any]], by: str,
                           expected_version: int | None = None, timeout: float = 5.0) -> int:
        """Validate and record a change of the dynamic configuration; its new version.

        ``changes``: (key, value) pairs, None to go back to the file's value. Refused
        (RequestRefused, naming the key and the reason) when a key is not dynamic, the result
        does not validate as a file would, the change is unsafe, or the configuration moved
        past ``expected_version`` meanwhile (an edit made from a stale read).
        """
        state = self.raft.snapshot()
        if expected_version is not None and expected_version != state.settings_version:
            raise RequestRefused(f"the dynamic configuration is at version "
                                 f"{state.settings_version}, not {expected_version}: it "
                                 "changed meanwhile; read it again")
        try:
            pairs = tuple((check_key(k), check_value(k, v)) for k, v in changes)
            if not pairs:
                raise SettingsInvalid("no change given")
            new = effective(self.file_cfg, dict(merge(state.settings, pairs)))
        except ConfigError as exc:
            raise SettingsInvalid(str(exc)) from None
        unsafe = settings.unsafe_change(self.cfg, new)
        if unsafe is not None:
            raise RequestRefused(unsafe)
        try:
            cmd = SetSettings(state.settings_version, pairs, by, time.time())
        except ValueError as exc:
            raise SettingsInvalid(str(exc)) from None
        ok = await self._propose_and_wait(cmd, timeout)
        if ok is None:
            raise NotCommitted("the configuration change was not committed in time (no quorum?)")
        if not ok:
            raise RequestRefused("the dynamic configuration changed meanwhile; read it again")
        log.warning("%s: dynamic configuration version %d recorded (by %s): %s", self.node.name,
                    state.settings_version + 1, by,
                    ", ".join(f"{k}={'(file)' if v is None else v}" for k, v in pairs))
        self._take_settings(self.raft.snapshot())
        return state.settings_version + 1

    def _take_settings(self, state: ClusterState) -> None:
        """Put the replicated dynamic configuration in effect here, once per version: the
        file's config with the overrides, validated again against this node's file."""
        version = state.settings_version
        if version == self.settings_version:
            return
        self.settings_version = version
        try:
            new = effective(self.file_cfg, dict(state.settings))
        except ConfigError as exc:
            self.settings_error = f"version {version} is not in effect here: {exc}"
            log.error("%s: dynamic configuration %s; keeping the settings in effect",
                      self.node.name, self.settings_error)
            return
        self.settings_error = None
        before, file_values = values(self.cfg), values(self.file_cfg)
        self.node.apply_settings(new)
        self.cfg = new
        self.policy = settings.policy(new)
        self.timing = self.policy.timing
        self.quorum_window = settings.quorum_window(new)
        diff = [f"{k}={v}" + (f" (the file says {file_values[k]})" if file_values.get(k) != v
                              else "") for k, v in values(new).items() if before.get(k) != v]
        log.warning("%s: dynamic configuration version %d in effect%s", self.node.name, version,
                    (": " + ", ".join(diff)) if diff else " (no change here)")

    def settings_status(self) -> dict[str, Any]:
        """The dynamic configuration as this node has it, for /status and the CLI."""
        state = self.raft.snapshot()
        overrides = dict(state.settings)
        return {"version": state.settings_version, "in_effect": self.settings_version,
                "error": self.settings_error, "overrides": overrides,
                "values": values(self.cfg), "file": values(self.file_cfg)}


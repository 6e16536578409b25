"""Faults drawn from the seed: crashes, power loss, partitions, one-way loss, full disks,
switchovers, and (``Config.lease_changes``) dynamic changes of the lease that reach each node
at its own time — and an aftershock that often strikes a new primary early.

Owns the fault schedule: every few simulated seconds (``Config.fault_every_s``) one fault,
aimed at the primary more often than not, undone after a while; a power loss drops every
unsynced entry of the node (or of all nodes at once: the consensus log survives, rule 4), a
restart starts a fresh process on the same store and Raft state, a full disk makes the store
refuse writes until it has room again (the core decides whether to hand over or release), and a
switchover is an operator's. It must never let a fault depend on anything but the seed and the
world's state, and never undo a fault by reaching into the core's decisions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from hacluster.consensus.model import Policy
from hacluster.testing.sim.core import SimNode
from hacluster.testing.sim.data import Data

KINDS = ("crash", "power", "partition", "partition", "mute", "disk", "disk", "switchover",
         "watchdog", "power_all")


class Faults(Data):
    def init_faults(self) -> None:
        self.faulting = self.cfg.faults
        if self.faulting:
            self.after(self.cfg.fault_every_s, self._fault)

    def primary(self) -> SimNode | None:
        live = [n for n in self.nodes if n.up and n.primary_epoch is not None]
        return max(live, key=lambda n: n.primary_epoch or 0) if live else None

    def _fault(self) -> None:
        if not self.faulting:
            return
        self.after(self.cfg.fault_every_s, self._fault)
        rng = self.rng
        primary = self.primary()
        victim = (primary if primary is not None and rng.random() < 0.6
                  else rng.choice(self.nodes))
        kind = rng.choice(KINDS)
        if self.cfg.lease_changes and rng.random() < 0.3:
            kind = "lease"
        back = rng.uniform(0.3, 4.0)
        if kind == "partition" or kind == "mute":
            if self.cut or self.muted:
                return
            if kind == "mute":
                self.muted = frozenset([victim.name])
                self.say(f"fault: {victim.name}'s messages are lost (one way)")
            else:
                size = 1 if len(self.nodes) == 3 or rng.random() < 0.5 else 2
                others = [n.name for n in self.nodes if n is not victim]
                self.cut = frozenset([victim.name, *rng.sample(others, size - 1)])
                self.say(f"fault: partition {sorted(self.cut)} from the rest")
            self.after(back, self.heal)
            return
        self.strike(victim, kind, back)

    def change_lease(self) -> None:
        """An operator's ``hacluster config set consensus.lease_s``: committed now (a node
        started from now on has it), taken on by each running node within its own delay."""
        t = self.policy.timing
        lease = t.renew_interval_s * self.rng.choice([3, 4, 6, 10, 20])
        new = dataclasses.replace(self.policy, timing=dataclasses.replace(t, lease_s=lease))
        for n in self.nodes:
            n.policy = self.pol(n)              # each keeps what it has until it applies
        self.policy = new
        self.say(f"fault: dynamic configuration: consensus.lease_s {t.lease_s:.2f} -> "
                 f"{lease:.2f} s")
        for n in self.nodes:
            self.after((0.0, 2.0), self._taker(n, new), n)

    def _taker(self, n: SimNode, new: Policy) -> Callable[[], None]:
        def take() -> None:
            if self.policy is new:              # not overtaken by a later change
                n.policy = new
        return take

    def strike(self, victim: SimNode, kind: str, back: float) -> None:
        if kind == "lease":
            self.change_lease()
            return
        if kind == "switchover":
            if victim.primary_epoch is not None and not victim.switching:
                self.say(f"fault: operator switchover from {victim.name}")
                victim.switching = True
                self.switchover(victim, None)
            return
        if kind == "watchdog":
            victim.watchdog_until = self.now + back
            self.say(f"fault: {victim.name}'s watchdog cannot be armed for {back:.1f} s")
            return
        if kind == "disk":
            if victim.up and victim.disk_full is None:
                victim.disk_full = "disk full"
                victim.room_at = self.now + back
                self.say(f"fault: {victim.name}'s disk is full for {back:.1f} s")
            return
        if kind == "power_all":
            downs = [n for n in self.nodes if n.up]
            for n in downs:
                self.kill(n, power=True)
            for n in downs:
                self.after(self.rng.uniform(0.3, back), self._restarter(n.name))
            return
        if not victim.up:
            return
        self.kill(victim, power=kind == "power")
        self.after(back, lambda: self.restart(victim.name))

    def _restarter(self, name: str) -> Callable[[], None]:
        return lambda: self.restart(name)

    def on_acquired(self, name: str) -> None:
        """Often strike a new primary early: the windows where its epoch holds few writes (a
        full disk, a crash, a power loss then) are where lineage mistakes show."""
        if not self.faulting or self.rng.random() < 0.5:
            return
        kind = self.rng.choice(["disk", "crash", "power", "watchdog"])
        back = self.rng.uniform(0.3, 3.0)
        if kind == "watchdog":
            self.strike(self.by_name[name], kind, back)    # before its gate first opens
            return
        self.after((0.05, 1.5), lambda: self.strike(self.by_name[name], kind, back))

    def heal(self) -> None:
        if self.cut or self.muted:
            self.say("fault: network healed")
        self.cut = self.muted = frozenset()
        self.deliver()

    def kill(self, n: SimNode, power: bool) -> None:
        n.up = False
        self.links_changed()
        n.incarnation += 1
        for p in n.waiting:
            self.finish(p, n, 0, "RemoteDisconnected: connection lost")
        n.waiting = []
        if power:
            lost = len(n.entries) - n.synced
            del n.entries[n.synced:]
            self.say(f"fault: power loss of {n.name} (seq {n.seq} kept, {lost} unsynced lost)")
        else:
            self.say(f"fault: crash of {n.name} at seq {n.seq}")

    def restart(self, name: str) -> None:
        n = self.by_name[name]
        if n.up:
            return
        fresh = SimNode(n.name, n.rate, n.offset, n.entries, n.synced, n.log_index,
                        incarnation=n.incarnation, disk_full=n.disk_full, room_at=n.room_at,
                        watchdog_until=n.watchdog_until)
        fresh.started_at = self.local(n)
        lock = self.states[n.log_index].lock
        fresh.lock_key = (lock.epoch, lock.renewals)
        self.nodes[self.nodes.index(n)] = fresh
        self.by_name[n.name] = fresh
        self.links_changed()
        self.say(f"fault: {n.name} restarted at seq {fresh.seq}")
        self.deliver()
        self.schedule_pass(fresh, first=True)

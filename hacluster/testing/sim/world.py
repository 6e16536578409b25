"""A deterministic simulated cluster that runs the real pure core under one seed.

Owns the run and the verdict: start every node's control loop and the writers, let faults fall
for ``Config.seconds`` of simulated time, then heal everything, restart every node, stop the
writers, let the cluster settle, and judge — ``history.check_all`` over every client's ops
against the final primary's keys, every replica identical to it, and no moment where two nodes
had their write gates open in different epochs while one lease still held. A run that ends
with no primary is reported as stuck (liveness), not as a safety violation. The world is built
in layers (``core``: time, links, consensus log; ``control``: each node's pass of ``decide``
and its effects; ``data``: writes, replication, acks; ``faults``), each a mixin of ``World``.
It must never reimplement a decision, read a real clock, use unseeded randomness, or touch the
disk or the network: the same seed gives the same trace.
"""

from __future__ import annotations

import gc

from hacluster.testing.history import check_all
from hacluster.testing.sim.core import Config, Result, SimNode
from hacluster.testing.sim.faults import Faults

__all__ = ["Config", "Result", "SimNode", "World", "run_seed"]


class World(Faults):
    def __init__(self, seed: int, cfg: Config | None = None) -> None:
        super().__init__(seed, cfg)
        self.init_data()
        self.split_brain = 0

    def gate_opened(self, n: SimNode) -> None:
        """Split brain: a gate opens while another node's, of another epoch, is open (gates
        open only here; they close by themselves when a lease ends)."""
        others = sorted(m.primary_epoch or 0 for m in self.nodes if m is not n and m.up
                        and m.primary_epoch != n.primary_epoch and self.gate_refusal(m) is None)
        if others:
            self.split_brain += 1
            self.say(f"SPLIT BRAIN: {n.name}'s gate opens in epoch {n.primary_epoch} while "
                     f"epochs {others} are open")

    def run(self) -> Result:
        # The world makes no reference cycles worth collecting while it runs, and collections
        # over its growing lists of entries and ops cost more than the run itself.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            if enabled:
                gc.enable()

    def _run(self) -> Result:
        cfg = self.cfg
        self._end = cfg.seconds + cfg.settle_s
        for n in self.nodes:
            n.started_at = self.local(n, 0.0)
            self.schedule_pass(n, first=True)
        for i in range(len(self.clients)):
            self._next_request(i, self.rng.uniform(0.5, 1.0))
        self.init_faults()
        self.run_until(cfg.seconds)
        # Heal everything, stop the writers, let the cluster converge, then judge.
        self.faulting = self.writing = False
        self.heal()
        for n in self.nodes:
            n.disk_full, n.room_at = None, 0.0
            if not n.up:
                self.restart(n.name)
        for n in self.nodes:
            for p in n.waiting:
                if p.client >= 0:
                    self.finish(p, n, 0, "writer stopped")
                p.client = -1
        self.run_until(self._end)
        return self.judge()

    def judge(self) -> Result:
        lock = self.states[-1].lock
        final = self.by_name[lock.holder] if lock.held and lock.holder else None
        violations: dict[str, list[str]] = {}
        keys = {k.encode() for _, k in final.entries} if final else None
        verdict = check_all(self.ops, keys,
                            tail_keys=None if self.policy.sync_mode else self.tail_keys)
        violations.update({k: v for k, v in verdict.violations.items() if v})
        if final is not None:
            mine = [k for _, k in final.entries]
            differ = [f"{n.name} holds seq 1..{n.seq} differing from {final.name}'s 1..{final.seq}"
                      + (" (diverged, replication stopped)" if n.diverged else "")
                      for n in self.nodes if n is not final and [k for _, k in n.entries] != mine]
            if differ:
                violations["replicas_differ"] = differ
        if self.split_brain:
            violations["split_brain"] = [f"{self.split_brain} windows"]
        if self.stale_elected:
            # Rule 1 as an invariant, whether or not a client noticed: no epoch is granted to
            # data that left the epoch history.
            violations["rule_1_epoch_off_history"] = [
                line.strip() for line in self.trace if "LEFT THE HISTORY" in line]
        return Result(self.seed, not violations, violations, self.failovers, verdict.acked,
                      verdict.attempts, self.cfg.seconds, self.trace, self.tails_dropped,
                      final is None, self.split_brain, self.switchovers)


def run_seed(seed: int, cfg: Config | None = None) -> Result:
    return World(seed, cfg).run()

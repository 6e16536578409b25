"""Scenario files: a failure scripted step by step against the simulator, with the expected trace.

Owns the format and its runner, after etcd raft's ``testdata/*.txt``: a file is a list of
blocks, each a command line, a ``----`` line, and the output expected from it (the trace lines
the world printed while the command ran: decisions, commits, faults, client answers), ended by
a blank line; ``#`` lines between blocks are comments. The first command is ``cluster`` (nodes,
mode, timing, seed); random faults and random clients are off, so only the script acts. A test
compares every block's output; with ``HACLUSTER_REWRITE_SCENARIOS=1`` the runner writes the
actual output back into the file instead, to be reviewed like code. It must never hide a
difference: an unknown command or a malformed block is an error naming the file and line.

Commands::

    cluster nodes=3 mode=sync|async timing=fine|coarse seed=N
    run SECONDS                      advance simulated time
    write NODE [COUNT]               send COUNT writes to NODE, answers traced as they come
    crash NODE | power NODE|all | restart NODE
    partition NODE... | mute NODE | heal
    disk-full NODE SECONDS | watchdog NODE SECONDS | switchover NODE
    status                           every node's role, seq and gate; the lock and the floor
    check                            the verdict: check_all, replicas identical, split brain
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from hacluster.consensus.lease import LeaseTiming
from hacluster.testing.history import check_all
from hacluster.testing.sim.core import Config
from hacluster.testing.sim.data import Client
from hacluster.testing.sim.world import World

REWRITE_ENV = "HACLUSTER_REWRITE_SCENARIOS"


class ScenarioError(Exception):
    """A scenario file that cannot be run as written."""


@dataclass
class Block:
    line: int                    # 1-based line of the command
    command: str
    expected: list[str]
    comments: list[str]          # the comment lines before it


def parse(text: str, source: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    i, comments = 0, []
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.startswith("#"):
            comments.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise ScenarioError(f"{source}:{i + 1}: a command must be followed by '----'")
        start, i = i + 1, i + 2
        expected = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        blocks.append(Block(start, line.strip(), expected, comments))
        comments = []
    return blocks


def render(blocks: list[Block], outputs: list[list[str]]) -> str:
    parts = []
    for block, out in zip(blocks, outputs, strict=True):
        parts.append("\n".join([*block.comments, block.command, "----", *out]))
    return "\n\n".join(parts) + "\n"


class Runner:
    def __init__(self, source: str) -> None:
        self.source = source
        self.world: World | None = None
        self.client = -1

    def _w(self, line: int) -> World:
        if self.world is None:
            raise ScenarioError(f"{self.source}:{line}: the first command must be 'cluster'")
        return self.world

    def run(self, block: Block) -> list[str]:
        words = shlex.split(block.command)
        name, args = words[0], words[1:]
        if name == "cluster":
            return self._cluster(block.line, args)
        w = self._w(block.line)
        mark = len(w.trace)
        handler = getattr(self, "do_" + name.replace("-", "_"), None)
        if handler is None:
            raise ScenarioError(f"{self.source}:{block.line}: unknown command {name!r}")
        try:
            extra = handler(w, *args)
        except (TypeError, ValueError, KeyError) as exc:
            raise ScenarioError(f"{self.source}:{block.line}: {block.command!r}: {exc}") from exc
        return w.trace[mark:] + (extra or [])

    def _cluster(self, line: int, args: list[str]) -> list[str]:
        kv = dict(a.split("=", 1) for a in args)
        nodes, seed = int(kv.pop("nodes", "3")), int(kv.pop("seed", "1"))
        mode, timing = kv.pop("mode", "sync"), kv.pop("timing", "fine")
        if kv:
            raise ScenarioError(f"{self.source}:{line}: unknown cluster settings {sorted(kv)}")
        cfg = (Config.fine(nodes=nodes, mode=mode, clients=0, faults=False) if timing == "fine"
               else Config(nodes=nodes, mode=mode, clients=0, faults=False))
        w = self.world = World(seed, cfg)
        w.faulting = w.writing = False
        w.clients.append(Client(scripted=True))
        self.client = len(w.clients) - 1
        for n in w.nodes:
            n.started_at = w.local(n, 0.0)
            w.schedule_pass(n, first=True)
        t: LeaseTiming = cfg.timing
        return [f"{' '.join(n.name for n in w.nodes)}; {mode} mode; lease {t.lease_s} s, "
                f"renewals every {t.renew_interval_s} s"]

    # -- commands ---------------------------------------------------------------------------

    def do_run(self, w: World, seconds: str) -> None:
        w.run_until(w.now + float(seconds))

    def do_write(self, w: World, node: str, count: str = "1") -> None:
        c = w.clients[self.client]
        c.hint = [n.name for n in w.nodes].index(node)
        for _ in range(int(count)):
            w.send(self.client)
            c.hint = [n.name for n in w.nodes].index(node)
        w.run_until(w.now + 0.001)

    def do_crash(self, w: World, node: str) -> None:
        w.kill(w.by_name[node], power=False)

    def do_power(self, w: World, node: str) -> None:
        for n in (w.nodes if node == "all" else [w.by_name[node]]):
            if n.up:
                w.kill(n, power=True)

    def do_restart(self, w: World, node: str) -> None:
        w.restart(node)

    def do_partition(self, w: World, *nodes: str) -> None:
        for name in nodes:
            w.by_name[name]         # a KeyError names an unknown node
        w.cut = frozenset(nodes)
        w.say(f"fault: partition {sorted(nodes)} from the rest")

    def do_mute(self, w: World, node: str) -> None:
        w.muted = frozenset([w.by_name[node].name])
        w.say(f"fault: {node}'s messages are lost (one way)")

    def do_heal(self, w: World) -> None:
        w.heal()

    def do_disk_full(self, w: World, node: str, seconds: str) -> None:
        w.strike(w.by_name[node], "disk", float(seconds))

    def do_watchdog(self, w: World, node: str, seconds: str) -> None:
        w.strike(w.by_name[node], "watchdog", float(seconds))

    def do_switchover(self, w: World, node: str) -> None:
        w.strike(w.by_name[node], "switchover", 0.0)

    def do_status(self, w: World) -> list[str]:
        out = []
        for n in w.nodes:
            role = ("down" if not n.up else
                    f"primary of epoch {n.primary_epoch}" if n.primary_epoch is not None else
                    f"replica of {n.following}" if n.following else "replica")
            why = w.gate_refusal(n)
            gate = ("" if n.primary_epoch is None else
                    "; gate open" if why is None else f"; gate shut ({why})")
            out.append(f"{n.name}: {role}, seq {n.seq} (synced {n.synced}, epochs "
                       f"{sorted({e for e, _ in n.entries})}){gate}")
        state = w.states[-1]
        lock = state.lock
        out.append(f"lock: {lock.holder} epoch {lock.epoch}"
                   + (" released" if lock.released else "")
                   + f"; sync set {sorted(state.sync_set)}; floor {state.acked_seq}"
                   + (f"; newest epoch starts at seq {state.history[-1].start_seq}"
                      if state.history else ""))
        return out

    def do_check(self, w: World) -> list[str]:
        lock = w.states[-1].lock
        final = w.by_name[lock.holder] if lock.held and lock.holder else None
        keys = {k.encode() for _, k in final.entries} if final else None
        verdict = check_all(w.ops, keys, tail_keys=None if w.policy.sync_mode else w.tail_keys)
        out = [f"{verdict.acked} acknowledged of {verdict.attempts} attempts"]
        out += [f"VIOLATION {k}: {v[0]}" for k, v in verdict.violations.items() if v]
        if final is None:
            out.append("no primary")
        else:
            mine = [k for _, k in final.entries]
            same = [n.name for n in w.nodes if [k for _, k in n.entries] == mine]
            out.append(f"{final.name} is primary; identical to it: {', '.join(same)}")
        if w.split_brain:
            out.append(f"VIOLATION split brain: {w.split_brain} windows")
        if w.stale_elected:
            out.append(f"VIOLATION rule 1: {w.stale_elected} epochs granted off the history")
        return out


@dataclass
class Outcome:
    path: Path
    blocks: list[Block]
    outputs: list[list[str]]

    @property
    def differences(self) -> list[str]:
        diffs = []
        for b, out in zip(self.blocks, self.outputs, strict=True):
            if out != b.expected:
                diffs.append(f"{self.path}:{b.line}: {b.command}\n  expected:\n    "
                             + "\n    ".join(b.expected) + "\n  got:\n    "
                             + "\n    ".join(out))
        return diffs


def run_file(path: Path, rewrite: bool | None = None) -> Outcome:
    """Run one scenario file; rewrite its expected output when asked (or by the env var)."""
    blocks = parse(path.read_text(), str(path))
    runner = Runner(str(path))
    outputs = [runner.run(b) for b in blocks]
    if rewrite if rewrite is not None else os.environ.get(REWRITE_ENV) == "1":
        path.write_text(render(blocks, outputs))
        blocks = parse(path.read_text(), str(path))
    return Outcome(path, blocks, outputs)

"""The chaos soak: a seeded nemesis against a real cluster in network namespaces, judged by the
clients' histories.

Owns one soak run: a cluster of 3 or 5 node processes, each in its own namespace, each data dir
(RocksDB and the Raft journal) on its own LazyFS mount (``hacluster.testing.lazyfs``, which
drops what was never synced at a power loss) over its own small tmpfs (for the disk-full
fault); writer processes in every namespace and on the host, recording every write, hot-key
overwrite and read-back, and every write and primary read of a few shared register keys, with
CLOCK_MONOTONIC times; a randomized, seeded schedule of faults (each kind at least once when
there are enough), each injected, held, and healed before the next; every epoch record the
nodes show, sampled after each fault and before each power loss; what each powered-off disk
still holds, read before its node restarts; and at the end the verdicts: no acknowledged write
lost (sync), none lost from the disk of a primary or synchronous standby by a power loss, no
split brain, no stale read, no read that no order of the writes explains, no epoch given out
twice, every async loss in a divergent-tail file, every node identical (content and sequence
number), availability and failover times. ``bench/chaos.py`` prints and plots a run;
``tests/test_chaos.py`` runs a short one. It must never fake the network, the store or the
disk, and never leave a fault unhealed, a process, a namespace or a mount behind.
"""

from __future__ import annotations

import ast
import gc
import itertools
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import rocksdict

from hacluster.testing.harness import Cluster, NodeProc, read_db, request
from hacluster.testing.history import (
    REG,
    History,
    Op,
    check_all,
    divergent_tail_keys,
    linearizable,
    stale_reads,
)
from hacluster.testing.lazyfs import LazyFS, fuse_unavailable
from hacluster.testing.netns import Netns, iptables_unavailable

log = logging.getLogger(__name__)

KINDS = ("kill", "pause", "isolate_primary", "split", "one_way", "restart_all", "disk_full",
         "wipe_replica", "switchover", "power_primary", "power_sync_standby", "power_all",
         "power_majority_after_failover")
POWER_KINDS = tuple(k for k in KINDS if k.startswith("power_"))
TMPFS_MB = 256
REGISTER_KEYS = 8         # shared by every register writer: concurrent ops for the WGL check
RESTART_S = 20.0          # NodeProc.start waits this long for /health
# Linearizability keys check_all could not decide in its budget are tried again with this one.
RECHECK_STATES, RECHECK_SECONDS = 2_000_000, 300.0


@dataclass
class PowerCut:
    """One node's power loss, and what its disk held after it (read before the node restarts).

    ``role`` says what the disk must still hold (rule 5: nothing is acknowledged before it is
    on disk): a ``primary`` every write it acknowledged in ``epoch`` (all before ``at``); a
    ``sync_standby`` every write acknowledged in ``epoch`` before ``confirmed`` (when its
    primary's status showed it in the synchronous set: it joined that set only holding every
    write, and confirmed each one after), and the probe write of seq ``probe_seq`` it
    confirmed just before; ``other`` (or an unknown epoch) nothing.
    """

    node: str
    at: float                      # monotonic, once its process was SIGKILLed and reaped
    role: str = "other"
    epoch: int | None = None
    confirmed: float = 0.0
    probe_seq: int | None = None
    disk_seq: int | None = None    # the database's latest seq after the loss; None: unreadable
    disk_error: str = ""
    bytes_dropped: int = 0
    files_affected: int = 0
    forced: bool = False           # something still held the mount (it should not)


@dataclass
class Fault:
    kind: str
    nodes: list[str]
    start: float                 # monotonic, injected
    healed: float = 0.0          # monotonic, healed
    recovered: float = 0.0       # monotonic, a primary acknowledged again (host writer view)
    note: str = ""
    power: list[PowerCut] = field(default_factory=list)


@dataclass
class ChaosResult:
    seed: int
    nodes: int
    mode: str
    faults: list[Fault]
    started: float
    ended: float
    verdicts: dict[str, Any] = field(default_factory=dict)
    failovers: list[dict[str, Any]] = field(default_factory=list)
    availability: float = 0.0
    longest_outage: float = 0.0      # the longest time with no write acknowledged
    converged: bool = False
    errors_over_time: list[tuple[float, int]] = field(default_factory=list)
    epochs_over_time: list[tuple[float, int, str]] = field(default_factory=list)

    @property
    def linearizable(self) -> bool:
        """The register check ran, found no violation and decided every key."""
        v = self.verdicts
        return (v.get("linearizability_checked", 0) > 0 and not v.get("nonlinearizable")
                and not v.get("linearizability_unknown"))

    @property
    def ok(self) -> bool:
        v = self.verdicts
        return (self.converged and not v.get("lost_acked") and not v.get("split_brain_windows")
                and not v.get("stale_reads") and not v.get("diverged_unreported")
                and not v.get("unrecovered") and not v.get("crashes")
                and not v.get("durable_gaps") and not v.get("epoch_reuse")
                and not v.get("nonlinearizable") and not v.get("linearizability_unknown"))

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        times = sorted(f["seconds"] for f in self.failovers)
        v = self.verdicts
        return {
            "faults": len(self.faults), "faults_by_kind": kinds, "seed": self.seed,
            "nodes": self.nodes, "mode": self.mode,
            "duration_s": round(self.ended - self.started, 1),
            "acked": v.get("acked", 0),
            "lost_acked": v.get("lost_acked", 0),
            "split_brain_windows": v.get("split_brain_windows", 0),
            "stale_reads": v.get("stale_reads", 0),
            "diverged_unreported": v.get("diverged_unreported", 0),
            "unrecovered": v.get("unrecovered", 0),
            "crashes": v.get("crashes", 0),
            "power_losses": sum(1 for f in self.faults if f.kind in POWER_KINDS),
            "disks_power_cut": sum(len(f.power) for f in self.faults),
            "lost_acked_power": v.get("lost_acked_power", 0),
            "durable_gaps": v.get("durable_gaps", 0),
            "epoch_reuse": v.get("epoch_reuse", 0),
            "seq_anomalies": v.get("seq_anomalies", 0),
            "register_reads": v.get("register_reads", 0),
            "nonlinearizable": v.get("nonlinearizable", 0),
            "linearizability_unknown": v.get("linearizability_unknown", 0),
            "linearizable": int(self.linearizable),
            "converged": self.converged, "availability": round(self.availability, 4),
            "longest_outage_s": round(self.longest_outage, 3),
            "failovers": len(times),
            "failover_p50_s": round(times[len(times) // 2], 3) if times else None,
            "failover_max_s": round(times[-1], 3) if times else None,
        }


class ChaosRun:
    def __init__(self, root: Path, *, nodes: int = 3, mode: str = "sync", seed: int = 1,
                 kinds: tuple[str, ...] = KINDS, cover: bool = True,
                 storage: dict[str, Any] | None = None,
                 say: Callable[[str], None] = print) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.seed = seed
        self.mode = mode
        self.say = say
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.dropped = {k: why for k in kinds if (why := self._impossible(k, mode))}
        self.kinds = tuple(k for k in kinds if k not in self.dropped)
        self.cover = cover            # every kind at least once when there are enough faults
        # Power loss needs every data dir on LazyFS; without a power fault to inject the run
        # keeps plain directories (faster, and FUSE is then not needed).
        self.lazy = any(k in POWER_KINDS for k in self.kinds)
        self.net = Netns(self.names)
        self.cluster = Cluster(
            root, self.names, consensus=True, hosts=self.net.ip,
            replication={"mode": mode}, storage=storage,
            prefixes={n: self.net.prefix(n) for n in self.names})
        self.mounted: list[Path] = []
        self.disks: dict[str, LazyFS] = {}
        self.writers: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.stop_file = root / "writers.stop"
        self.faults: list[Fault] = []
        self.unrecovered: list[str] = []
        self.crashes: list[str] = []
        self.probes = 0
        # Every epoch record any node showed (epoch -> (primary, start_seq)), and what was
        # wrong with them (a dict: each problem once, in the order found).
        self.epoch_records: dict[int, tuple[str, int]] = {}
        self.epoch_problems: dict[str, None] = {}

    @staticmethod
    def _impossible(kind: str, mode: str) -> str | None:
        """Why ``kind`` cannot be injected here, or None."""
        if kind not in KINDS:
            return "unknown fault kind"
        if kind == "one_way":
            return iptables_unavailable()
        if kind in POWER_KINDS and (why := fuse_unavailable()):
            return why
        if kind == "power_sync_standby" and mode != "sync":
            return "there is no synchronous standby in async mode"
        return None

    # -- set-up and tear-down -------------------------------------------------------------

    def start(self) -> None:
        self.net.up()
        for name, node in self.cluster.nodes.items():
            # With LazyFS the tmpfs is its backing dir, so a ballast written through the mount
            # fills the same file system the node's statvfs and writes see.
            disk = self.root / "disks" / name if self.lazy else node.data_dir
            disk.mkdir(parents=True, exist_ok=True)
            if "disk_full" in self.kinds:
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs",
                                str(disk)], check=True, capture_output=True)
                self.mounted.append(disk)
            if self.lazy:
                fs = LazyFS(disk, node.data_dir)
                fs.start()
                self.disks[name] = fs
        self.cluster.start()
        primary = self.cluster.wait_primary(60)
        self.say(f"cluster up: {len(self.names)} nodes, {self.mode} mode, primary "
                 f"{primary.name}, data dirs on {'LazyFS' if self.lazy else 'plain dirs'}"
                 f"{' over tmpfs' if self.mounted else ''}; faults from {', '.join(self.kinds)}"
                 + "".join(f"; no {k}: {why}" for k, why in self.dropped.items()))
        self._start_writers()

    def _start_writers(self) -> None:
        targets = [f"{n}={self.net.ip[n]}:{self.cluster.addresses[n]}" for n in self.names]
        places: list[tuple[str, list[str]]] = [("host", [])]
        places += [(n, self.net.prefix(n)) for n in self.names]
        # In every place: a unique-key writer (hot keys read back), judged by lost_acked and
        # stale_reads; and a register writer (writes and primary reads of shared keys, one
        # thread: the concurrency comes from the places), judged by the linearizability check.
        workloads = [("", ["--threads", "2", "--hot", "4"]),
                     ("-reg", ["--threads", "1", "--register", str(REGISTER_KEYS),
                               "--read-share", "0.5"])]
        for place, prefix in places:
            for suffix, args in workloads:
                name = place + suffix
                out = self.root / f"history-{name}.json"
                log_file = open(self.root / f"writer-{name}.log", "wb")  # noqa: SIM115
                proc = subprocess.Popen(
                    [*prefix, sys.executable, "-m", "hacluster.testing.history", *targets,
                     "--seconds", "36000", "--stop-file", str(self.stop_file), "--out",
                     str(out), "--prefix", f"{name}-", "--timeout", "2", "--pause", "0.01",
                     *args],
                    stdout=log_file, stderr=subprocess.STDOUT)
                log_file.close()
                self.writers.append((name, proc, out))

    def _stop_writers(self) -> History:
        self.stop_file.touch()
        history = History()
        for place, proc, out in self.writers:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            if out.exists():
                history.extend(History.load(out).ops())
            else:
                self.unrecovered.append(f"writer {place} saved no history (exit "
                                        f"{proc.returncode})")
        return history

    def close(self) -> None:
        """Heal everything and remove what was made; safe to call twice."""
        self.stop_file.touch()
        for _, proc, _ in self.writers:
            if proc.poll() is None:
                proc.kill()
        for node in self.cluster.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.signal(signal.SIGCONT)
        try:
            self.net.heal_all()
        except RuntimeError as exc:
            log.warning("healing the network: %s", exc)
        self.cluster.stop()
        for fs in self.disks.values():      # a clean unmount: every write kept
            fs.stop()
        self.disks.clear()
        self.net.down()
        for path in self.mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        self.mounted.clear()

    # -- the faults -----------------------------------------------------------------------

    def primary(self) -> NodeProc | None:
        """The writable primary, asked from the host (nodes on the second bridge are not)."""
        found = []
        for node in self.cluster.nodes.values():
            if not node.running:
                continue
            try:
                st = request(node.port, "GET", "/status", host=node.host, timeout=1.0).json()
            except (OSError, ValueError):
                continue
            if st.get("role") == "primary" and st.get("writable"):
                found.append(node)
        return found[0] if len(found) == 1 else None

    def _hold(self, low: float, high: float) -> None:
        time.sleep(self.rng.uniform(low, high))

    def schedule(self, faults: int) -> list[str]:
        """The seeded fault kinds, in order; with ``cover``, each kind at least once when
        there are at least as many faults as kinds (a kind drawn twice gives up a place)."""
        kinds = [self.rng.choice(self.kinds) for _ in range(faults)]
        if self.cover and faults >= len(self.kinds):
            for missing in [k for k in self.kinds if k not in kinds]:
                counts = Counter(kinds)
                spare = [i for i, k in enumerate(kinds) if counts[k] > 1]
                kinds[self.rng.choice(spare)] = missing
        return kinds

    def inject(self, kind: str) -> Fault:
        nodes = list(self.cluster.nodes.values())
        primary = self.primary()
        target = primary if primary is not None and self.rng.random() < 0.6 else \
            self.rng.choice(nodes)
        fault = Fault(kind, [], time.monotonic())
        if kind == "kill":
            fault.nodes = [target.name]
            target.signal(signal.SIGKILL)
            target.proc.wait(10)  # type: ignore[union-attr]
            self._hold(0.5, 2.5)
            self._start(target)
        elif kind == "pause":
            fault.nodes = [target.name]
            target.signal(signal.SIGSTOP)
            self._hold(1.0, 3.0)          # longer than the lease (0.6 s)
            target.signal(signal.SIGCONT)
        elif kind == "isolate_primary":
            victim = primary or target
            fault.nodes = [victim.name]
            self.net.cut(victim.name)
            self._hold(1.5, 4.0)
            self.net.heal(victim.name)
        elif kind == "split":
            minority = self.rng.sample(self.names, (len(self.names) - 1) // 2)
            if primary is not None and self.rng.random() < 0.5 and primary.name not in minority:
                minority[0] = primary.name       # often the primary ends up on the small side
            fault.nodes = sorted(minority)
            self.net.split(minority)
            self._hold(1.5, 4.0)
            self.net.join()
        elif kind == "one_way":
            others = [n for n in self.names if n != target.name]
            fault.nodes = [target.name]
            fault.note = "receives nothing from " + ", ".join(others)
            self.net.drop_inbound(target.name, others)
            self._hold(1.5, 3.0)
            self.net.allow_inbound(target.name)
        elif kind == "restart_all":
            fault.nodes = list(self.names)
            for node in nodes:
                node.stop()
            for node in nodes:
                self._start(node)
        elif kind == "disk_full":
            fault.nodes = [target.name]
            ballast = target.data_dir / "ballast"
            fault.note = self._fill(ballast)
            fault.note += "; " + self._saw_disk_full(target, self.rng.uniform(1.5, 3.0))
            ballast.unlink(missing_ok=True)
        elif kind == "wipe_replica":
            replicas = [n for n in nodes if n is not primary]
            victim = self.rng.choice(replicas)
            fault.nodes = [victim.name]
            victim.stop()
            shutil.rmtree(victim.data_dir / "db", ignore_errors=True)
            fault.note = "db/ removed (the Raft journal is kept)"
            self._start(victim)
        elif kind == "switchover":
            if primary is None:
                fault.note = "no primary to switch over from; skipped"
            else:
                fault.nodes = [primary.name]
                resp = request(primary.port, "POST", "/v1/admin/switchover", body=b"{}",
                               host=primary.host, timeout=15)
                fault.note = f"HTTP {resp.status}: {resp.body[:120].decode(errors='replace')}"
        elif kind in POWER_KINDS:
            getattr(self, "_" + kind)(fault, primary, target, nodes)
            fault.note = "; ".join(filter(None, [fault.note, *map(describe_cut, fault.power)]))
        else:
            raise ValueError(f"unknown fault {kind!r}")
        fault.healed = time.monotonic()
        return fault

    # -- power loss -------------------------------------------------------------------------

    def _power_primary(self, fault: Fault, primary: NodeProc | None, target: NodeProc,
                       nodes: list[NodeProc]) -> None:
        """Power loss of the primary (of a random node when there is none), then restart."""
        victim = primary or target
        fault.nodes = [victim.name]
        if primary is None:
            fault.note = "no primary: power loss of a random node"
        self._cut(fault, [victim], primary)
        self._hold(0.5, 2.5)
        self._start(victim)

    def _power_sync_standby(self, fault: Fault, primary: NodeProc | None, target: NodeProc,
                            nodes: list[NodeProc]) -> None:
        """Power loss of a synchronous standby right after it confirmed a probe write, then
        SIGKILL of the primary (its disk intact); both restart."""
        if primary is None:
            victim = self.rng.choice(nodes)
            fault.nodes = [victim.name]
            fault.note = "no primary: power loss of a random node"
            self._cut(fault, [victim], None)
            self._hold(0.5, 2.0)
            self._start(victim)
            return
        before = self._primary_status(primary)
        probe = self._probe(primary, "standby")
        after = self._primary_status(primary)
        # In the committed set before and after the probe: it confirmed the probe (rule 6
        # keeps the committed set among the confirmers while a change is pending).
        standbys = sorted(set(before[1]) & set(after[1]))
        if probe is None or not standbys:
            victim = self.rng.choice([n for n in nodes if n is not primary])
            fault.note = (f"no synchronous standby confirmed a probe (probe "
                          f"{'refused' if probe is None else 'acknowledged'}, sync sets "
                          f"{before[1]} and {after[1]}): power loss of a replica")
            self._cut(fault, [victim], primary, epoch=before[0], sync_set=[])
        else:
            victim = self.cluster.nodes[self.rng.choice(standbys)]
            self._cut(fault, [victim], primary, epoch=before[0], sync_set=standbys,
                      confirmed=before[2], probe_seq=probe)
        self._hold(0.1, 0.5)
        primary.kill()
        fault.nodes = [victim.name, primary.name]
        fault.note = "; ".join(filter(None, [fault.note, f"then SIGKILL of {primary.name}"]))
        self._hold(0.5, 2.0)
        self._start(victim)
        self._start(primary)

    def _power_all(self, fault: Fault, primary: NodeProc | None, target: NodeProc,
                   nodes: list[NodeProc]) -> None:
        """Power loss of every node at once; all restart."""
        fault.nodes = [n.name for n in nodes]
        self._cut(fault, nodes, primary)
        self._hold(0.2, 1.0)
        for node in self.rng.sample(nodes, len(nodes)):
            self._start(node)

    def _power_majority_after_failover(self, fault: Fault, primary: NodeProc | None,
                                       target: NodeProc, nodes: list[NodeProc]) -> None:
        """SIGKILL of the primary; once a new primary acknowledged a write, power loss of it
        and one more node (a majority down, and the new epoch known only to the cut nodes
        among the living); all restart."""
        old = primary or target
        old.kill()
        new: NodeProc | None = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and new is None:
            found = self.primary()
            if (found is not None and found is not old
                    and self._probe(found, "failover") is not None):
                new = found
            else:
                time.sleep(0.1)
        survivors = [n for n in nodes if n is not old]
        if new is None:
            fault.note = f"no new primary acknowledged within 30 s of the SIGKILL of {old.name}"
            victims = self.rng.sample(survivors, 2)
        else:
            epoch, sync_set, _ = self._primary_status(new)
            others = [n for n in survivors if n is not new]
            standbys = [n for n in others if n.name in sync_set]
            victims = [new, self.rng.choice(standbys or others)]
            fault.note = f"{new.name} took over from {old.name} in epoch {epoch}"
        fault.nodes = [old.name] + [n.name for n in victims]
        self._cut(fault, victims, new)
        self._hold(0.3, 1.5)
        for node in self.rng.sample([old, *victims], len(victims) + 1):
            self._start(node)

    def _primary_status(self, primary: NodeProc | None) -> tuple[int | None, list[str], float]:
        """The primary's epoch and synchronous set by its own status, and when they were read
        (an epoch of None: it is no longer primary, or did not answer)."""
        now = time.monotonic()
        if primary is None or not primary.running:
            return None, [], now
        try:
            st = request(primary.port, "GET", "/status", host=primary.host, timeout=2).json()
        except (OSError, ValueError):
            return None, [], now
        if st.get("role") != "primary":
            return None, [], now
        consensus = st.get("consensus") or {}
        return st.get("epoch"), list(consensus.get("sync_set") or []), now

    def _cut(self, fault: Fault, victims: list[NodeProc], primary: NodeProc | None, *,
             epoch: int | None = None, sync_set: list[str] | None = None,
             confirmed: float | None = None, probe_seq: int | None = None) -> None:
        """SIGKILL ``victims``, cut the power of their disks, and read what each disk kept.

        ``primary`` (with its epoch and synchronous set, read from its status unless given)
        tells which victims must have kept every write acknowledged before (PowerCut.role).
        """
        if sync_set is None:
            epoch, sync_set, confirmed = self._primary_status(primary)
        self._note_epochs()         # the records a power loss could make a node forget
        dead = {}
        for node in victims:
            node.kill()
            # Once reaped it acknowledges nothing more: an ack of a request sent later is not
            # its (while a request sent before, between the kills of a group, may be).
            dead[node.name] = time.monotonic()
        for node in victims:
            at = dead[node.name]
            cut = PowerCut(node.name, at, epoch=epoch)
            if epoch is not None and node is primary:
                cut.role, cut.confirmed = "primary", at
            elif epoch is not None and node.name in sync_set:
                cut.role, cut.probe_seq = "sync_standby", probe_seq
                cut.confirmed = min(at, confirmed if confirmed is not None else at)
            loss = self.disks[node.name].power_loss()
            cut.bytes_dropped, cut.files_affected = loss.bytes_dropped, loss.files_affected
            cut.forced = loss.forced
            cut.disk_seq, cut.disk_error = disk_seq(node.data_dir / "db")
            fault.power.append(cut)

    def _probe(self, node: NodeProc, tag: str) -> int | None:
        """One write to ``node``: its seq when acknowledged (-1 without one), else None."""
        self.probes += 1
        try:
            resp = request(node.port, "PUT", f"/v1/kv/probe-{tag}-{self.probes}", body=b"p",
                           host=node.host, timeout=3)
        except OSError:
            return None
        if resp.status != 200:
            return None
        try:
            return int(resp.json()["seq"])
        except (ValueError, KeyError, TypeError):
            return -1

    def _note_epochs(self) -> None:
        """Record every epoch each running node shows; note disorder and changed records."""
        for node in self.cluster.nodes.values():
            if not node.running:
                continue
            try:
                st = request(node.port, "GET", "/status", host=node.host, timeout=2).json()
                history = st["consensus"]["history"]
                records = [(int(h["epoch"]), str(h["primary"]), int(h["start_seq"]))
                           for h in history]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            epochs = [e for e, _, _ in records]
            if any(b <= a for a, b in itertools.pairwise(epochs)):
                self.epoch_problems[f"{node.name}: epochs not strictly increasing: "
                                    f"{epochs}"] = None
            for epoch, holder, start_seq in records:
                seen = self.epoch_records.setdefault(epoch, (holder, start_seq))
                if seen != (holder, start_seq):
                    self.epoch_problems[f"epoch {epoch} given out twice: {seen} before, "
                                        f"{(holder, start_seq)} on {node.name}"] = None

    # -- other helpers ------------------------------------------------------------------------

    @staticmethod
    def _fill(ballast: Path) -> str:
        written = 0
        chunk = b"\0" * (1 << 20)
        try:
            with open(ballast, "wb") as f:
                while True:
                    f.write(chunk)
                    written += len(chunk)
        except OSError as exc:
            return f"filled with {written >> 20} MB until {exc.strerror}"
        return f"filled with {written >> 20} MB"

    def _saw_disk_full(self, node: NodeProc, hold: float) -> str:
        """Hold the disk full; say whether the node reported it (its statvfs and writes go
        through LazyFS, so this shows a full backing tmpfs reaches it)."""
        end = time.monotonic() + hold
        seen = ""
        while time.monotonic() < end:
            try:
                seen = seen or str(request(node.port, "GET", "/status", host=node.host,
                                           timeout=1.0).json().get("disk_full") or "")
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        return f"node reported: {seen}" if seen else "the node did not report a full disk"

    def _start(self, node: NodeProc) -> None:
        """Start ``node``; one that does not come up is left to ``_restart_crashed`` (dead)
        or to the recovery wait (slow), never raised: the run goes on and counts it."""
        try:
            node.start()
        except AssertionError as exc:
            state = ("exited with " + str(node.proc.returncode)
                     if node.proc is not None and node.proc.poll() is not None else "running")
            self.say(f"{node.name} did not serve /health within {RESTART_S:.0f} s of its "
                     f"start ({state}): {exc}")

    def _restart_crashed(self) -> None:
        """Every stop the nemesis makes is followed by a start: a dead process is a crash.
        Like systemd's Restart=on-failure, start it again, but count it against the run."""
        for node in self.cluster.nodes.values():
            if node.proc is not None and node.proc.poll() is not None:
                tail = node.log().strip().splitlines()[-3:]
                self.crashes.append(f"{node.name} exited with {node.proc.returncode}: "
                                    + " | ".join(tail))
                self.say(f"CRASH: {self.crashes[-1]}")
                self._start(node)

    def wait_recovered(self, fault: Fault, timeout: float = 60.0) -> None:
        """Until a writable primary exists and every node answers; else note it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._restart_crashed()
            primary = self.primary()
            # Recovered means a write is acknowledged again, not just a status saying so
            # (in sync mode a primary without a standby to confirm is no help).
            if (primary is not None and all(self._healthy(n) for n in self.cluster.nodes.values())
                    and self._probe(primary, str(len(self.faults))) is not None):
                fault.recovered = time.monotonic()
                self._note_epochs()
                return
            time.sleep(0.1)
        self.unrecovered.append(f"{fault.kind} on {fault.nodes}: no write acknowledged with "
                                f"every node up within {timeout} s of healing")

    @staticmethod
    def _healthy(node: NodeProc) -> bool:
        try:
            return node.running and request(node.port, "GET", "/health", host=node.host,
                                             timeout=1.0).status == 200
        except OSError:
            return False

    # -- the run --------------------------------------------------------------------------

    def run(self, faults: int) -> ChaosResult:
        started = time.monotonic()
        self.start()
        time.sleep(1.0)
        for i, kind in enumerate(self.schedule(faults)):
            fault = self.inject(kind)
            self.wait_recovered(fault)
            self.faults.append(fault)
            self.say(f"fault {i + 1}/{faults}: {kind} on {','.join(fault.nodes) or '-'} "
                     f"held {fault.healed - fault.start:.1f} s, recovered "
                     f"{max(0.0, fault.recovered - fault.healed):.1f} s after healing"
                     + (f" ({fault.note})" if fault.note else ""))
            time.sleep(self.rng.uniform(0.3, 1.0))
        time.sleep(1.0)
        history = self._stop_writers()
        ended = time.monotonic()
        return self.judge(history, started, ended)

    def judge(self, history: History, started: float, ended: float) -> ChaosResult:
        result = ChaosResult(self.seed, len(self.names), self.mode, self.faults, started, ended)
        converged, final_keys = self._converge()
        result.converged = converged
        tails = (divergent_tail_keys([n.data_dir for n in self.cluster.nodes.values()])
                 if self.mode == "async" else None)
        ops = history.ops()
        verdict = check_all(ops, final_keys, tail_keys=tails)
        v = verdict.violations
        # Judged in sync mode only: an async failover may lose acknowledged writes, and a
        # read then sees an older value (check_all only counts those in its notes).
        wrong: list[str] = v.get("nonlinearizable", [])
        unknown: list[str] = []
        if tails is None:
            unknown = verdict.notes.get("linearizability_unknown", [])
            if unknown:
                wrong, unknown = recheck_linearizability(ops, wrong, unknown)
        acks = [op for op in ops if op.acked]
        cuts = [cut for f in self.faults for cut in f.power]
        lost = [op for op in acks if op.key.encode() not in final_keys
                and (tails is None or op.key.encode() not in tails)]
        last_cut = max((cut.at for cut in cuts), default=-1.0)
        lost_power = [op for op in lost if op.end < last_cut]
        gaps = durable_gaps(acks, cuts)
        reuse = [*self.epoch_problems, *epoch_reuse(acks, self.epoch_records, cuts,
                                                    sync=self.mode == "sync")]
        reg_reads = sum(1 for op in ops if op.answered and op.key.startswith(REG))
        result.verdicts = {
            "acked": verdict.acked, "attempts": verdict.attempts,
            "lost_acked": len(v.get("lost_acked", [])),
            "split_brain_windows": len(v.get("split_brain", [])),
            "stale_reads": len(v.get("stale_reads", [])),
            "diverged_unreported": len(v.get("unreported_losses", [])),
            "seq_anomalies": len(v.get("seq_anomalies", [])),
            "unrecovered": len(self.unrecovered),
            "crashes": len(self.crashes),
            "lost_acked_power": len(lost_power),
            "durable_gaps": sum(n for n, _ in gaps),
            "epoch_reuse": len(reuse),
            "epochs_seen": len(self.epoch_records),
            "register_reads": reg_reads,
            "linearizability_checked": verdict.notes.get("reads", 0) if tails is None else 0,
            "nonlinearizable": len(wrong),
            "linearizability_unknown": len(unknown),
            "details": {**{k: x[:5] for k, x in v.items() if x and k != "nonlinearizable"},
                        "nonlinearizable": wrong[:3], "linearizability_unknown": unknown[:5],
                        "lost_acked_power": [op.describe() for op in lost_power[:5]],
                        "durable_gaps": [text for _, text in gaps[:5]],
                        "epoch_reuse": reuse[:5],
                        "unrecovered": self.unrecovered[:5], "crashes": self.crashes[:5]},
            "notes": {k: x for k, x in verdict.notes.items()
                      if k != "linearizability_unknown"},
        }
        if self.mode == "async":
            result.verdicts["async_stale_reads_after_loss"] = len(stale_reads(history))
        result.availability, result.errors_over_time = availability(history, started, ended)
        ends = sorted(op.end for op in acks)
        result.longest_outage = max((b - a for a, b in itertools.pairwise(ends)), default=0.0)
        result.failovers, result.epochs_over_time = failover_times(history)
        return result

    def _converge(self) -> tuple[bool, set[bytes]]:
        """Heal, wait for one content hash everywhere, stop, and compare the databases."""
        self.net.heal_all()
        self._restart_crashed()
        deadline = time.monotonic() + 90
        nodes = list(self.cluster.nodes.values())
        same = False
        while time.monotonic() < deadline and not same:
            try:
                hashes = [request(n.port, "GET", "/v1/admin/hash", host=n.host,
                                  timeout=5).json() for n in nodes]
                same = self.primary() is not None and all(h == hashes[0] for h in hashes)
            except (OSError, ValueError):
                same = False
            if not same:
                time.sleep(0.3)
        primary = self.primary()
        self._note_epochs()
        self.cluster.stop()
        dbs: list[tuple[int, dict[str, dict[bytes, bytes]]]] = []
        for n in nodes:
            try:
                dbs.append(read_db(n.data_dir / "db"))
            except Exception as exc:   # rocksdict: a missing or unreadable database
                self.unrecovered.append(f"{n.name} has no readable database at the end: {exc}")
                dbs.append((-1, {}))
        identical = all(db == dbs[0] for db in dbs)
        if not identical:
            self.unrecovered.append("stopped databases differ: seqs "
                                    + ", ".join(f"{n.name}={db[0]}" for n, db in
                                                zip(nodes, dbs, strict=True)))
        final = dbs[nodes.index(primary)] if primary in nodes else max(dbs, key=lambda d: d[0])
        return same and identical, set(final[1].get("default", {}))


def describe_cut(cut: PowerCut) -> str:
    kept = (f"disk seq {cut.disk_seq}" if cut.disk_seq is not None
            else f"no readable database ({cut.disk_error})")
    role = f"{cut.role} of epoch {cut.epoch}" if cut.role != "other" else "not a guardian"
    return (f"power loss of {cut.node} ({role}): {cut.bytes_dropped} unsynced bytes in "
            f"{cut.files_affected} files dropped, {kept}"
            + (", the mount was still in use" if cut.forced else ""))


def disk_seq(db_dir: Path) -> tuple[int | None, str]:
    """The latest sequence number of a stopped node's database (WAL replayed, read-only)."""
    if not db_dir.exists():
        return None, "no db/ directory"
    opts = rocksdict.Options(raw_mode=True)
    try:
        names = rocksdict.Rdict.list_cf(str(db_dir), opts)
        db = rocksdict.Rdict(str(db_dir), opts, column_families={
            n: rocksdict.Options(raw_mode=True) for n in names if n != "default"},
            access_type=rocksdict.AccessType.read_only())
    except Exception as exc:     # rocksdict raises plain Exceptions for a damaged database
        return None, f"{type(exc).__name__}: {exc}"
    try:
        return int(db.latest_sequence_number()), ""
    finally:
        db.close()
        del db
        gc.collect()             # the handle must be gone before the node opens it


def durable_gaps(acks: list[Op], cuts: Iterable[PowerCut]) -> list[tuple[int, str]]:
    """Rule 5 per power loss: acknowledged writes its disk had to keep and did not.

    Each entry is (writes missing, a sentence). Writes of one epoch carry rising seqs and
    RocksDB recovers a prefix of its WAL, so a write is on the disk exactly when its seq is at
    most the database's latest seq.
    """
    out = []
    for cut in cuts:
        if cut.role == "other" or cut.epoch is None:
            continue
        if cut.disk_seq is None:
            out.append((1, f"{cut.node} ({cut.role} of epoch {cut.epoch}) had no readable "
                           f"database after its power loss: {cut.disk_error}"))
            continue
        if cut.role == "primary":
            due = [op for op in acks if op.node == cut.node and op.epoch == cut.epoch
                   and op.end < cut.at]
        else:
            due = [op for op in acks if op.epoch == cut.epoch and op.end < cut.confirmed]
        missing = [op for op in due if op.seq is not None and op.seq > cut.disk_seq]
        probe_lost = cut.probe_seq is not None and cut.probe_seq > cut.disk_seq
        if missing or probe_lost:
            example = (missing[-1].describe() if missing
                       else f"the probe write it confirmed, seq {cut.probe_seq}")
            out.append((len(missing) + probe_lost,
                        f"{cut.node} ({cut.role} of epoch {cut.epoch}) kept seq "
                        f"{cut.disk_seq} through its power loss but had to keep "
                        f"{len(missing) + probe_lost} acknowledged writes past it, e.g. "
                        f"{example}"))
    return out


def epoch_reuse(acks: list[Op], records: dict[int, tuple[str, int]],
                cuts: Iterable[PowerCut], *, sync: bool) -> list[str]:
    """An epoch number given out twice, seen from the acknowledgements.

    An epoch has one primary, so its acks all come from one node, the one its record names;
    one (epoch, seq) is one write (``seq_anomalies`` reports these too, among seqs out of
    order); writes sent after an epoch's holder lost power are acknowledged only in newer
    epochs (rule 3); and in sync mode every epoch's acks carry seqs above every older epoch's
    (a new epoch starts past the acknowledged floor, rule 2), so no seq is handed out again.
    """
    out = []
    by_epoch: dict[int, list[Op]] = {}
    for op in acks:
        if op.epoch is not None:
            by_epoch.setdefault(op.epoch, []).append(op)
    for epoch, ops in sorted(by_epoch.items()):
        names = sorted({op.node for op in ops})
        if len(names) > 1:
            out.append(f"epoch {epoch} acknowledged writes on {', '.join(names)}")
        elif epoch in records and records[epoch][0] != names[0]:
            out.append(f"epoch {epoch} belongs to {records[epoch][0]} by its record, but "
                       f"{names[0]} acknowledged writes in it")
        first: dict[int, Op] = {}
        for op in ops:
            if op.seq is not None and first.setdefault(op.seq, op) is not op:
                out.append(f"epoch {epoch}, seq {op.seq} acknowledged for two writes: "
                           f"{first[op.seq].describe()} and {op.describe()}")
    if sync:
        highest = -1
        for epoch, ops in sorted(by_epoch.items()):
            seqs = [op.seq for op in ops if op.seq is not None]
            if seqs and min(seqs) <= highest:
                out.append(f"epoch {epoch} acknowledged seq {min(seqs)}, not above seq "
                           f"{highest} acknowledged in an earlier epoch")
            highest = max([highest, *seqs])
    for cut in cuts:
        if cut.role != "primary" or cut.epoch is None:
            continue
        late = [op for op in acks if op.start > cut.at and op.epoch is not None
                and op.epoch <= cut.epoch]
        if late:
            out.append(f"{len(late)} writes sent after {cut.node}, primary of epoch "
                       f"{cut.epoch}, lost power were acknowledged in that epoch or an older "
                       f"one, e.g. {late[0].describe()}")
    return out


_KEY = re.compile(r"key ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


def recheck_linearizability(ops: list[Op], wrong: list[str],
                            unknown: list[str]) -> tuple[list[str], list[str]]:
    """Check the keys check_all's budget left undecided again, with a larger budget."""
    keys = set()
    for text in unknown:
        found = _KEY.match(text)
        if found:
            keys.add(ast.literal_eval(found.group(1)))
    if not keys:
        return wrong, unknown
    more_wrong, still = linearizable([op for op in ops if op.key in keys],
                                     max_states=RECHECK_STATES, seconds=RECHECK_SECONDS)
    return wrong + more_wrong, still


def availability(history: History, start: float, end: float,
                 step: float = 0.1) -> tuple[float, list[tuple[float, int]]]:
    """Fraction of ``step`` windows in which some write was acknowledged; errors per second."""
    bins = max(1, int((end - start) / step))
    acked = [False] * bins
    errors: dict[int, int] = {}
    for op in history.ops():
        if op.kind != "put":
            continue
        i = int((op.end - start) / step)
        if op.acked and 0 <= i < bins:
            acked[i] = True
        elif not op.acked:
            second = int(op.end - start)
            errors[second] = errors.get(second, 0) + 1
    return sum(acked) / bins, sorted((float(s), n) for s, n in errors.items())


def failover_times(history: History) -> tuple[list[dict[str, Any]], list[tuple[float, int, str]]]:
    """Per epoch change (client view): last ack of the old epoch to first ack of the new."""
    first: dict[int, tuple[float, str]] = {}
    last: dict[int, float] = {}
    for op in history.acked():
        if op.epoch is None:
            continue
        if op.epoch not in first or op.end < first[op.epoch][0]:
            first[op.epoch] = (op.end, op.node)
        last[op.epoch] = max(last.get(op.epoch, op.end), op.end)
    epochs = sorted(first)
    out = []
    for prev, new in itertools.pairwise(epochs):
        out.append({"from_epoch": prev, "to_epoch": new,
                    "seconds": max(0.0, first[new][0] - last[prev])})
    return out, [(first[e][0], e, first[e][1]) for e in epochs]


def write_report(result: ChaosResult, path: Path, png: Path | None = None) -> None:
    doc = {"summary": result.summary(), "verdicts": result.verdicts,
           "faults": [asdict(f) for f in result.faults], "failovers": result.failovers}
    path.write_text(json.dumps(doc, indent=1, default=str))
    if png is not None:
        plot(result, png)


def plot(result: ChaosResult, png: Path) -> None:
    """Timeline: primaries per epoch, faults, power losses, client errors over time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    t0 = result.started
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(14, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [2, 1]})
    kind_colors = plt.get_cmap("tab20")      # 13 kinds: tab10 would repeat colours
    epoch_colors = plt.get_cmap("tab10")
    kinds = sorted({f.kind for f in result.faults})
    for f in result.faults:
        ax1.axvspan(f.start - t0, max(f.healed, f.start + 0.2) - t0, alpha=0.3,
                    color=kind_colors(kinds.index(f.kind) % 20))
    marks = result.epochs_over_time
    for i, (t, epoch, node) in enumerate(marks):
        until = marks[i + 1][0] if i + 1 < len(marks) else result.ended
        y = int(node.lstrip("n")) if node.lstrip("n").isdigit() else 0
        ax1.plot([t - t0, until - t0], [y, y], lw=6, solid_capstyle="butt",
                 color=epoch_colors(epoch % 10))
    cuts = [(c.at - t0, int(c.node.lstrip("n"))) for f in result.faults for c in f.power
            if c.node.lstrip("n").isdigit()]
    if cuts:
        xs, ys = zip(*cuts, strict=True)
        ax1.scatter(xs, ys, marker="X", s=60, color="black", zorder=3)
    ax1.set_ylabel("primary (node)")
    ax1.set_yticks(range(1, result.nodes + 1))
    ax1.set_title(f"chaos: {len(result.faults)} faults, seed {result.seed}, {result.mode} "
                  f"mode, availability {result.availability:.1%}")
    handles: list[Any] = [Rectangle((0, 0), 1, 1, alpha=0.3, color=kind_colors(i % 20))
                          for i in range(len(kinds))]
    labels = list(kinds)
    if cuts:
        handles.append(Line2D([], [], marker="X", color="black", linestyle="none"))
        labels.append("power loss of a node")
    ax1.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7,
               ncol=7, frameon=False)
    if result.errors_over_time:
        xs2, ys2 = zip(*result.errors_over_time, strict=True)
        ax2.bar(xs2, ys2, width=1.0, color="firebrick")
    ax2.set_ylabel("client errors / s")
    ax2.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def unavailable_reason(kinds: Iterable[str] = KINDS) -> str | None:
    """Why a soak with ``kinds`` cannot run here (power loss needs FUSE), or None."""
    from hacluster.testing.netns import namespaces_unavailable
    reason = namespaces_unavailable()
    if reason is None and os.geteuid() == 0 and shutil.which("mount") is None:
        return "mount is missing (the disk-full fault needs a tmpfs)"
    if reason is None and any(k in POWER_KINDS for k in kinds):
        reason = fuse_unavailable()
    return reason

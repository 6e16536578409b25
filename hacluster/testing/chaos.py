"""The chaos soak: a seeded nemesis against a real cluster in network namespaces, judged by the
clients' histories.

Owns one soak run: a cluster of 3 or 5 node processes, each in its own namespace (and, for the
disk-full fault, on its own small tmpfs); writer processes in every namespace and on the host,
recording every write, hot-key overwrite and read-back with CLOCK_MONOTONIC times; a randomized,
seeded schedule of faults, each injected, held, and healed before the next; and at the end the
verdicts: no acknowledged write lost (sync), no split brain, no stale read, every async loss in a
divergent-tail file, every node identical (content and sequence number), availability and
failover times. ``bench/chaos.py`` prints and plots a run; ``tests/test_chaos.py`` runs a short
one. It must never fake the network or the store, and never leave a fault unhealed, a process,
a namespace or a mount behind.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hacluster.testing.harness import Cluster, NodeProc, read_db, request
from hacluster.testing.history import (
    History,
    check_all,
    divergent_tail_keys,
    stale_reads,
)
from hacluster.testing.netns import Netns, iptables_unavailable

log = logging.getLogger(__name__)

KINDS = ("kill", "pause", "isolate_primary", "split", "one_way", "restart_all", "disk_full",
         "wipe_replica", "switchover")
TMPFS_MB = 256


@dataclass
class Fault:
    kind: str
    nodes: list[str]
    start: float                 # monotonic, injected
    healed: float = 0.0          # monotonic, healed
    recovered: float = 0.0       # monotonic, a primary acknowledged again (host writer view)
    note: str = ""


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
    def ok(self) -> bool:
        v = self.verdicts
        return (self.converged and not v.get("lost_acked") and not v.get("split_brain_windows")
                and not v.get("stale_reads") and not v.get("diverged_unreported")
                and not v.get("unrecovered") and not v.get("crashes"))

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        times = sorted(f["seconds"] for f in self.failovers)
        return {
            "faults": len(self.faults), "faults_by_kind": kinds, "seed": self.seed,
            "nodes": self.nodes, "mode": self.mode,
            "duration_s": round(self.ended - self.started, 1),
            "acked": self.verdicts.get("acked", 0),
            "lost_acked": self.verdicts.get("lost_acked", 0),
            "split_brain_windows": self.verdicts.get("split_brain_windows", 0),
            "stale_reads": self.verdicts.get("stale_reads", 0),
            "diverged_unreported": self.verdicts.get("diverged_unreported", 0),
            "unrecovered": self.verdicts.get("unrecovered", 0),
            "crashes": self.verdicts.get("crashes", 0),
            "converged": self.converged, "availability": round(self.availability, 4),
            "longest_outage_s": round(self.longest_outage, 3),
            "failovers": len(times),
            "failover_p50_s": round(times[len(times) // 2], 3) if times else None,
            "failover_max_s": round(times[-1], 3) if times else None,
        }


class ChaosRun:
    def __init__(self, root: Path, *, nodes: int = 3, mode: str = "sync", seed: int = 1,
                 kinds: tuple[str, ...] = KINDS, say: Callable[[str], None] = print) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.seed = seed
        self.mode = mode
        self.say = say
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.kinds = tuple(k for k in kinds if self._possible(k, nodes))
        self.net = Netns(self.names)
        self.cluster = Cluster(
            root, self.names, consensus=True, hosts=self.net.ip,
            replication={"mode": mode},
            prefixes={n: self.net.prefix(n) for n in self.names})
        self.mounted: list[Path] = []
        self.writers: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.stop_file = root / "writers.stop"
        self.faults: list[Fault] = []
        self.unrecovered: list[str] = []
        self.crashes: list[str] = []

    @staticmethod
    def _possible(kind: str, nodes: int) -> bool:
        if kind == "one_way":
            return iptables_unavailable() is None
        return kind in KINDS

    # -- set-up and tear-down -------------------------------------------------------------

    def start(self) -> None:
        self.net.up()
        if "disk_full" in self.kinds:
            for node in self.cluster.nodes.values():
                node.data_dir.mkdir(parents=True, exist_ok=True)
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs",
                                str(node.data_dir)], check=True, capture_output=True)
                self.mounted.append(node.data_dir)
        self.cluster.start()
        primary = self.cluster.wait_primary(60)
        self.say(f"cluster up: {len(self.names)} nodes, {self.mode} mode, primary "
                 f"{primary.name}; faults from {', '.join(self.kinds)}")
        self._start_writers()

    def _start_writers(self) -> None:
        targets = [f"{n}={self.net.ip[n]}:{self.cluster.addresses[n]}" for n in self.names]
        places: list[tuple[str, list[str]]] = [("host", [])]
        places += [(n, self.net.prefix(n)) for n in self.names]
        for place, prefix in places:
            out = self.root / f"history-{place}.json"
            log_file = open(self.root / f"writer-{place}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "hacluster.testing.history", *targets,
                 "--seconds", "36000", "--stop-file", str(self.stop_file), "--out", str(out),
                 "--prefix", f"{place}-", "--threads", "2", "--timeout", "2",
                 "--pause", "0.01", "--hot", "4"],
                stdout=log_file, stderr=subprocess.STDOUT)
            log_file.close()
            self.writers.append((place, proc, out))

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
            target.start()
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
                node.start()
        elif kind == "disk_full":
            fault.nodes = [target.name]
            ballast = target.data_dir / "ballast"
            fault.note = self._fill(ballast)
            self._hold(1.5, 3.0)
            ballast.unlink(missing_ok=True)
        elif kind == "wipe_replica":
            replicas = [n for n in nodes if n is not primary]
            victim = self.rng.choice(replicas)
            fault.nodes = [victim.name]
            victim.stop()
            shutil.rmtree(victim.data_dir / "db", ignore_errors=True)
            fault.note = "db/ removed (the Raft journal is kept)"
            victim.start()
        elif kind == "switchover":
            if primary is None:
                fault.note = "no primary to switch over from; skipped"
            else:
                fault.nodes = [primary.name]
                resp = request(primary.port, "POST", "/v1/admin/switchover", body=b"{}",
                               host=primary.host, timeout=15)
                fault.note = f"HTTP {resp.status}: {resp.body[:120].decode(errors='replace')}"
        else:
            raise ValueError(f"unknown fault {kind!r}")
        fault.healed = time.monotonic()
        return fault

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

    def _restart_crashed(self) -> None:
        """Every stop the nemesis makes is followed by a start: a dead process is a crash.
        Like systemd's Restart=on-failure, start it again, but count it against the run."""
        for node in self.cluster.nodes.values():
            if node.proc is not None and node.proc.poll() is not None:
                tail = node.log().strip().splitlines()[-3:]
                self.crashes.append(f"{node.name} exited with {node.proc.returncode}: "
                                    + " | ".join(tail))
                self.say(f"CRASH: {self.crashes[-1]}")
                node.start()

    def wait_recovered(self, fault: Fault, timeout: float = 60.0) -> None:
        """Until a writable primary exists and every node answers; else note it."""
        deadline = time.monotonic() + timeout
        probe = 0
        while time.monotonic() < deadline:
            self._restart_crashed()
            primary = self.primary()
            if primary is not None and all(
                    self._healthy(n) for n in self.cluster.nodes.values()):
                # Recovered means a write is acknowledged again, not just a status saying so
                # (in sync mode a primary without a standby to confirm is no help).
                probe += 1
                try:
                    ok = request(primary.port, "PUT", f"/v1/kv/probe-{len(self.faults)}-{probe}",
                                 body=b"p", host=primary.host, timeout=3).status == 200
                except OSError:
                    ok = False
                if ok:
                    fault.recovered = time.monotonic()
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
        for i in range(faults):
            kind = self.rng.choice(self.kinds)
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
        verdict = check_all(history, final_keys, tail_keys=tails)
        v = verdict.violations
        result.verdicts = {
            "acked": verdict.acked, "attempts": verdict.attempts,
            "lost_acked": len(v.get("lost_acked", [])),
            "split_brain_windows": len(v.get("split_brain", [])),
            "stale_reads": len(v.get("stale_reads", [])),
            "diverged_unreported": len(v.get("unreported_losses", [])),
            "seq_anomalies": len(v.get("seq_anomalies", [])),
            "unrecovered": len(self.unrecovered),
            "crashes": len(self.crashes),
            "details": {**{k: x[:5] for k, x in v.items() if x},
                        "unrecovered": self.unrecovered[:5], "crashes": self.crashes[:5]},
            "notes": verdict.notes,
        }
        if self.mode == "async":
            result.verdicts["async_stale_reads_after_loss"] = len(stale_reads(history))
        result.availability, result.errors_over_time = availability(history, started, ended)
        ends = sorted(op.end for op in history.acked())
        result.longest_outage = max((b - a for a, b in itertools.pairwise(ends)), default=0.0)
        result.failovers, result.epochs_over_time = failover_times(history)
        return result

    def _converge(self) -> tuple[bool, set[bytes] | None]:
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
    """Timeline: primaries per epoch, faults, client errors over time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = result.started
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(14, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [2, 1]})
    colors = plt.get_cmap("tab10")
    kinds = sorted({f.kind for f in result.faults})
    for f in result.faults:
        ax1.axvspan(f.start - t0, max(f.healed, f.start + 0.2) - t0, alpha=0.25,
                    color=colors(kinds.index(f.kind) % 10))
    marks = result.epochs_over_time
    for i, (t, epoch, node) in enumerate(marks):
        until = marks[i + 1][0] if i + 1 < len(marks) else result.ended
        y = int(node.lstrip("n")) if node.lstrip("n").isdigit() else 0
        ax1.plot([t - t0, until - t0], [y, y], lw=6, solid_capstyle="butt",
                 color=colors(epoch % 10))
    ax1.set_ylabel("primary (node)")
    ax1.set_yticks(range(1, result.nodes + 1))
    ax1.set_title(f"chaos: {len(result.faults)} faults, seed {result.seed}, {result.mode} "
                  f"mode, availability {result.availability:.1%}")
    from matplotlib.patches import Rectangle
    handles = [Rectangle((0, 0), 1, 1, alpha=0.25, color=colors(i % 10))
               for i in range(len(kinds))]
    ax1.legend(handles, kinds, loc="upper right", fontsize=7, ncol=3)
    if result.errors_over_time:
        xs, ys = zip(*result.errors_over_time, strict=True)
        ax2.bar(xs, ys, width=1.0, color="firebrick")
    ax2.set_ylabel("client errors / s")
    ax2.set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def unavailable_reason() -> str | None:
    from hacluster.testing.netns import namespaces_unavailable
    reason = namespaces_unavailable()
    if reason is None and os.geteuid() == 0 and shutil.which("mount") is None:
        return "mount is missing (the disk-full fault needs a tmpfs)"
    return reason

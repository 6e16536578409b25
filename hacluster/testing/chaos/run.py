"""One chaos soak run: a cluster on LazyFS in network namespaces, its writers, the nemesis.

Owns ``ChaosRun``: setting the run up (a namespace, a tmpfs and a LazyFS mount per node, the
node processes, writer processes in every namespace and on the host) and tearing it all down,
the seeded schedule of faults, injecting and healing each fault (the power losses through
``power``), restarting crashed nodes (counted against the run), waiting for recovery, and the
run from the first fault to ``judge`` (``judging``). It must never fake the network, the store
or the disk, and never leave a fault unhealed, a process, a namespace or a mount behind.
"""

from __future__ import annotations

import logging
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hacluster.testing.chaos.judging import Judging
from hacluster.testing.chaos.kinds import KINDS, POWER_KINDS, REGISTER_KEYS, RESTART_S, TMPFS_MB
from hacluster.testing.chaos.power import PowerFaults
from hacluster.testing.chaos.results import ChaosResult, Fault, describe_cut
from hacluster.testing.harness import Cluster, NodeProc, request
from hacluster.testing.history import History
from hacluster.testing.lazyfs import LazyFS, fuse_unavailable
from hacluster.testing.netns import Netns, iptables_unavailable

log = logging.getLogger(__name__)


class ChaosRun(PowerFaults, Judging):
    def __init__(self, root: Path, *, nodes: int = 3, mode: str = "sync", seed: int = 1,
                 kinds: tuple[str, ...] = KINDS, cover: bool = True,
                 storage: dict[str, Any] | None = None,
                 say: Callable[[str], None] = print,
                 on_fault: Callable[[ChaosRun, Fault], None] | None = None) -> None:
        self.root = root
        self.on_fault = on_fault      # after each fault has healed and the cluster recovered
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
            if self.on_fault is not None:
                self.on_fault(self, fault)
            time.sleep(self.rng.uniform(0.3, 1.0))
        time.sleep(1.0)
        history = self._stop_writers()
        ended = time.monotonic()
        return self.judge(history, started, ended)

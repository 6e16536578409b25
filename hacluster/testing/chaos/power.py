"""The chaos soak's power losses: cutting nodes' disks, and reading what each one kept.

Owns the ``PowerFaults`` mixin of ``ChaosRun``: the four power faults (the primary; a
synchronous standby right after it confirmed a probe write, then the primary killed; every
node; a majority right after a failover), each cut (SIGKILL, LazyFS's power loss, then the
database's latest seq read before the node restarts, with the role that says what the disk had
to keep), the probe writes, the primary's own status, and the epoch records every node shows.
It must never restart a node before its disk was read, and never leave a cut node down (each
fault starts every node it stopped).
"""

from __future__ import annotations

import itertools
import random
import time
from typing import TYPE_CHECKING

from hacluster.testing.chaos.results import Fault, PowerCut
from hacluster.testing.chaos.verdicts import disk_seq
from hacluster.testing.harness import Cluster, NodeProc, request
from hacluster.testing.lazyfs import LazyFS


class PowerFaults:
    """The power faults of ``ChaosRun`` (which provides what is declared here)."""

    if TYPE_CHECKING:
        rng: random.Random
        cluster: Cluster
        disks: dict[str, LazyFS]
        probes: int
        epoch_records: dict[int, tuple[str, int]]
        epoch_problems: dict[str, None]

        def primary(self) -> NodeProc | None: ...

        def _hold(self, low: float, high: float) -> None: ...

        def _start(self, node: NodeProc) -> None: ...

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

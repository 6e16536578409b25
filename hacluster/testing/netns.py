"""Network namespaces for fault tests: one namespace per node on a bridge, and ways to cut it.

Owns creating (and always removing) the namespaces, veth pairs and bridges, and the network
faults tests inject with them: take a node's link down (``cut``/``heal``), split the nodes into
two groups that reach each other only within the group (``split``/``join``: the second group's
links move to a second bridge), and drop one direction of traffic with iptables inside a
namespace (``drop_inbound``/``allow_inbound``). Needs root; ``namespaces_unavailable`` says why
not, for a clear skip. It must never touch the host's own interfaces or rules: everything it
makes is named with a random tag and removed by ``down``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable


def sh(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")


def namespaces_unavailable() -> str | None:
    """None when namespaces can be made here; otherwise the reason for a skip."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is missing"
    probe = f"hcprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip() or 'ip failed'}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def iptables_unavailable() -> str | None:
    if shutil.which("iptables") is None:
        return "iptables is not installed (Debian package iptables)"
    return None


class Netns:
    """Namespaces on a bridge; the host keeps an address on it and reaches every node."""

    def __init__(self, names: Iterable[str]) -> None:
        names = list(names)
        self.tag = secrets.token_hex(2)
        self.subnet = f"10.{200 + int(self.tag[0], 16)}.{int(self.tag[1:], 16) % 250}"
        self.bridge = f"hcb{self.tag}"
        self.bridge2 = f"hcc{self.tag}"     # the other side of a split
        self.ns = {n: f"hc{self.tag}{n}" for n in names}
        self.host_if = {n: f"hc{self.tag}h{i}" for i, n in enumerate(names)}
        self.ip = {n: f"{self.subnet}.{i + 1}" for i, n in enumerate(names)}
        self._split: set[str] = set()
        self._dropped: dict[str, list[str]] = {}

    def prefix(self, name: str) -> list[str]:
        """Run a command inside ``name``'s namespace."""
        return ["ip", "netns", "exec", self.ns[name]]

    def up(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        sh("ip", "link", "add", self.bridge2, "type", "bridge")
        sh("ip", "link", "set", self.bridge2, "up")
        for n, ns in self.ns.items():
            peer = self.host_if[n] + "p"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", self.host_if[n], "type", "veth", "peer", "name", peer)
            sh("ip", "link", "set", peer, "netns", ns)
            sh("ip", "link", "set", self.host_if[n], "master", self.bridge)
            sh("ip", "link", "set", self.host_if[n], "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.ip[n]}/24", "dev", peer)
            sh("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def cut(self, n: str) -> None:
        """Take ``n``'s link down: it reaches no one and no one reaches it."""
        sh("ip", "link", "set", self.host_if[n], "down")

    def heal(self, n: str) -> None:
        sh("ip", "link", "set", self.host_if[n], "up")

    def split(self, group: Iterable[str]) -> None:
        """Move ``group`` to the second bridge: it talks within itself, not to the rest
        (nor to the host, which sits on the first bridge)."""
        for n in group:
            sh("ip", "link", "set", self.host_if[n], "master", self.bridge2)
            self._split.add(n)

    def join(self) -> None:
        for n in sorted(self._split):
            sh("ip", "link", "set", self.host_if[n], "master", self.bridge)
        self._split.clear()

    def drop_inbound(self, n: str, sources: Iterable[str]) -> None:
        """One-way loss: ``n`` receives nothing from ``sources`` (it can still send)."""
        for src in sources:
            sh(*self.prefix(n), "iptables", "-A", "INPUT", "-s", self.ip[src], "-j", "DROP")
            self._dropped.setdefault(n, []).append(src)

    def allow_inbound(self, n: str) -> None:
        for src in self._dropped.pop(n, []):
            sh(*self.prefix(n), "iptables", "-D", "INPUT", "-s", self.ip[src], "-j", "DROP")

    def heal_all(self) -> None:
        for n in list(self._dropped):
            self.allow_inbound(n)
        self.join()
        for n in self.ns:
            self.heal(n)

    def down(self) -> None:
        for n, ns in self.ns.items():
            subprocess.run(["ip", "link", "del", self.host_if[n]], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for bridge in (self.bridge, self.bridge2):
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)

"""A network partition of the primary, with real network namespaces (needs root).

Each node runs in its own namespace (``ip netns``) on a veth pair into a bridge; taking the
primary's link down (``ip link set … down``) cuts it off from the majority. A writer inside the
primary's namespace keeps writing to it: no write may be acknowledged later than the primary's
lease after the cut. The majority elects a new primary; when the link comes back the old primary
rejoins, and any write it acknowledged that the others never got is in its divergent-tail file.
Skips, saying why, where namespaces cannot be made.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest

from hacluster.testing.harness import TOKEN, Cluster, wait_for

WRITER = r"""
import http.client, json, sys, time
host, port, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
end, i, lines = time.monotonic() + seconds, 0, []
while time.monotonic() < end:
    key = f"p{i:06d}"
    try:
        c = http.client.HTTPConnection(host, port, timeout=1)
        c.request("PUT", "/v1/kv/" + key, body=b"x", headers={"Authorization": "Bearer %s"})
        r = c.getresponse(); r.read(); status = r.status
    except OSError:
        status = 0
    lines.append([time.monotonic(), key, status])
    i += 1
    time.sleep(0.005)
json.dump(lines, open(out, "w"))
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


class Netns:
    """Three namespaces on a bridge; ``cut(i)``/``heal(i)`` take node i's link down/up."""

    def __init__(self, names: list[str]) -> None:
        self.tag = secrets.token_hex(2)
        self.subnet = f"10.{200 + int(self.tag[0], 16)}.{int(self.tag[1:], 16) % 250}"
        self.bridge = f"hcb{self.tag}"
        self.ns = {n: f"hc{self.tag}{n}" for n in names}
        self.host_if = {n: f"hc{self.tag}h{i}" for i, n in enumerate(names)}
        self.ip = {n: f"{self.subnet}.{i + 1}" for i, n in enumerate(names)}

    def up(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{self.subnet}.254/24", "dev", self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
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
        sh("ip", "link", "set", self.host_if[n], "down")

    def heal(self, n: str) -> None:
        sh("ip", "link", "set", self.host_if[n], "up")

    def down(self) -> None:
        for n, ns in self.ns.items():
            subprocess.run(["ip", "link", "del", self.host_if[n]], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def namespaces_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"hcprobe{secrets.token_hex(2)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip() or 'ip failed'}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


pytestmark = pytest.mark.skipif(bool(namespaces_unavailable()),
                                reason=namespaces_unavailable() or "")


@pytest.fixture
def net_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, Netns]]:
    names = ["n1", "n2", "n3"]
    net = Netns(names)
    net.up()
    # Async: the cut-off primary could acknowledge on its own; only its lease stops it.
    cluster = Cluster(tmp_path, names, consensus=True, hosts=net.ip,
                      replication={"mode": "async"},
                      prefixes={n: ["ip", "netns", "exec", ns] for n, ns in net.ns.items()})
    try:
        cluster.start()
        yield cluster, net
    finally:
        cluster.stop()
        net.down()


def test_partitioned_primary_stops_acknowledging_within_its_lease(
        net_cluster: tuple[Cluster, Netns], tmp_path: Path) -> None:
    cluster, net = net_cluster
    old = cluster.wait_primary(30)
    for i in range(20):
        assert old.put(f"k{i}", b"v").status == 200
    cluster.wait_converged()
    acks_file = tmp_path / "writer.json"
    writer = subprocess.Popen(
        ["ip", "netns", "exec", net.ns[old.name], sys.executable, "-c", WRITER % TOKEN,
         old.host, str(old.port), "6", str(acks_file)])
    time.sleep(1.0)                                    # the writer is being acknowledged
    cut_at = time.monotonic()
    net.cut(old.name)
    others = [n for n in cluster.nodes.values() if n is not old]
    new = cluster.wait_primary(20, among=others)
    failover_s = time.monotonic() - cut_at
    writer.wait(30)
    lines = json.loads(acks_file.read_text())
    acked = [(t, key) for t, key, status in lines if status == 200]
    assert any(t < cut_at for t, _ in acked), "the writer must have been acknowledged before"
    late = [(round(t - cut_at, 3), key) for t, key in acked if t > cut_at + 0.6]
    assert not late, f"acknowledged after the lease (0.6 s) ran out: {late[:5]}"
    assert failover_s < 15
    # Heal: the old primary rejoins the new one; what it acknowledged alone is in a tail file.
    net.heal(old.name)
    wait_for(lambda: old.status()["primary"] == new.name, 30, "the old primary to rejoin")
    cluster.wait_converged(timeout=60)
    kept: set[str] = set()
    for path in (old.data_dir / "divergent").glob("*.cbor"):
        with open(path, "rb") as f:
            doc = cbor2.load(f)
        kept.update(op[2].decode() for b in doc["batches"] for op in b["ops"])
    from hacluster.testing.harness import read_db
    cluster.stop()
    _, contents = read_db(new.data_dir / "db")
    lost = [key for _, key in acked if key.encode() not in contents["default"]]
    assert all(key in kept for key in lost), f"lost and not in a tail file: {lost}"

"""What a service manager sees of a node: READY=1 and STOPPING=1 on $NOTIFY_SOCKET (systemd's
Type=notify), and the running version in /health and /status."""

from __future__ import annotations

import importlib.metadata
import socket
from pathlib import Path

from hacluster.testing.harness import Cluster


def test_a_node_tells_systemd_when_it_is_ready_and_when_it_stops(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, ["n1"], primary="n1")
    node = cluster.nodes["n1"]
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(20)
        node.env["NOTIFY_SOCKET"] = str(address)
        node.start()
        try:
            assert sock.recv(256) == b"READY=1"
            version = importlib.metadata.version("hacluster")
            assert node.get("/health", token=None).json()["version"] == version
            assert node.status()["version"] == version
        finally:
            node.stop()
        assert sock.recv(256) == b"STOPPING=1"

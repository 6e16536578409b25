"""``hacluster up``: every node of one config as child processes on this machine.

Owns starting the node processes (primary first), waiting until each answers /health, telling
the user where they listen and how to try them, forwarding their logs, and stopping them all
on Ctrl-C or SIGTERM. It must never leave a node process behind when it exits.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from types import FrameType

from hacluster.config import ClusterConfig

HEALTH_TIMEOUT = 30.0


def _context(cfg: ClusterConfig) -> ssl.SSLContext | None:
    """With TLS, the nodes are verified against the cluster CA, as every client does."""
    return (ssl.create_default_context(cafile=str(cfg.tls.ca_file)) if cfg.tls.enabled
            else None)


def _healthy(url: str, tls: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1, context=tls) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait_for_primary(cfg: ClusterConfig, stopping: Callable[[], bool]) -> str | None:
    """Consensus mode: the node whose status says it is a writable primary."""
    deadline = time.monotonic() + HEALTH_TIMEOUT
    while time.monotonic() < deadline and not stopping():
        for node in cfg.nodes:
            try:
                with urllib.request.urlopen(f"{node.api.url}/status", timeout=1,
                                            context=_context(cfg)) as resp:
                    status = json.loads(resp.read())
            except (urllib.error.URLError, OSError, ValueError):
                continue
            if status.get("role") == "primary" and status.get("writable"):
                return node.name
        time.sleep(0.2)
    return None


def run_local_cluster(cfg: ClusterConfig, config_path: str, log_level: str) -> int:
    # Static mode: the primary first, so replicas find it; with consensus the order is free.
    order = sorted(cfg.nodes, key=lambda n: n.name != cfg.primary)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for node in order:
            procs[node.name] = subprocess.Popen(
                [sys.executable, "-m", "hacluster", "run", "--config", config_path,
                 "--node", node.name, "--log-level", log_level])
            deadline = time.monotonic() + HEALTH_TIMEOUT
            while not _healthy(node.api.url, _context(cfg)):
                if stopping:
                    return 0
                if procs[node.name].poll() is not None or time.monotonic() > deadline:
                    print(f"hacluster up: {node.name} did not start (see its log above)",
                          file=sys.stderr)
                    return 1
                time.sleep(0.1)
        leader = cfg.primary or _wait_for_primary(cfg, lambda: stopping)
        if leader is None:
            print("hacluster up: no primary was elected in time (see the logs above)",
                  file=sys.stderr)
            return 1
        primary = cfg.node(leader).api.url
        curl = f"curl -s --cacert {cfg.tls.ca_file}" if cfg.tls.enabled else "curl -s"
        print("\n".join([
            "",
            f"hacluster up: {len(procs)} nodes running (primary {leader}"
            f"{', elected' if cfg.uses_consensus else ''}):",
            *[f"  {n.name:<6} {n.api.url}   data {n.data_dir}" for n in order],
            "Try (HACLUSTER_TOKEN: a write token, or cluster.token of your config):",
            f"  {curl} {primary}/status",
            f"  {curl} -X PUT -H \"Authorization: Bearer $HACLUSTER_TOKEN\" "
            f"--data-binary hello '{primary}/v1/kv/greeting?cf=default'",
            f"  {curl} {order[-1].api.url}/status     # a replica: same applied_seq",
            "Ctrl-C stops all nodes.",
            "",
        ]), flush=True)
        while not stopping:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    print(f"hacluster up: {name} exited with {proc.returncode}; stopping",
                          file=sys.stderr)
                    return 1
            time.sleep(0.2)
        return 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

"""Test harness: real hacluster node processes on loopback, real RocksDB dirs, real HTTP.

Owns writing per-node config files, starting and signalling node processes, a tiny HTTP client,
waiting for convergence and reading a stopped node's RocksDB directory. It must never fake the
network or the store: tests that use it talk to real processes over real sockets.
"""

from __future__ import annotations

import gc
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rocksdict
import yaml

TOKEN = "test-token-0123456789abcdef"
RAFT_PASSWORD = "test-raft-password-0123456789"
CFS = ["default", "users", "events", "meta"]
STOP_TIMEOUT_S = 20.0
# Nodes that did not exit within STOP_TIMEOUT_S of a SIGTERM (and were killed): the suite's
# conftest fails the test during which one is added.
STOP_HANGS: list[str] = []


def process_state(pid: int) -> str | None:
    """The process's state letter in /proc (T: stopped by a signal), or None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _paused(pid: int) -> bool:
    """The process is stopped (SIGSTOP)."""
    return process_state(pid) in ("T", "t")


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the thing we wait for may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc})")


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


# Ports served over TLS, and the client context that reaches them: every helper (the history
# writer, the nodes' get/put) then speaks https to a TLS cluster without being told.
TLS_PORTS: dict[int, ssl.SSLContext] = {}


def request(port: int, method: str, path: str, body: bytes | None = None,
            token: str | None = TOKEN, headers: dict[str, str] | None = None,
            timeout: float = 10.0, host: str = "127.0.0.1") -> Response:
    ctx = TLS_PORTS.get(port)
    conn = (http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
            if ctx is not None else http.client.HTTPConnection(host, port, timeout=timeout))
    try:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


@dataclass
class NodeProc:
    name: str
    port: int
    data_dir: Path
    config: Path
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    prefix: list[str] = field(default_factory=list)   # e.g. ["ip", "netns", "exec", NS]
    token: str = TOKEN              # what get/post/put send unless told otherwise

    def start(self, *extra: str) -> None:
        self.launch(*extra)
        self.wait_serving()

    def launch(self, *extra: str) -> None:
        """Start the process without waiting for it (``wait_serving`` does)."""
        env = {**os.environ, **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "hacluster", "run", "--config",
             str(self.config),
             "--node", self.name, *extra],
            stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def wait_serving(self) -> None:
        wait_for(lambda: self.get("/health").status == 200, 20, f"{self.name} to serve /health")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT_S (recorded in STOP_HANGS: a running node
        must stop on SIGTERM). A node a test left paused (SIGSTOP) would handle SIGTERM only
        once continued: it is killed at once, as it would have been after the wait."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if _paused(self.proc.pid):
                self.proc.kill()
            else:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    STOP_HANGS.append(f"{self.name} (pid {self.proc.pid}, log {self.log_path})"
                                      f" still ran {STOP_TIMEOUT_S:.0f} s after SIGTERM")
                    self.proc.kill()
            self.proc.wait(10)
        return self.proc.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, **kw: Any) -> Response:
        kw.setdefault("token", self.token)
        return request(self.port, "GET", path, host=self.host, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Response:
        data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        kw.setdefault("token", self.token)
        return request(self.port, "POST", path, body=data, host=self.host, **kw)

    def put(self, key: str, value: bytes, cf: str = "default", **kw: Any) -> Response:
        kw.setdefault("token", self.token)
        return request(self.port, "PUT", f"/v1/kv/{key}?cf={cf}", body=value, host=self.host,
                       **kw)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/status").json()
        return result

    def hash(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/v1/admin/hash").json()
        return result

    def batch(self, ops: list[dict[str, Any]]) -> dict[str, Any]:
        resp = self.post("/v1/batch", {"ops": ops})
        assert resp.status == 200, (resp.status, resp.body)
        result: dict[str, Any] = resp.json()
        return result


class Cluster:
    """Three (or more) node processes with per-node config files in ``root``."""

    def __init__(self, root: Path, names: Iterable[str] = ("n1", "n2", "n3"), *,
                 primary: str = "n1", replication: dict[str, Any] | None = None,
                 storage: dict[str, Any] | None = None, consensus: bool = False,
                 consensus_timing: dict[str, Any] | None = None,
                 hosts: dict[str, str] | None = None,
                 prefixes: dict[str, list[str]] | None = None,
                 limits: dict[str, Any] | None = None,
                 tls: dict[str, Any] | None = None,
                 auth: dict[str, Any] | None = None, token: str = TOKEN,
                 extra: dict[str, Any] | None = None,
                 node_extra: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.root = root
        self.extra = extra or {}    # more top-level config sections (hooks, watchdog, ...)
        # Sections that differ per node's config file (managed mode: the service's port).
        self.node_extra = node_extra
        self.tls = tls              # the config's tls section (None: tls off)
        self.auth = auth            # the config's auth section (None: the shared TOKEN)
        root.mkdir(parents=True, exist_ok=True)
        names = list(names)
        ports = free_ports(len(names) * 2)
        self.consensus = consensus
        self.consensus_timing = consensus_timing or {}
        self.limits = limits or {}
        self.raft_ports = dict(zip(names, ports[len(names):], strict=True))
        self.primary_name = primary
        self.replication = {"heartbeat_interval": 0.2, "reconnect_backoff_min": 0.05,
                            "reconnect_backoff_max": 0.5, **(replication or {})}
        self.storage = {"wal_ttl_seconds": 3600, "wal_size_limit_mb": 4096,
                        "write_buffer_size_mb": 4, **(storage or {})}
        self.addresses = dict(zip(names, ports[:len(names)], strict=True))
        self.hosts = {n: (hosts or {}).get(n, "127.0.0.1") for n in names}
        self.nodes: dict[str, NodeProc] = {}
        for port in self.addresses.values():
            # A port an earlier TLS cluster used is this cluster's now: plain HTTP unless
            # this one has TLS too (else a request to it would speak TLS to plain HTTP).
            TLS_PORTS.pop(port, None)
        if tls is not None:
            client = ssl.create_default_context(cafile=tls["ca_file"])
            for port in self.addresses.values():
                TLS_PORTS[port] = client
        for name in names:
            cfg = self.write_config(name)
            self.nodes[name] = NodeProc(name, self.addresses[name], root / "data" / name, cfg,
                                        root / f"{name}.log", host=self.hosts[name],
                                        prefix=(prefixes or {}).get(name, []), token=token)

    def config_doc(self, addresses: dict[str, int] | None = None,
                   replication: dict[str, Any] | None = None,
                   tags: dict[str, list[str]] | None = None) -> dict[str, Any]:
        addresses = addresses or self.addresses
        doc: dict[str, Any] = {
            "cluster": {"name": "test", "primary": self.primary_name, "epoch": 1,
                        **({} if self.auth else {"token": TOKEN})},
            "tls": self.tls or False,
            **({"auth": self.auth} if self.auth else {}),
            **self.extra,
            "column_families": CFS,
            "storage": self.storage,
            "replication": {**self.replication, **(replication or {})},
            **({"limits": self.limits} if self.limits else {}),
            "nodes": [{"name": n, "api": f"{self.hosts[n]}:{p}",
                       "data_dir": str(self.root / "data" / n)} for n, p in addresses.items()],
        }
        if self.consensus:
            del doc["cluster"]["primary"]
            doc["cluster"]["raft_password"] = RAFT_PASSWORD
            doc["consensus"] = self.consensus_timing
            for node in doc["nodes"]:
                node["raft"] = f"{self.hosts[node['name']]}:{self.raft_ports[node['name']]}"
                if tags and node["name"] in tags:
                    node["tags"] = tags[node["name"]]
        return doc

    def write_config(self, name: str, **kw: Any) -> Path:
        path = self.root / f"{name}.yaml"
        doc = self.config_doc(**kw)
        if self.node_extra is not None:
            doc.update(self.node_extra(name))
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    @property
    def primary(self) -> NodeProc:
        return self.nodes[self.primary_name]

    @property
    def replicas(self) -> list[NodeProc]:
        return [n for name, n in self.nodes.items() if name != self.primary_name]

    def start(self, at_once: bool = True) -> None:
        """Start every node: launch them all, then wait for each to serve (a node's start is
        mostly ~0.5 s of imports, and the nodes find each other on their own); with
        ``at_once=False`` each serves before the next starts (the first node gets a head
        start: which node leads first is then more predictable, never certain)."""
        order = (list(self.nodes.values()) if self.consensus
                 else [self.primary, *self.replicas])
        try:
            for node in order:
                node.launch()
                if not at_once:
                    node.wait_serving()
            if at_once:
                for node in order:
                    node.wait_serving()
        except BaseException:
            # A node that did not come up fails the test; the ones that did must not outlive
            # it: strays share the test Raft password and would talk to later clusters.
            for node in order:
                node.kill()
            raise

    def writable_primary(self, among: Iterable[NodeProc] | None = None) -> NodeProc | None:
        """The node that says it is primary and its write gate is open (consensus mode)."""
        found = []
        for node in among if among is not None else self.nodes.values():
            if not node.running:
                continue
            try:
                status = node.status()
            except OSError:
                continue
            if status["role"] == "primary" and status.get("writable"):
                found.append(node)
        assert len(found) <= 1, f"two writable primaries: {[n.name for n in found]}"
        return found[0] if found else None

    def wait_primary(self, timeout: float = 20.0,
                     among: Iterable[NodeProc] | None = None) -> NodeProc:
        nodes = list(among) if among is not None else None
        result: NodeProc = wait_for(lambda: self.writable_primary(nodes), timeout,
                                    "a writable primary")
        self.primary_name = result.name
        return result

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop()

    def wait_converged(self, timeout: float = 30.0,
                       nodes: Iterable[NodeProc] | None = None) -> dict[str, Any]:
        """Wait until every replica has applied the primary's seq; return the primary's hash."""
        target = self.primary.status()["applied_seq"]
        check = list(nodes) if nodes is not None else self.replicas

        def caught_up() -> bool:
            return all(n.status()["applied_seq"] == target for n in check)

        wait_for(caught_up, timeout, f"replicas to reach seq {target}: "
                 + ", ".join(f"{n.name}={self._seq(n)}" for n in check))
        expected = self.primary.hash()
        for node in check:
            assert node.hash() == expected, f"{node.name} differs from the primary"
        return expected

    @staticmethod
    def _seq(node: NodeProc) -> Any:
        try:
            return node.status()["applied_seq"]
        except Exception as exc:
            return f"unreachable ({exc})"


def read_db(db_dir: Path) -> tuple[int, dict[str, dict[bytes, bytes]]]:
    """Read a stopped node's DB: (latest seq, {cf: {key: value}})."""
    opts = rocksdict.Options(raw_mode=True)
    names = rocksdict.Rdict.list_cf(str(db_dir), opts)
    db = rocksdict.Rdict(str(db_dir), opts, column_families={
        n: rocksdict.Options(raw_mode=True) for n in names if n != "default"},
        access_type=rocksdict.AccessType.read_only())
    try:
        contents = {}
        for name in names:
            view = db if name == "default" else db.get_column_family(name)
            contents[name] = {bytes(k): bytes(v) for k, v in view.items()}  # type: ignore[arg-type]
            del view
        return int(db.latest_sequence_number()), contents
    finally:
        db.close()
        del db
        gc.collect()


class FaultyProxy:
    """A real TCP proxy on loopback that can corrupt or cut what the upstream sends.

    ``mode`` is "pass", "flip" (change one byte of ``pattern`` wherever it passes, keeping the
    length so HTTP framing stays valid and only the frame checksum can notice) or "truncate"
    (forward the data up to the middle of ``pattern``, then close both sides) or "drop"
    (forward nothing downstream: a stream that stays silent).
    """

    def __init__(self, upstream_port: int, pattern: bytes = b"") -> None:
        import threading
        self.upstream_port = upstream_port
        self.pattern = pattern
        self.mode = "pass"
        self.hits = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()

    def _accept(self) -> None:
        import threading
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the upstream is down: the client sees its connection close
                client.close()
                continue
            self._socks += [client, upstream]
            for src, dst, down in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(src, dst, down), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if downstream and self.mode == "drop":
                    continue  # swallowed: the client sees a stream that stays silent
                if downstream and self.pattern and self.pattern in data and self.mode != "pass":
                    self.hits += 1
                    i = data.index(self.pattern)
                    if self.mode == "flip":
                        data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
                    elif self.mode == "truncate":
                        dst.sendall(data[:i + len(self.pattern) // 2])
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self._stop = True
        self.listener.close()
        for s in self._socks:
            try:
                s.close()
            except OSError:
                pass

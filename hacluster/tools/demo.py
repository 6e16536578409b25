"""``hacluster demo``: three nodes on loopback, a steady writer, a SIGKILL of the primary, and the
failover shown live.

Owns the newcomer's tour: a temporary directory with a generated config (consensus, sync mode by
default, random secrets, free ports), three ``hacluster run`` processes, a writer that records
every acknowledgement through the Python client, progress lines twice a second, the kill of the
primary, the measured failover (last acknowledgement by the old primary → first by the new
one), the restart of the killed node, the check that every node converged and that no
acknowledged write is missing, and the clean-up (which first stops any node the user started
by hand on the demo's temporary directory). It must never leave a node process behind (except
with ``--keep``, until Ctrl-C) and never report a result it did not check.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from hacluster.client import Client, HaclusterError, OutcomeUnknown

NAMES = ("n1", "n2", "n3")
STRAY_GRACE_S = 10.0     # a node started by hand gets this long after SIGTERM, then SIGKILL


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def write_config(root: Path, mode: str) -> tuple[Path, dict[str, Any]]:
    ports = free_ports(2 * len(NAMES))
    doc: dict[str, Any] = {
        "cluster": {"name": "demo", "token": secrets.token_hex(16),
                    "raft_password": secrets.token_hex(16)},
        "tls": "off",                 # loopback only
        "column_families": ["default"],
        "replication": {"mode": mode, "heartbeat_interval": 0.2},
        "storage": {"write_buffer_size_mb": 8},
        "nodes": [{"name": n, "api": f"127.0.0.1:{ports[i]}",
                   "raft": f"127.0.0.1:{ports[len(NAMES) + i]}",
                   "data_dir": str(root / "data" / n)} for i, n in enumerate(NAMES)],
    }
    path = root / "cluster.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, doc


@dataclass
class Ack:
    key: str
    node: str
    epoch: int
    at: float


@dataclass
class Writer:
    client: Client
    acks: list[Ack] = field(default_factory=list)
    unknown: int = 0
    refused: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            key = f"demo/{i:08d}"
            i += 1
            try:
                r = self.client.put(key, b"x" * 32)
            except OutcomeUnknown:
                self.unknown += 1          # in flight when the primary died: not acknowledged
                continue
            except HaclusterError:
                self.refused += 1
                continue
            self.acks.append(Ack(key, r.node, r.epoch, time.monotonic()))


class Demo:
    def __init__(self, root: Path, mode: str, out: Any = sys.stdout,
                 temporary: bool = True) -> None:
        self.root = root
        self.temporary = temporary
        self.mode = mode
        self.out = out
        self.config, self.doc = write_config(root, mode)
        self.urls = {n["name"]: f"http://{n['api']}" for n in self.doc["nodes"]}
        self.client = Client(list(self.urls.values()), self.doc["cluster"]["token"],
                             timeout=2.0, failover_timeout=1.0)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f}s] {text}", file=self.out, flush=True)

    def start(self, name: str) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "hacluster", "run", "--config", str(self.config),
             "--node", name], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def status(self, name: str) -> dict[str, Any] | None:
        try:
            answer = self.client.request(self.urls[name], "GET", "/status", timeout=1.0)
        except OSError:
            return None
        doc: dict[str, Any] = json.loads(answer.body)
        return doc

    def primary(self) -> tuple[str, int] | None:
        for name in self.procs:
            st = self.status(name) if self.procs[name].poll() is None else None
            if st and st["role"] == "primary" and st.get("writable"):
                return name, int(st["epoch"])
        return None

    def wait_primary(self, timeout: float = 30.0) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.primary()
            if found:
                return found
            time.sleep(0.05)
        raise RuntimeError(f"no primary elected within {timeout} s; see {self.root}/*.log")

    def progress(self, writer: Writer, seconds: float, until: Any = None) -> None:
        """Print a line twice a second for ``seconds`` (or until ``until()`` is true)."""
        end = time.monotonic() + seconds
        last_count, last_t = len(writer.acks), time.monotonic()
        while time.monotonic() < end and not (until and until()):
            time.sleep(0.5)
            now = time.monotonic()
            count = len(writer.acks)
            rate = (count - last_count) / (now - last_t)
            last_count, last_t = count, now
            latest = writer.acks[-1] if writer.acks else None
            where = f"primary {latest.node} (epoch {latest.epoch})" if latest else "no primary"
            if latest and now - latest.at > 0.3:
                where = f"NO PRIMARY for {now - latest.at:.2f} s (last: {latest.node})"
            self.say(f"{where:<44} acknowledged {count:>7}  {rate:7.0f}/s  "
                     f"unknown {writer.unknown}")

    def converged(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seqs = {n: (self.status(n) or {}).get("applied_seq") for n in self.procs}
            if len(set(seqs.values())) == 1 and None not in seqs.values():
                hashes = [self.client.request(self.urls[n], "GET", "/v1/admin/hash").json()
                          for n in self.procs]
                if all(h == hashes[0] for h in hashes):
                    return True
            time.sleep(0.2)
        return False

    def run(self, keep: bool) -> int:
        self.say(f"starting 3 nodes on loopback ({self.mode} replication) in {self.root}")
        for name in NAMES:
            self.start(name)
        old, epoch = self.wait_primary()
        self.say(f"{old} elected primary (epoch {epoch})")
        writer = Writer(self.client)
        thread = threading.Thread(target=writer.run, daemon=True)
        thread.start()
        self.progress(writer, 3.0)
        before = len(writer.acks)
        self.say(f">>> killing the primary {old} with SIGKILL ({before} writes acknowledged)")
        self.procs[old].send_signal(signal.SIGKILL)
        self.procs[old].wait(10)
        killed_at = time.monotonic()

        def new_primary_acks() -> bool:
            return any(a.node != old for a in writer.acks[before:])

        self.progress(writer, 30.0, until=new_primary_acks)
        first_new = next((a for a in writer.acks[before:] if a.node != old), None)
        if first_new is None:
            self.say("no new primary acknowledged a write within 30 s")
            return self.finish(writer, thread, keep, ok=False)
        last_old = max((a.at for a in writer.acks if a.node == old), default=killed_at)
        self.say(f"<<< failover: {first_new.node} is primary (epoch {first_new.epoch}); "
                 f"{first_new.at - last_old:.2f} s from the last write acknowledged by {old} "
                 f"to the first by {first_new.node}")
        self.progress(writer, 2.0)
        self.say(f"restarting {old}: it rejoins as a replica")
        self.start(old)
        self.progress(writer, 2.0)
        return self.finish(writer, thread, keep, ok=True)

    def finish(self, writer: Writer, thread: threading.Thread, keep: bool, ok: bool) -> int:
        writer.stop.set()
        thread.join(10)
        self.say(f"writer stopped: {len(writer.acks)} writes acknowledged, "
                 f"{writer.unknown} with unknown outcome (in flight at the kill)")
        converged = self.converged()
        self.say("every node converged: same seq and same content hash" if converged else
                 "nodes did NOT converge within 60 s")
        present = {k for k, _ in self.client.scan("demo/", page=10_000)}
        lost = [a.key for a in writer.acks if a.key.encode() not in present]
        self.say(f"acknowledged writes lost: {len(lost)}"
                 + (f" (first: {lost[:3]})" if lost else "")
                 + (" (sync mode: none may be)" if self.mode == "sync" else
                    " (async mode: loss is bounded by lag; see divergent tails in /status)"))
        good = ok and converged and (not lost or self.mode == "async")
        if keep:
            self.hold_until_interrupted(self.show_keep)
        return 0 if good else 1

    @staticmethod
    def hold_until_interrupted(show: Callable[[], None]) -> None:
        """``--keep``: show how to use the cluster, which runs until Ctrl-C."""
        # The lines are printed inside the ``try``: a user (or a script) reading them may
        # press Ctrl-C at once, before the print returns, and that is a clean stop too.
        try:
            show()
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass

    def show_keep(self) -> None:
        token = self.doc["cluster"]["token"]
        found = self.primary()
        # The roles as they are now (the failover moved the primary): the write and the read
        # go through the two replicas, so the 307 to the primary is what the user sees.
        primary = found[0] if found else NAMES[0]
        replicas = [n for n in self.urls if n != primary]
        role = f"the primary {primary}" if found else "the primary (none found just now)"
        gone = (" and removes its files" if self.temporary else
                f"; its files stay in {self.root}")
        lines = ["", f"The cluster keeps running (Ctrl-C stops it{gone}):",
                 *[f"  {n}  {u}   log {self.root / (n + '.log')}" for n, u in self.urls.items()],
                 f"  config {self.config}", "Try:",
                 f"  export HACLUSTER_TOKEN={token}",
                 f"  hacluster status --config {self.config}",
                 f"  curl -s {self.urls[primary]}/leader",
                 f"  # write through the replica {replicas[0]} (a 307 sends it to {role}):",
                 f"  curl -sL --location-trusted -X PUT -H \"Authorization: Bearer "
                 f"$HACLUSTER_TOKEN\" --data-binary hello {self.urls[replicas[0]]}/v1/kv/greeting",
                 f"  # read it back through the replica {replicas[1]}:",
                 f"  curl -sL --location-trusted -H \"Authorization: Bearer $HACLUSTER_TOKEN\""
                 f" {self.urls[replicas[1]]}/v1/kv/greeting",
                 f"  hacluster switchover --config {self.config}", ""]
        print("\n".join(lines), file=self.out, flush=True)


def _under(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(f"{r}{os.sep}") for r in roots)


def strays(root: Path) -> list[psutil.Process]:
    """``hacluster`` processes other than the demo's own that use ``root``: a node the user
    restarted by hand (``hacluster run --config ROOT/cluster.yaml``, or a relative path from a
    working directory under ``ROOT``). Other programs that name it (``tail -f ROOT/n1.log``)
    are none of the demo's business."""
    found = []
    mine = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    roots = {str(root), str(root.resolve())}     # a working directory reads resolved
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        argv = proc.info["cmdline"] or []
        if proc.info["pid"] in mine or not any(Path(a).name == "hacluster" for a in argv[:3]):
            continue
        if any(_under(a, roots) or _under(a.partition("=")[2], roots) for a in argv) or \
                _under(proc.info["cwd"] or "", roots):
            found.append(proc)
    return found


def stop_strays(root: Path, say: Callable[[str], None]) -> None:
    """Before ``root`` is removed: stop every node still using it (SIGTERM, then SIGKILL after
    ``STRAY_GRACE_S``), so none is left logging errors about a deleted data directory."""
    found = strays(root)
    if not found:
        return
    say(f"stopping hacluster processes started outside the demo that use {root}: pid "
        + ", ".join(str(p.pid) for p in found))
    for proc in found:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(found, timeout=STRAY_GRACE_S)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def run_demo(keep: bool, mode: str, directory: Path | None,
             make: Callable[..., Demo] | None = None) -> int:
    """Run the tour of ``make`` (default ``Demo``; ``demo_managed.ManagedDemo``) and clean up."""
    root = directory or Path(tempfile.mkdtemp(prefix="hacluster-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    demo = (make or Demo)(root, mode, temporary=directory is None)

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt        # SIGTERM stops the nodes too, like Ctrl-C

    signal.signal(signal.SIGTERM, interrupted)
    # A shell starting us in the background may have set SIGINT to "ignore", which Python
    # keeps: Ctrl-C (SIGINT) must still stop the demo and its nodes.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = demo.run(keep)
    except (RuntimeError, HaclusterError) as exc:
        demo.say(f"demo failed: {exc}")
        code = 1
    except KeyboardInterrupt:
        code = 130
    finally:
        demo.stop_all()
    if directory is None and code == 0:
        stop_strays(root, demo.say)
        shutil.rmtree(root, ignore_errors=True)
    elif code != 0:
        print(f"logs kept in {root}", file=sys.stderr)
    return code

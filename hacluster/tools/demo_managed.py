"""``hacluster demo --managed``: three nodes each running examples/kvservice under hacluster, a
few writes through the primary's service, a SIGKILL of the primary's hacluster, and the new
primary's service answering with the same keys.

Owns the managed-mode tour: per-node configs (the demo's config plus an ``application:``
section whose service port differs per node; ``KVSERVICE_WAIT=1``, so the service answers 200
only once hacluster's ``/v1/wait`` says the write is held), the writes through the primary's
service, the replicas' ``applied_seq`` reaching the primary's, the kill, the live wait for the
new primary's service, the read-back of every key, the restart of the killed node and the
clean-up (``demo.run_demo``). The example service lives in the source repository, not in the
installed package: without a checkout it says so and exits 2. It must never report a key as
read back that it did not read, and never leave a node or a service behind (except with
``--keep``, until Ctrl-C).
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import hacluster
from hacluster.tools.demo import NAMES, Demo, free_ports, run_demo

KEYS = 20


def example_service() -> Path:
    """Where examples/kvservice/service.py is in a source checkout (it may not exist)."""
    return (Path(hacluster.__file__).resolve().parent.parent / "examples" / "kvservice"
            / "service.py")


class ManagedDemo(Demo):
    def __init__(self, root: Path, mode: str, out: Any = sys.stdout,
                 temporary: bool = True) -> None:
        super().__init__(root, mode, out, temporary)
        self.example = example_service()
        self.service_ports = dict(zip(NAMES, free_ports(len(NAMES)), strict=True))
        self.configs = {n: self._write_node_config(n) for n in NAMES}
        self.config = self.configs[NAMES[0]]      # for the operator commands shown

    def _write_node_config(self, name: str) -> Path:
        (self.root / "svc" / name).mkdir(parents=True, exist_ok=True)
        port = self.service_ports[name]
        doc = {**self.doc, "application": {
            "db_path": str(self.root / "svc" / "{node}" / "db"),
            "primary_command": [sys.executable, str(self.example)],
            "health_url": f"http://127.0.0.1:{port}/health",
            "health_interval_s": 0.2, "start_timeout_s": 30, "stop_timeout_s": 5,
            "env": {"KVSERVICE_PORT": str(port), "KVSERVICE_WAIT": "1",
                    "KVSERVICE_TOKEN": self.doc["cluster"]["token"]},
        }}
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def start(self, name: str) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "hacluster", "run", "--config", str(self.configs[name]),
             "--node", name], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def service(self, name: str, method: str, path: str, body: bytes | None = None,
                timeout: float = 10.0) -> tuple[int, bytes]:
        """One request to ``name``'s service: (status, body); (0, b"") when nothing answers."""
        conn = http.client.HTTPConnection("127.0.0.1", self.service_ports[name], timeout=timeout)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def service_up(self, name: str) -> bool:
        return self.service(name, "GET", "/health", timeout=1.0)[0] == 200

    def state(self, name: str) -> str:
        st = self.status(name) if self.procs[name].poll() is None else None
        if st is None:
            return f"{name}: down"
        svc = (st.get("service") or {}).get("state", "?")
        return f"{name}: {st['role']} (epoch {st['epoch']}), service {svc}"

    def wait_service_primary(self, among: list[str], since: float, timeout: float = 60.0,
                             every: float = 0.5) -> tuple[str, int]:
        """Until a primary among ``among`` has its service answering; a line when the nodes'
        states change, and every ``every`` seconds."""
        deadline = time.monotonic() + timeout
        last, last_said = "", 0.0
        while time.monotonic() < deadline:
            found = self.primary()
            if found and found[0] in among and self.service_up(found[0]):
                return found
            now = time.monotonic()
            line = " | ".join(self.state(n) for n in among)
            if line != last or now - last_said >= every:
                self.say(f"  +{now - since:5.2f} s  {line}")
                last, last_said = line, now
            time.sleep(0.05)
        raise RuntimeError(f"no primary's service answered within {timeout:g} s; see "
                           f"{self.root}/*.log and {self.root}/data/*/service.log")

    def run(self, keep: bool) -> int:
        self.say(f"starting 3 nodes on loopback ({self.mode} replication), each running "
                 f"{self.example.name} from {self.example.parent} under hacluster, in "
                 f"{self.root}")
        for name in NAMES:
            self.start(name)
        old, epoch = self.wait_service_primary(list(NAMES), self.t0, every=5.0)
        pid = (self.status(old) or {}).get("service", {}).get("pid")
        self.say(f"{old} elected primary (epoch {epoch}); its service (pid {pid}) answers on "
                 f"http://127.0.0.1:{self.service_ports[old]}")
        values = {f"demo-{i:03d}": f"value-{i}".encode() for i in range(KEYS)}
        for key, value in values.items():
            code, body = self.service(old, "PUT", f"/kv/{key}", value)
            if code != 200:
                raise RuntimeError(f"{old}'s service answered {code} to PUT /kv/{key}: "
                                   f"{body[:200]!r}")
        seq = int((self.status(old) or {}).get("applied_seq") or 0)
        self.say(f"wrote {KEYS} keys through {old}'s service (PUT /kv/demo-000 … "
                 f"demo-{KEYS - 1:03d}), each answered 200 only after hacluster's /v1/wait: "
                 f"{old} is at seq {seq}")
        for name in (n for n in NAMES if n != old):
            self._wait(lambda n=name: int((self.status(n) or {}).get("applied_seq") or 0)
                       >= seq, 30, f"{name} to apply seq {seq}")
            self.say(f"  {self.state(name)}; applied_seq "
                     f"{(self.status(name) or {}).get('applied_seq')} (hacluster applied the "
                     f"service's WAL records into its copy)")
        self.say(f">>> killing {old}'s hacluster with SIGKILL; its service (pid {pid}) dies "
                 "with it (PR_SET_PDEATHSIG)")
        self.procs[old].send_signal(signal.SIGKILL)
        self.procs[old].wait(10)
        killed_at = time.monotonic()
        rest = [n for n in NAMES if n != old]
        new, new_epoch = self.wait_service_primary(rest, killed_at)
        took = time.monotonic() - killed_at
        gone = pid is None or self._wait(lambda: not Path(f"/proc/{pid}").exists(), 5, "")
        self.say(f"<<< failover: {new} is primary (epoch {new_epoch}); its service answers "
                 f"{took:.2f} s after the kill (the lease, the election, then the service's "
                 f"own start); {old}'s service "
                 f"{'is gone' if gone else f'(pid {pid}) is STILL RUNNING'}")
        wrong = [k for k, v in values.items() if self.service(new, "GET", f"/kv/{k}") != (200, v)]
        self.say(f"read back through {new}'s service: {KEYS - len(wrong)} of {KEYS} keys with "
                 f"the value written (e.g. demo-000 = "
                 f"{self.service(new, 'GET', '/kv/demo-000')[1].decode(errors='replace')!r})"
                 + (f"; MISSING or different: {wrong[:5]}" if wrong else ""))
        code, _ = self.service(new, "PUT", "/kv/after-failover", b"written by the new primary")
        self.say(f"PUT /kv/after-failover on {new}'s service: {code}")
        self.say(f"restarting {old}: it rejoins as a replica (its service stays stopped)")
        self.start(old)
        top = int((self.status(new) or {}).get("applied_seq") or 0)
        rejoined = self._wait(lambda: int((self.status(old) or {}).get("applied_seq") or 0)
                              >= top, 60, "")
        self.say(f"  {self.state(old)}; applied_seq {(self.status(old) or {}).get('applied_seq')}"
                 if rejoined else f"{old} did NOT catch up with seq {top} within 60 s")
        good = gone and not wrong and code == 200 and rejoined
        self.say("acknowledged writes lost: 0" if not wrong else
                 f"acknowledged writes lost: {len(wrong)}")
        if keep:
            self.hold_until_interrupted(self.show_keep_managed)
        return 0 if good else 1

    def _wait(self, predicate: Any, timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        if what:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        return False

    def show_keep_managed(self) -> None:
        primary = self.primary()
        svc = self.service_ports[primary[0] if primary else NAMES[0]]
        gone = (" and removes its files" if self.temporary else
                f"; its files stay in {self.root}")
        lines = ["", f"The cluster keeps running (Ctrl-C stops it{gone}):",
                 *[f"  {n}  hacluster {u}  service http://127.0.0.1:{self.service_ports[n]}"
                   f"   logs {self.root / (n + '.log')}, "
                   f"{self.root / 'data' / n / 'service.log'}" for n, u in self.urls.items()],
                 "  configs " + " ".join(str(p) for p in self.configs.values()), "Try:",
                 f"  export HACLUSTER_TOKEN={self.doc['cluster']['token']}",
                 f"  hacluster status --config {self.config}",
                 f"  curl -s -X PUT --data-binary hello http://127.0.0.1:{svc}/kv/greeting",
                 f"  curl -s http://127.0.0.1:{svc}/kv/greeting",
                 f"  hacluster switchover --config {self.config}", ""]
        print("\n".join(lines), file=self.out, flush=True)


def run_managed_demo(keep: bool, mode: str, directory: Path | None) -> int:
    example = example_service()
    if not example.is_file():
        print(f"hacluster demo --managed: the example service {example} is missing. It ships "
              "in the source repository's examples/ directory, not in the installed package: "
              "run the demo from a checkout (pip install -e .).", file=sys.stderr)
        return 2
    os.environ.setdefault("PYTHONUNBUFFERED", "1")    # the service's log lines as they come
    return run_demo(keep, mode, directory, make=ManagedDemo)

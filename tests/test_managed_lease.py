"""The managed primary's lease watch, with a real service process and a lease told by hand.

The watch must freeze the service (SIGSTOP) when a third of the lease is left with no renewal,
thaw it (SIGCONT, the same process: no restart) when a renewal comes late, stop it with its
stop signal when the gate closes with lease left, SIGKILL it when the lease is over, and start
it again when the lease is renewed after either (a lease that lapsed once left a managed
primary without its service for good: seen in a full test run).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hacluster.managed.policy import ServiceSpec
from hacluster.managed.supervisor import Supervisor
from hacluster.node.managed import ManagedRole
from hacluster.testing.harness import process_state

LEASE_S = 0.6


class HandGate:
    """A write gate whose lease is whatever the test says."""

    def __init__(self) -> None:
        self.left = LEASE_S
        self.closed: str | None = None

    def refusal(self) -> str | None:
        return self.closed

    def lease_left(self) -> float:
        return 0.0 if self.closed else self.left


class Primary(ManagedRole):
    """The parts of a node the lease watch reads; the rest of ``Node`` is not needed."""

    def __init__(self, root: Path, spec: ServiceSpec) -> None:
        self.cfg = SimpleNamespace(consensus=SimpleNamespace(lease_s=LEASE_S))  # type: ignore
        self.gate = HandGate()                                                   # type: ignore
        self.name = "n1"
        self.role = SimpleNamespace(epoch=3, primary="n1")                       # type: ignore
        self.me = SimpleNamespace(api=SimpleNamespace(url="http://127.0.0.1:1"))  # type: ignore
        self.data_dir = root
        self.db_dir = root / "db"
        self._stopping = False
        self.service = Supervisor(spec, "n1")

    @property
    def is_primary(self) -> bool:
        return True

    def primary_url(self) -> str | None:
        return None


async def until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("ending", ["lease over", "gate closed"])
def test_the_lease_watch_freezes_thaws_and_ends_the_service(tmp_path: Path, ending: str) -> None:
    spec = ServiceSpec(primary_command=(sys.executable, "-c", "import time; time.sleep(60)"),
                       stop_timeout_s=5.0, start_timeout_s=5.0, health_interval_s=0.05)

    async def scenario() -> None:
        node = Primary(tmp_path, spec)
        assert node.service is not None
        await node.service.want("primary", {})
        pid = node.service.pid
        assert pid is not None
        watch = asyncio.get_running_loop().create_task(node._lease_watch())
        try:
            await asyncio.sleep(0.05)
            assert process_state(pid) in ("S", "R")
            node.gate.left = 0.15                       # type: ignore[attr-defined]
            await until(lambda: process_state(pid) == "T")   # frozen: it cannot write
            node.gate.left = 0.5                        # type: ignore[attr-defined]
            await until(lambda: process_state(pid) in ("S", "R"))
            assert node.service.pid == pid and node.service.running   # thawed, not restarted
            if ending == "lease over":
                node.gate.left = 0.0                    # type: ignore[attr-defined]
            else:
                node.gate.left = 0.4                    # type: ignore[attr-defined]
                node.gate.closed = "switchover to n2"   # type: ignore[attr-defined]
            await until(lambda: process_state(pid) is None or process_state(pid) == "Z")
            await until(lambda: not node.service.running)       # type: ignore[union-attr]
            code = node.service.service.last_exit_code
            # Gone by SIGKILL at the lease's end, or by its stop signal while the lease ran.
            assert code == (-9 if ending == "lease over" else -15), code
            # A renewal in the same epoch (the lock is still ours): the service runs again.
            node.gate.closed = None                     # type: ignore[attr-defined]
            node.gate.left = 0.5                        # type: ignore[attr-defined]
            await until(lambda: node.service.running and node.service.pid != pid)  # type: ignore[union-attr]
        finally:
            watch.cancel()
            await node.service.close()

    asyncio.run(scenario())

"""A managed replica without a database yet starts its read-only service after the bootstrap:
once, however often the node follows meanwhile, and never once the node has begun to stop; a
replica whose database is replaced stops the service first and starts it on the new copy.

The methods under test are the node's own (``ManagedRole.start_replica_service`` and the
waiter it starts); the node around them is the least they read: a role, a data directory, a
store slot, the stop flag, and a service that records what it was asked to run.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hacluster.node.managed import ManagedRole
from hacluster.role import Role

WAITER_POLL_S = 0.2        # how often the waiter looks for the database (managed.py)


class RecordingService:
    """Stands in for the Supervisor: records each role it is asked to run."""

    pid = None

    def __init__(self) -> None:
        self.wanted: list[str | None] = []

    async def want(self, role: str | None, env: dict[str, str]) -> None:
        self.wanted.append(role)

    async def stop(self, reason: str) -> None:
        self.wanted.append(None)
        self.reason = reason


class ReplicaNode(ManagedRole):
    """A replica of n1 in managed mode whose database is not there yet."""

    def __init__(self, tmp: Path) -> None:
        self.service = RecordingService()       # type: ignore[assignment]
        self.cfg = SimpleNamespace(application=SimpleNamespace(replica_command=("svc",)))  # type: ignore[assignment]
        self.name = "n2"
        self.role = Role("n1", 3)
        self.data_dir = tmp
        self.db_dir = tmp / "db"
        self.me = SimpleNamespace(api=SimpleNamespace(url="http://127.0.0.1:1"))  # type: ignore[assignment]
        self._stopping = False
        self._store: Any = None

    @property
    def store(self) -> Any:
        return self._store

    @property
    def is_primary(self) -> bool:
        return False

    def primary_url(self) -> str | None:
        return "http://127.0.0.1:2"

    def bootstrapped(self) -> None:
        """The bootstrap installed the database and the node opened it."""
        self.db_dir.mkdir()
        (self.db_dir / "CURRENT").write_text("MANIFEST-000001\n")
        self._store = object()


async def test_one_waiter_starts_the_service_once_after_the_bootstrap(tmp_path: Path) -> None:
    node = ReplicaNode(tmp_path)
    for _ in range(3):                  # the node follows again while it bootstraps
        await node.start_replica_service()
    waiter = node._service_waiter
    assert waiter is not None and not waiter.done()
    await asyncio.sleep(WAITER_POLL_S * 2)
    assert node.service.wanted == []    # type: ignore[union-attr]
    node.bootstrapped()
    await asyncio.wait_for(waiter, WAITER_POLL_S * 10)
    assert node.service.wanted == ["replica"]   # type: ignore[union-attr]


async def test_a_node_that_began_to_stop_does_not_start_its_service(tmp_path: Path) -> None:
    node = ReplicaNode(tmp_path)
    await node.start_replica_service()
    [waiter] = asyncio.all_tasks() - {asyncio.current_task()}
    # stop() sets the flag first, then stops the service; the bootstrap ends meanwhile.
    node._stopping = True
    node.bootstrapped()
    await asyncio.wait_for(waiter, WAITER_POLL_S * 10)
    assert node.service.wanted == []    # type: ignore[union-attr]


async def test_a_replaced_database_stops_the_service_then_starts_it_on_the_new_copy(
        tmp_path: Path) -> None:
    node = ReplicaNode(tmp_path)
    node.bootstrapped()
    await node.start_replica_service()
    await node.stop_replica_service("checkpoint c1 is installed")
    await node.restart_replica_service()
    assert node.service.wanted == ["replica", None, "replica"]   # type: ignore[union-attr]
    assert node.service.reason == "the database is replaced: checkpoint c1 is installed"  # type: ignore[union-attr]
    # Begun to stop meanwhile: the service stays stopped.
    node._stopping = True
    await node.stop_replica_service("checkpoint c2 is installed")
    await node.restart_replica_service()
    assert node.service.wanted[-1] is None      # type: ignore[union-attr]


async def test_without_a_replica_command_nothing_is_stopped_or_started(tmp_path: Path) -> None:
    node = ReplicaNode(tmp_path)
    node.cfg.application.replica_command = None     # type: ignore[union-attr]
    node.bootstrapped()
    await node.stop_replica_service("checkpoint c1 is installed")
    assert node.service.wanted == []    # type: ignore[union-attr]

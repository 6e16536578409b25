"""What the HTTP API (and the metrics collector) may ask of the node that serves it.

Owns ``ServedNode``, the one interface the handlers are written against; ``hacluster.node.Node``
implements it, and the unit tests serve the real app over a fake. Keeping the API on this port
rather than on the node class is what keeps the import graph acyclic (the node builds the app).
It must never hold logic; a handler that needs something new asks for it here.
"""

from __future__ import annotations

from typing import Any, Protocol

from hacluster.api.counters import WatchStats
from hacluster.api.probes import NodeView
from hacluster.config import ClusterConfig
from hacluster.consensus.loop import ControlLoop
from hacluster.fencing import WriteGate
from hacluster.groupsync import GroupSync
from hacluster.managed.supervisor import Supervisor
from hacluster.replication.checkpoints import CheckpointService
from hacluster.replication.follower import Follower
from hacluster.replication.positions import ReplicaPositions
from hacluster.replication.source import ReplicationSource
from hacluster.role import Role
from hacluster.store import AppliedRange, NamedOp, Store


class ServedNode(Protocol):
    cfg: ClusterConfig
    name: str
    role: Role
    control: ControlLoop | None        # None: static mode (no consensus)
    source: ReplicationSource | None   # primary: the WAL stream
    checkpoints: CheckpointService | None
    follower: Follower | None          # replica: its stream from the primary
    positions: ReplicaPositions
    gate: WriteGate
    writes: int
    unknown_outcomes: int
    wal_sync: GroupSync                # the group commit (storage.durability: fsync)
    watches: WatchStats
    service: Supervisor | None         # managed mode: the service's supervisor

    @property
    def data_dir(self) -> Any: ...

    @property
    def store(self) -> Store | None: ...

    @property
    def is_primary(self) -> bool: ...

    @property
    def column_families(self) -> list[str]: ...

    def latest_seq(self) -> int: ...
    def is_member(self, name: str) -> bool: ...
    def leader(self) -> str | None: ...
    def api_url_of(self, name: str) -> str | None: ...
    def view(self, now: float) -> NodeView: ...
    def status(self) -> dict[str, Any]: ...
    def status_epoch(self) -> int: ...
    def write(self, ops: list[NamedOp]) -> AppliedRange: ...
    async def acknowledge(self, seq: int) -> None: ...
    async def wait_held(self, seq: int, timeout: float) -> dict[str, Any]: ...
    def acknowledged_through(self) -> int: ...
    async def make_durable(self, seq: int) -> None: ...
    def history_refusal(self, label: int, seq: int) -> str | None: ...
    def begin_read(self) -> int: ...
    async def finish_read(self, seq: int) -> None: ...
    async def wait_applied(self, seq: int, timeout: float) -> int | None: ...
    async def reinit(self) -> str: ...

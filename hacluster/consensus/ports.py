"""The narrow port between the control loop and the node it steers.

Owns ``NodePort``, everything the loop may ask of the node process (its own condition, once
per pass, as a ``LocalState``; its role transitions; its write gate and fencing), and
``LocalState`` itself. The node implements the port; the loop knows nothing else of it, so the
loop can be driven by a fake node in a unit test and by the simulator's nodes alike. It must
never grow a method that lets the loop reach into the node's parts (store, follower, gate):
add what the loop needs as a question or a transition here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hacluster.config import ClusterConfig
from hacluster.consensus.model import ReplicaView


@dataclass(frozen=True, slots=True)
class LocalState:
    """The node's own condition, read once per control loop pass."""

    seq: int | None                   # the open store's latest seq; None: no store open
    has_database: bool
    is_primary: bool
    gate_open: bool                   # primary with its write gate open (its disk may be full)
    renewal_proposed_at: float | None  # the gate's: when its last effective renewal was proposed
    disk_full: str | None             # why the store refuses writes
    space_low: str | None             # why free space is below the floor
    unfit: str | None                 # why it may not become primary (diverged, no watchdog)
    acked_seq: int                    # the highest seq it acknowledged in its current epoch
    replicas: tuple[ReplicaView, ...]  # as its replication source sees them (primary)


class NodePort(Protocol):
    """What the control loop may ask of its node."""

    @property
    def name(self) -> str: ...

    @property
    def is_primary(self) -> bool: ...

    def local_state(self) -> LocalState:
        """The node's own condition now (it may tend its own checks first, e.g. disk space)."""
        ...

    def latest_seq(self) -> int: ...

    def lineage_label(self, seq: int) -> int:
        """The epoch whose primary wrote ``seq`` into this node's data (0: unknown)."""
        ...

    def leader(self) -> str | None:
        """Who holds a valid lease, as far as the node can tell."""
        ...

    def lease_left(self) -> float: ...

    def close_gate(self, reason: str) -> None:
        """Stop acknowledging writes now."""
        ...

    async def quiesce(self) -> None:
        """After ``close_gate`` for a switchover: return once nothing more can be written
        (managed mode: the service has stopped), so ``latest_seq`` is final."""
        ...

    def tend_fencing(self, paused: bool) -> str | None:
        """Arm or feed the watchdog while writable, disarm it otherwise; returns why it could
        not be armed (the gate is shut by then), or None."""
        ...

    async def become_primary(self, epoch: int, proposed_at: float) -> None:
        """The lock is ours (a committed Acquire or Renew proposed at ``proposed_at``)."""
        ...

    async def become_replica(self, primary: str | None, epoch: int) -> None:
        """Follow ``primary`` (or no one); the gate closes first."""
        ...

    async def make_durable(self, seq: int) -> None:
        """Sync the store's WAL through ``seq`` (what it holds may sit in the page cache)."""
        ...

    async def stop_following(self) -> int:
        """Stop applying; returns the seq it stopped at."""
        ...

    def apply_settings(self, cfg: ClusterConfig) -> None:
        """Take the dynamic sections of ``cfg`` (the file's config with the Raft overrides,
        validated by the loop) from the next action on."""
        ...

    async def recover_disk(self) -> bool:
        """Reopen a store that refused writes for lack of space; False while it cannot."""
        ...

"""The vocabulary of the pure HA core: its inputs, its verdict and the effects it orders.

Owns the frozen types that ``decide`` reads and returns: ``Policy`` (the rules' settings,
from config), ``Observation`` (what one node knows locally beside the replicated state, taken
once per pass), ``Decision`` (the action, the one sentence that explains it, and the ordered
``effects`` that carry it out) and the effect types themselves — like etcd raft's ``Ready``,
the complete list of what the control loop must do in one pass, in order. It must never hold
logic beyond a field's meaning: the rules live in ``decide``, ``eligibility`` and ``effects``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from hacluster.config import ConsensusConfig, ReplicationConfig
from hacluster.consensus.lease import LeaseTiming


class Action(Enum):
    RENEW = "renew"          # I hold the lock: renew it (and write while the lease lasts)
    PROMOTE = "promote"      # propose Acquire for myself
    FOLLOW = "follow"        # replicate from ``target``
    DEMOTE = "demote"        # I held the lock and must stop writing now
    RELEASE = "release"      # I hold the lock but must not serve it: give it up
    WAIT = "wait"            # nothing to do this pass


_C, _R = ConsensusConfig(), ReplicationConfig()


@dataclass(frozen=True, slots=True)
class Policy:
    """The rules' settings; ``consensus.settings.policy(cfg)`` builds it from the config, and
    every default here is the config's."""

    timing: LeaseTiming = field(default_factory=LeaseTiming)
    sync_mode: bool = True
    maximum_lag_on_failover: int = _C.maximum_lag_on_failover   # sequence numbers
    member_stale_s: float = _C.member_stale_s   # a report older than this: not a candidate
    # Throttles (consensus.acquire_retry_s, consensus.sync_set_retry_s): how long an unanswered
    # proposal is left to its answer before it is made again.
    acquire_retry_s: float = _C.acquire_retry_s
    sync_set_retry_s: float = _C.sync_set_retry_s
    sync_replicas: int = _R.sync_replicas
    # A connected member that has not applied anything new for this long, while behind, is
    # replaced in the synchronous set (min(1 s, replication.sync_timeout_s / 2)).
    sync_stall_s: float = min(1.0, _R.sync_timeout_s / 2)


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """A replica as the primary's replication source sees it (for the synchronous set)."""

    name: str
    connected: bool
    applied_seq: int
    advanced_at: float | None = None            # monotonic: when applied_seq last moved


# Not frozen, unlike the other records here: one is built on every pass (thousands a second
# in the simulator), and a frozen dataclass's constructor costs three times a plain one's.
# Nothing assigns to an Observation once built; ``decide`` only reads it.
@dataclass(slots=True)
class Observation:
    """What this node knows locally, beside the replicated state."""

    me: str
    now: float                                  # monotonic
    has_quorum: bool                            # Raft has a leader and commits reach it
    lock_seen_at: float | None                  # when the current (epoch, renewals) was applied
    renewal_proposed_at: float | None           # mine: proposal time of my last effective renewal
    my_applied_seq: int
    member_seen_at: Mapping[str, float] = field(default_factory=dict)
    my_last_epoch: int = 0                      # my lineage's label of my_applied_seq
    # The epoch this process acquired (or is acquiring) the lock for. A lock held in my name
    # in any other epoch was taken by an earlier run of this node: after a crash or power
    # loss it may lack an acknowledged tail, so it is never resumed, only re-acquired.
    acquired_epoch: int | None = None
    uptime_s: float = float("inf")              # since this process's control loop started
    # When each member's report last changed while this process ran (a subset of
    # member_seen_at, which also counts the first report seen, replayed or not).
    member_reported_at: Mapping[str, float] | None = None
    # -- the node's own condition, for the effects of a pass ----------------------------------
    is_primary: bool = False                    # this node's role is primary (it may write)
    disk_full: str | None = None                # why the store refuses writes, if it does
    space_low: str | None = None                # why free space is below the floor, if it is
    # Why this node may not become primary now, whatever its last report says (it judges
    # itself by what it sees: a required watchdog it cannot arm, replication diverged).
    unfit: str | None = None
    # Whether this node's store holds a database now (None: go by its last report, which may
    # be report_interval_s old: a bootstrap just done, or a database just set aside).
    my_has_database: bool | None = None
    # Why this primary cannot be fenced in the current epoch (a required watchdog that could
    # not be armed): it must not serve the lock.
    fencing_failed: str | None = None
    switching: bool = False                     # a switchover of mine holds the gate shut
    handover_epoch: int | None = None           # the epoch a disk handover was started for
    acquiring_since: float | None = None        # my unanswered Acquire was proposed then
    acked_seq: int = 0                          # the highest seq this process acknowledged
    # The synchronous set's change in flight (rule 6): names proposed, whether the outcome
    # is known to be lost in doubt, and when it was proposed.
    sync_pending: frozenset[str] = frozenset()
    sync_unknown: bool = False
    sync_proposed_at: float = 0.0
    replicas: tuple[ReplicaView, ...] = ()      # as this node's replication source sees them


# -- effects, in the order the control loop carries them out ------------------------------
#
# These and ``Decision`` are values built on every pass — thousands a second in the simulator —
# so they are plain slotted dataclasses: a frozen one's constructor costs about four times as
# much. Nothing assigns to them once ``decide`` has returned them.


@dataclass(slots=True)
class CloseGate:
    """Stop acknowledging writes now."""
    reason: str


@dataclass(slots=True)
class StepDown:
    """Stop being primary (the gate closes first); follow ``target`` if one is known."""
    target: str | None
    epoch: int


@dataclass(slots=True)
class RecoverDisk:
    """Reopen a store that refused writes for lack of space; the rest of the pass waits for
    it (the loop stops carrying out effects when it fails)."""


@dataclass(slots=True)
class HandOver:
    """Start a switchover to the best successor, in the background (the disk is low)."""
    epoch: int
    reason: str


@dataclass(slots=True)
class ProposeRelease:
    """Give the lock up, recording ``floor`` as acknowledged (rule 2): what this process
    acknowledged, or — a holder back from a restart, which cannot know what it acknowledged —
    everything it holds."""
    epoch: int
    floor: int


@dataclass(slots=True)
class ProposeRenew:
    """Renew my lease of ``epoch``; its commit (and only that) opens the write gate."""
    epoch: int


@dataclass(slots=True)
class ProposeSyncSet:
    """Record ``members`` as the synchronous set; until the outcome is known, writes need
    them as well as the committed set (rule 6)."""
    epoch: int
    members: frozenset[str]


@dataclass(slots=True)
class Follow:
    target: str
    epoch: int


@dataclass(slots=True)
class ProposeAcquire:
    """Stop applying, then propose an Acquire of epoch ``epoch`` starting right after what
    this node then holds."""
    epoch: int
    reason: str              # bootstrap | failover | switchover | manual failover | restart
    force: bool
    lag_allowance: int


Effect = (CloseGate | StepDown | RecoverDisk | HandOver | ProposeRelease | ProposeRenew
          | ProposeSyncSet | Follow | ProposeAcquire)


@dataclass(slots=True)
class Decision:
    action: Action
    sentence: str
    target: str | None = None                   # the primary to follow, or me when promoting
    epoch: int | None = None                    # the epoch to expect (follow) or create (promote)
    start_seq: int | None = None                # promote: the first seq of the new epoch
    effects: tuple[Effect, ...] = ()            # what the loop does this pass, in order

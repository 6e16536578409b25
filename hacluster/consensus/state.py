"""The replicated cluster state and its commands, as pure data and pure transitions.

Owns what every node agrees on through Raft: the primary lock (holder, epoch, lease length, a
renewal counter), the members and their reported replication positions, the epoch history, the
synchronous standby set, the maintenance flag and the dynamic configuration (overrides of the
file's cluster-wide settings, with a version and their history) — and the only ways to change them
(``apply_command``). Pure: no clock, no I/O, no randomness, so every node that applies the same
log reaches the same state. It must never read the time (the state machine would diverge), and
never grant the lock except by compare-and-set on the epoch: whether a lease has expired is a
judgement each node makes with its own clock (see ``lease``), not something the log can know.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

from hacluster.config.dynamic import check_key, check_value, merge
from hacluster.config.model import ConfigError
from hacluster.consensus.epochs import conflict

MAX_MEMBERS = 64
MAX_HISTORY = 100
MAX_URL = 256
MAX_TAGS = 8
MAX_SETTINGS_CHANGES = 32      # keys one SetSettings may change (there are fewer dynamic keys)
KNOWN_TAGS = frozenset({"nofailover", "noloadbalance"})
REASONS = frozenset({"bootstrap", "failover", "switchover", "manual failover", "restart"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def _loads_older_dumps(cls: type[_T]) -> type[_T]:
    """Let a state pickled by an older version (a Raft dump) load: fields added since, which
    are always at the end and have defaults, take their defaults instead of being unset."""
    def setstate(self: Any, state: list[Any]) -> None:
        for f, value in itertools.zip_longest(fields(self), state, fillvalue=_MISSING):
            if f is _MISSING:
                break                     # a newer version's extra field: ignore it
            if value is _MISSING:
                value = (f.default_factory() if f.default_factory is not MISSING
                         else f.default)
            object.__setattr__(self, f.name, value)

    cls.__setstate__ = setstate  # type: ignore[attr-defined]
    return cls


_MISSING: Any = object()
_T = TypeVar("_T")


class CommandError(ValueError):
    """A command is malformed (bad name, too long, unknown tag); it never reaches the log."""


@_loads_older_dumps
@dataclass(frozen=True, slots=True)
class Lock:
    holder: str | None = None
    epoch: int = 0
    lease_s: float = 0.0
    renewals: int = 0          # bumped by each renewal, so observers can time it locally
    released: bool = False     # given up on purpose (switchover): no lease to wait out
    successor: str | None = None   # switchover: the node the holder handed over to
    holder_seq: int = 0        # the holder's latest seq as of its last renewal: a floor on
                               # the data it must still have if it resumes after a restart

    @property
    def held(self) -> bool:
        return self.holder is not None and not self.released


@_loads_older_dumps
@dataclass(frozen=True, slots=True)
class Member:
    name: str
    api_url: str
    applied_seq: int
    role: str                  # "primary", "replica", "starting"
    healthy: bool
    tags: frozenset[str] = frozenset()
    reports: int = 0           # bumped by each report, so observers can time freshness
    last_epoch: int = 0        # the epoch whose history this node's last seq belongs to
                               # (its lineage; 0: unknown, or no data)
    clock: float = 0.0         # the reporter's monotonic clock when it proposed the report
                               # (0: not sent); only for measuring clock rates (``clock``)


def member_role(is_primary: bool, has_database: bool) -> str:
    """The role a node has by what it holds: what it reports, and how it judges itself."""
    return "primary" if is_primary else ("replica" if has_database else "starting")


@_loads_older_dumps
@dataclass(frozen=True, slots=True)
class EpochRecord:
    epoch: int
    primary: str
    start_seq: int             # the first sequence number written in this epoch
    reason: str
    wall_time: float           # proposer's wall clock; for operators, never for decisions


@_loads_older_dumps
@dataclass(frozen=True, slots=True)
class FailoverRequest:
    """An operator's forced failover: only ``candidate`` may take over after ``epoch``."""

    candidate: str
    epoch: int                 # void once the lock has moved past this epoch
    force: bool                # skip the checks that protect acknowledged writes


@_loads_older_dumps
@dataclass(frozen=True, slots=True)
class SettingsChange:
    """One committed change of the dynamic configuration, for ``/history``."""

    version: int               # the settings' version this change produced
    changes: tuple[tuple[str, Any], ...]   # (key, value); None: back to the file's value
    by: str                    # who asked (the node that proposed it, and the operator's word)
    wall_time: float           # proposer's wall clock; for operators, never for decisions


@_loads_older_dumps
@dataclass(frozen=True, slots=True)
class ClusterState:
    lock: Lock = field(default_factory=Lock)
    members: tuple[Member, ...] = ()
    history: tuple[EpochRecord, ...] = ()
    sync_set: frozenset[str] = frozenset()
    paused: bool = False
    failover: FailoverRequest | None = None
    # The acknowledged floor: the highest seq ever acknowledged to a client, and the epoch
    # that acknowledged it (carried by renewals and releases). No candidate below it may take
    # over: it would lack a write a client was told is done.
    acked_epoch: int = 0
    acked_seq: int = 0
    # The dynamic configuration (``hacluster.config.dynamic``): overrides of the file's
    # values, sorted by key, and a version bumped by each change (compare-and-set, like
    # patronictl edit-config), with the last changes kept for /history.
    settings: tuple[tuple[str, Any], ...] = ()
    settings_version: int = 0
    settings_history: tuple[SettingsChange, ...] = ()

    @property
    def failover_request(self) -> FailoverRequest | None:
        """The operator's failover request, if it is for the current epoch."""
        f = self.failover
        return f if f is not None and f.epoch == self.lock.epoch else None

    def member(self, name: str) -> Member | None:
        for m in self.members:
            if m.name == name:
                return m
        return None


# -- commands ------------------------------------------------------------------------------

def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise CommandError(f"{what}: bad node name {name!r}")
    return name


def _check_epoch(epoch: Any, what: str) -> int:
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise CommandError(f"{what}: bad epoch {epoch!r}")
    return epoch


@dataclass(frozen=True, slots=True)
class Acquire:
    """Take the lock if it is still at ``expected_epoch`` and ``expected_renewals``.

    Both are compared: a candidate judges the lease expired from the last renewal it applied,
    and a renewal committed in between (which the candidate has not seen) must make the
    acquisition fail rather than take the lock from a holder whose lease is still running.
    """

    candidate: str
    expected_epoch: int
    expected_renewals: int
    start_seq: int
    lease_s: float
    reason: str
    wall_time: float
    last_epoch: int = 0        # the candidate's lineage at start_seq - 1 (see Member)
    # Sequence numbers below the acknowledged floor the candidate may lack: 0 in sync mode,
    # maximum_lag_on_failover in async mode (whose losses are saved as divergent tails).
    lag_allowance: int = 0
    force: bool = False        # an operator's forced failover: the floor does not apply
    # An entry written by a version before rules 1 and 2 (no lineage, no floor in it): it is
    # applied as that version applied it, so replaying an old journal rebuilds the same state.
    legacy: bool = False

    def __post_init__(self) -> None:
        _check_name(self.candidate, "acquire")
        _check_epoch(self.expected_epoch, "acquire")
        _check_epoch(self.expected_renewals, "acquire")
        _check_epoch(self.last_epoch, "acquire")
        _check_epoch(self.lag_allowance, "acquire")
        if self.start_seq < 1 or not 0 < self.lease_s <= 60 or self.reason not in REASONS:
            raise CommandError(f"acquire: bad arguments {self!r}")


@dataclass(frozen=True, slots=True)
class Renew:
    holder: str
    epoch: int
    applied_seq: int = 0       # the holder's latest seq when it proposed the renewal
    acked_seq: int = 0         # the highest seq it has acknowledged to a client so far

    def __post_init__(self) -> None:
        _check_name(self.holder, "renew")
        _check_epoch(self.epoch, "renew")
        _check_epoch(self.applied_seq, "renew")
        _check_epoch(self.acked_seq, "renew")


@dataclass(frozen=True, slots=True)
class Release:
    """Give the lock up (the holder has stopped writing); ``successor`` is a switchover target."""

    holder: str
    epoch: int
    successor: str | None = None
    acked_seq: int = 0         # the highest seq it acknowledged (its gate is shut by now)

    def __post_init__(self) -> None:
        _check_name(self.holder, "release")
        _check_epoch(self.epoch, "release")
        _check_epoch(self.acked_seq, "release")
        if self.successor is not None:
            _check_name(self.successor, "release")


@dataclass(frozen=True, slots=True)
class Report:
    name: str
    api_url: str
    applied_seq: int
    role: str
    healthy: bool
    tags: frozenset[str] = frozenset()
    last_epoch: int = 0
    clock: float = 0.0         # the reporter's time.monotonic() at proposal; 0: not sent

    def __post_init__(self) -> None:
        _check_name(self.name, "report")
        _check_epoch(self.last_epoch, "report")
        if (not isinstance(self.clock, int | float) or isinstance(self.clock, bool)
                or not 0 <= self.clock < 1e12):
            raise CommandError(f"report: bad clock {self.clock!r}")
        if not isinstance(self.api_url, str) or len(self.api_url) > MAX_URL:
            raise CommandError("report: api_url missing or too long")
        if self.applied_seq < 0 or self.role not in ("primary", "replica", "starting"):
            raise CommandError(f"report: bad arguments {self!r}")
        if len(self.tags) > MAX_TAGS or not self.tags <= KNOWN_TAGS:
            raise CommandError(f"report: unknown tags {sorted(self.tags - KNOWN_TAGS)}")


@dataclass(frozen=True, slots=True)
class SetSyncSet:
    """The primary records which replicas confirm writes before it relies on them."""

    holder: str
    epoch: int
    names: frozenset[str]

    def __post_init__(self) -> None:
        _check_name(self.holder, "sync set")
        _check_epoch(self.epoch, "sync set")
        if len(self.names) > MAX_MEMBERS:
            raise CommandError("sync set: too many names")
        for name in self.names:
            _check_name(name, "sync set")


@dataclass(frozen=True, slots=True)
class SetPaused:
    paused: bool


@dataclass(frozen=True, slots=True)
class SetFailover:
    """Name the only node that may take over the lock of ``expected_epoch`` (None: cancel)."""

    candidate: str | None
    expected_epoch: int
    force: bool = False

    def __post_init__(self) -> None:
        if self.candidate is not None:
            _check_name(self.candidate, "failover")
        _check_epoch(self.expected_epoch, "failover")


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop a removed node's member record (and its place in the synchronous set)."""

    name: str

    def __post_init__(self) -> None:
        _check_name(self.name, "forget")


@dataclass(frozen=True, slots=True)
class SetSettings:
    """Change the dynamic configuration if it is still at ``expected_version``.

    The proposer validated the whole resulting config (``dynamic.effective``); here only what
    the log may hold is checked: known keys and scalar values. Each node validates the result
    again against its own file before it applies it.
    """

    expected_version: int
    changes: tuple[tuple[str, Any], ...]
    by: str
    wall_time: float

    def __post_init__(self) -> None:
        _check_epoch(self.expected_version, "settings")
        if not isinstance(self.changes, tuple) or not 0 < len(self.changes) <= \
                MAX_SETTINGS_CHANGES:
            raise CommandError("settings: between 1 and "
                               f"{MAX_SETTINGS_CHANGES} changes")
        try:
            for pair in self.changes:
                if not isinstance(pair, tuple) or len(pair) != 2:
                    raise CommandError(f"settings: not a (key, value) pair: {pair!r}")
                check_value(check_key(pair[0]), pair[1])
        except ConfigError as exc:
            raise CommandError(f"settings: {exc}") from None
        if len({k for k, _ in self.changes}) != len(self.changes):
            raise CommandError("settings: a key changed twice in one change")
        if not isinstance(self.by, str) or len(self.by) > MAX_URL:
            raise CommandError("settings: bad author")
        if (not isinstance(self.wall_time, int | float) or isinstance(self.wall_time, bool)
                or not 0 <= self.wall_time < 1e12):
            raise CommandError(f"settings: bad wall time {self.wall_time!r}")


Command = (Acquire | Renew | Release | Report | SetSyncSet | SetPaused | SetFailover | Forget
           | SetSettings)


_KEEP: Any = object()


def _next(s: ClusterState, *, lock: Lock = _KEEP, members: tuple[Member, ...] = _KEEP,
          history: tuple[EpochRecord, ...] = _KEEP, sync_set: frozenset[str] = _KEEP,
          paused: bool = _KEEP, failover: FailoverRequest | None = _KEEP,
          acked_seq: int = _KEEP, settings: tuple[tuple[str, Any], ...] = _KEEP,
          settings_history: tuple[SettingsChange, ...] = _KEEP) -> ClusterState:
    """``s`` with the given fields changed. Not dataclasses.replace, which costs several
    times a constructor: every committed command goes through here (and the simulator
    commits hundreds of thousands a minute). A higher ``acked_seq`` raises the acknowledged
    floor in the current lock's epoch; a lower one leaves the floor as it is."""
    floor_epoch, floor = s.acked_epoch, s.acked_seq
    if acked_seq is not _KEEP and acked_seq > floor:
        floor_epoch, floor = s.lock.epoch, acked_seq
    return ClusterState(
        s.lock if lock is _KEEP else lock,
        s.members if members is _KEEP else members,
        s.history if history is _KEEP else history,
        s.sync_set if sync_set is _KEEP else sync_set,
        s.paused if paused is _KEEP else paused,
        s.failover if failover is _KEEP else failover,
        floor_epoch, floor,
        s.settings if settings is _KEEP else settings,
        s.settings_version if settings is _KEEP else s.settings_version + 1,
        s.settings_history if settings_history is _KEEP else settings_history)


def floor_refusal(state: ClusterState, seq: int, lag_allowance: int = 0) -> str | None:
    """Why a candidate at ``seq`` would lose an acknowledged write; None when it would not.

    Two floors: the highest seq a primary recorded as acknowledged (Renew, Release), and the
    prefix the newest epoch started after. A primary may acknowledge a write and die before
    any renewal records it; the write is then on the synchronous standby, which the guarded
    election promotes — and the epoch it starts makes its whole prefix the floor, so a later
    election (after a release, when elections are no longer guarded) cannot go below it.
    """
    allowed = f" by more than the allowed {lag_allowance}" if lag_allowance else ""
    if seq + lag_allowance < state.acked_seq:
        return (f"at seq {seq}, below seq {state.acked_seq} acknowledged in epoch "
                f"{state.acked_epoch}{allowed}")
    newest = state.history[-1] if state.history else None
    if newest is not None and seq + lag_allowance < newest.start_seq - 1:
        return (f"at seq {seq}, below seq {newest.start_seq - 1} that epoch {newest.epoch} "
                f"started after{allowed}")
    return None


def acquire_refusal(state: ClusterState, cmd: Acquire) -> str | None:
    """Why the state machine turns ``cmd`` down (besides a stale expected epoch)."""
    seq = cmd.start_seq - 1
    off = conflict(cmd.last_epoch, seq, state.history)
    if off is not None:
        return f"{cmd.candidate}: {off}"
    if not cmd.force:
        return floor_refusal(state, seq, cmd.lag_allowance)
    return None


def apply_command(state: ClusterState, cmd: Command) -> tuple[ClusterState, bool]:
    """The state machine: the next state and whether the command took effect."""
    lock = state.lock
    if isinstance(cmd, Acquire):
        if (lock.epoch, lock.renewals) != (cmd.expected_epoch, cmd.expected_renewals):
            return state, False
        # The same checks the decision made, again where every node applies them in log
        # order: a candidate whose data left the history, or (unforced) lacks an
        # acknowledged write, never gets an epoch, whatever its view was when it proposed.
        if not cmd.legacy and acquire_refusal(state, cmd) is not None:
            return state, False
        epoch = lock.epoch + 1
        record = EpochRecord(epoch, cmd.candidate, cmd.start_seq, cmd.reason, cmd.wall_time)
        # A new primary starts with an empty synchronous set: it must record its own before
        # it may count on any replica.
        return _next(
            state, lock=Lock(cmd.candidate, epoch, cmd.lease_s, 0, False, None,
                             cmd.start_seq - 1),
            history=(*state.history, record)[-MAX_HISTORY:], sync_set=frozenset(),
            failover=None,
        ), True
    if isinstance(cmd, Renew):
        if not lock.held or (lock.holder, lock.epoch) != (cmd.holder, cmd.epoch):
            return state, False
        # A primary renewing is a healthy primary: an operator's failover request made while
        # it looked gone no longer applies (it would hold back the next automatic failover).
        return _next(state, acked_seq=cmd.acked_seq,
                     lock=Lock(lock.holder, lock.epoch, lock.lease_s, lock.renewals + 1,
                               lock.released, lock.successor,
                               max(lock.holder_seq, cmd.applied_seq)),
                     failover=None), True
    if isinstance(cmd, Release):
        if not lock.held or (lock.holder, lock.epoch) != (cmd.holder, cmd.epoch):
            return state, False
        # The synchronous set goes (no one confirms for a holder that stopped writing); the
        # acknowledged floor stays, so no candidate lacking an acknowledged write qualifies.
        return _next(state, acked_seq=cmd.acked_seq,
                     lock=Lock(lock.holder, lock.epoch, lock.lease_s, lock.renewals, True,
                               cmd.successor, lock.holder_seq),
                     sync_set=frozenset()), True
    if isinstance(cmd, Report):
        old = state.member(cmd.name)
        if old is None and len(state.members) >= MAX_MEMBERS:
            return state, False
        member = Member(cmd.name, cmd.api_url, cmd.applied_seq, cmd.role, cmd.healthy,
                        cmd.tags, (old.reports + 1) if old else 1, cmd.last_epoch,
                        float(cmd.clock))
        if old is not None:
            members = tuple(member if m.name == cmd.name else m for m in state.members)
        else:
            members = tuple(sorted((*state.members, member), key=lambda m: m.name))
        return _next(state, members=members), True
    if isinstance(cmd, SetSyncSet):
        if not lock.held or (lock.holder, lock.epoch) != (cmd.holder, cmd.epoch):
            return state, False
        return _next(state, sync_set=cmd.names), True
    if isinstance(cmd, SetPaused):
        return _next(state, paused=cmd.paused), True
    if isinstance(cmd, Forget):
        if state.member(cmd.name) is None or (lock.held and lock.holder == cmd.name):
            return state, False
        return _next(state, members=tuple(m for m in state.members if m.name != cmd.name),
                     sync_set=state.sync_set - {cmd.name}), True
    if isinstance(cmd, SetFailover):
        if lock.epoch != cmd.expected_epoch:
            return state, False
        request = (None if cmd.candidate is None else
                   FailoverRequest(cmd.candidate, cmd.expected_epoch, cmd.force))
        return _next(state, failover=request), True
    if isinstance(cmd, SetSettings):
        if cmd.expected_version != state.settings_version:
            return state, False
        change = SettingsChange(state.settings_version + 1, cmd.changes, cmd.by,
                                float(cmd.wall_time))
        return _next(state, settings=merge(state.settings, cmd.changes),
                     settings_history=(*state.settings_history, change)[-MAX_HISTORY:]), True
    raise CommandError(f"unknown command {cmd!r}")

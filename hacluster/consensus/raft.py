"""The Raft edge: the replicated ``ClusterState`` on pysyncobj, with its journal on disk.

Owns the pysyncobj object (its port, password, journal and dump files under the node's data
dir, timing), turning commands into small tuples of plain values for the log and back, calling
``state.apply_command`` when entries commit, and the local observations the decision needs: when
this node last saw the lock change, and when its own last proposal was committed (proof, by
commit, that a majority still answers). It must never start without a password (pysyncobj
unpickles what it receives), never run ticks before the state exists, and never decide
anything: ``decide`` does, from ``snapshot()``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import MultiFernet
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.encryptor import getEncryptor

from hacluster.background import yield_to_event_loop
from hacluster.config import ConsensusConfig
from hacluster.consensus.raft_journal import install_patches
from hacluster.consensus.raft_journal_format import applying_index, journal_stats, received_at
from hacluster.consensus.state import (
    Acquire,
    ClusterState,
    Command,
    CommandError,
    Forget,
    Release,
    Renew,
    Report,
    SetFailover,
    SetPaused,
    SetSettings,
    SetSyncSet,
    apply_command,
)

log = logging.getLogger(__name__)


# Durable Raft storage: every pysyncobj patch lives in raft_journal and is applied here, at
# import, before any journal is opened (it raises if pysyncobj is not the version it knows).
install_patches()


class RaftConfigError(Exception):
    """The Raft layer cannot start as configured (no password, bad addresses)."""


# How soon a refused Raft connection to a peer is tried again (pysyncobj's connectionRetryTime).
RECONNECT_S = 0.1
_DEFAULTS = ConsensusConfig()


@dataclass(frozen=True, slots=True)
class RaftTiming:
    # The config's defaults (consensus.*): one place for every timing.
    election_min_s: float = _DEFAULTS.election_min_s
    election_max_s: float = _DEFAULTS.election_max_s
    heartbeat_s: float = _DEFAULTS.raft_heartbeat_s
    connection_timeout_s: float = 1.5
    compaction_min_entries: int = _DEFAULTS.log_compaction_min_entries
    compaction_min_time_s: float = _DEFAULTS.log_compaction_min_time_s


def encode_command(cmd: Command) -> tuple[Any, ...]:
    """Plain values only in the log: the receiver rebuilds (and re-validates) the command."""
    # Fields added later go at the end, with defaults, so entries written before still decode.
    if isinstance(cmd, Acquire):
        return ("acquire", cmd.candidate, cmd.expected_epoch, cmd.expected_renewals,
                cmd.start_seq, cmd.lease_s, cmd.reason, cmd.wall_time, cmd.last_epoch,
                cmd.lag_allowance, cmd.force)
    if isinstance(cmd, Renew):
        return ("renew", cmd.holder, cmd.epoch, cmd.applied_seq, cmd.acked_seq)
    if isinstance(cmd, Release):
        return ("release", cmd.holder, cmd.epoch, cmd.successor, cmd.acked_seq)
    if isinstance(cmd, Report):
        return ("report", cmd.name, cmd.api_url, cmd.applied_seq, cmd.role, cmd.healthy,
                tuple(sorted(cmd.tags)), cmd.last_epoch, cmd.clock)
    if isinstance(cmd, SetSyncSet):
        return ("sync_set", cmd.holder, cmd.epoch, tuple(sorted(cmd.names)))
    if isinstance(cmd, SetFailover):
        return ("failover", cmd.candidate, cmd.expected_epoch, cmd.force)
    if isinstance(cmd, Forget):
        return ("forget", cmd.name)
    if isinstance(cmd, SetSettings):
        return ("settings", cmd.expected_version, cmd.changes, cmd.by, cmd.wall_time)
    return ("pause", cmd.paused)


# An Acquire as versions before the lineage and floor checks wrote it.
LEGACY_ACQUIRE_FIELDS = 7


def decode_command(raw: Any) -> Command:
    if not isinstance(raw, tuple) or not raw or not isinstance(raw[0], str):
        raise CommandError(f"not a command: {type(raw).__name__}")
    kind, args = raw[0], raw[1:]
    try:
        if kind == "acquire":
            if len(args) == LEGACY_ACQUIRE_FIELDS:
                candidate, epoch, renewals, start_seq, lease_s, reason, wall_time = args
                return Acquire(candidate, epoch, renewals, start_seq, lease_s, reason,
                               wall_time, legacy=True)
            return Acquire(*args)
        if kind == "renew":
            return Renew(*args)
        if kind == "release":
            return Release(*args)
        if kind == "report":
            name, api_url, applied_seq, role, healthy, tags, *rest = args
            return Report(name, api_url, applied_seq, role, healthy, frozenset(tags), *rest)
        if kind == "sync_set":
            holder, epoch, names = args
            return SetSyncSet(holder, epoch, frozenset(names))
        if kind == "pause":
            return SetPaused(bool(args[0]))
        if kind == "forget":
            (name,) = args
            return Forget(name)
        if kind == "settings":
            expected, changes, by, wall_time = args
            return SetSettings(expected, tuple(tuple(c) for c in changes), by, wall_time)
        if kind == "failover":
            candidate, epoch, force = args
            return SetFailover(candidate, epoch, bool(force))
    except (TypeError, ValueError) as exc:
        raise CommandError(f"bad {kind} command: {exc}") from None
    raise CommandError(f"unknown command {kind!r}")


class StateReplica(SyncObj):  # type: ignore[misc]
    """pysyncobj's side of one node: the replicated state machine, and nothing else.

    The only subclass of ``SyncObj``. Attributes set after ``SyncObj.__init__`` are its
    serialized state (pysyncobj dumps them): ``_state`` alone, as in every dump written so far.
    ``RaftNode`` owns one and is the rest of the code's only way to it.
    """

    def __init__(self, self_addr: str, partner_addrs: list[str], conf: SyncObjConf,
                 on_apply: Callable[[Command, bool, ClusterState], None],
                 also_accepted: str | None = None) -> None:
        # Set before SyncObj.__init__: not part of the serialized state.
        self._on_apply = on_apply
        super().__init__(self_addr, partner_addrs, conf)
        if also_accepted:
            # A rolling change of the Raft password: send with ``conf.password``, accept that
            # or ``also_accepted``. pysyncobj keeps one Fernet per node and asks it only for
            # encrypt_at_time, extract_timestamp and decrypt, which MultiFernet answers (the
            # first key encrypts, any key decrypts). Private: pysyncobj is pinned below 0.4.
            # Replacing an attribute SyncObj.__init__ set keeps it out of the dumps.
            encryptor = MultiFernet([getEncryptor(conf.password), getEncryptor(also_accepted)])
            self._SyncObj__encryptor = encryptor
            # The transport made the outgoing connections in SyncObj.__init__, each holding
            # the single-key Fernet of that moment.
            transport = self._SyncObj__transport
            for conn in [*transport._connections.values(), *transport._unknownConnections]:
                if conn.encryptor is not None:
                    conn.encryptor = encryptor
        self._state = ClusterState()

    @replicated  # type: ignore[untyped-decorator]
    def _apply(self, raw: Any) -> bool:
        try:
            cmd = decode_command(raw)
        except CommandError as exc:
            log.error("ignored a malformed Raft command: %s", exc)
            return False
        self._state, ok = apply_command(self._state, cmd)
        self._on_apply(cmd, ok, self._state)
        return ok


class RaftNode:
    """One node's replica of the cluster state behind the consensus port the loop uses:
    propose, snapshot, membership, leadership transfer, status. Ticks run on its own thread
    after start(). Holds pysyncobj (``replica``) by composition; nothing else touches it."""

    def __init__(self, self_addr: str, partner_addrs: list[str], data_dir: Path,
                 password: str | None, timing: RaftTiming,
                 on_change: Callable[[ClusterState], None] | None = None,
                 also_accepted: str | None = None) -> None:
        if not password:
            raise RaftConfigError("the Raft port needs a password (cluster.raft_password or "
                                  "HACLUSTER_RAFT_PASSWORD): pysyncobj unpickles what it "
                                  "receives, so an open port would run anyone's code")
        data_dir.mkdir(parents=True, exist_ok=True)
        self._on_change = on_change
        self._lock_key: tuple[int, int, bool] | None = None
        self._lock_seen_at: float | None = None
        # name -> (the clock in its last report, when this node applied that report): clock
        # rates are measured from apply times, not the control loop's next pass (less jitter).
        self._report_seen: dict[str, tuple[float, float]] = {}
        self._last_ack_at: float | None = None
        self._obs_lock = threading.Lock()
        self._stop = threading.Event()
        # pysyncobj is not thread-safe beyond proposing: other calls run on the tick thread.
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._dir = data_dir
        self._compactions = 0
        try:
            self._dump_mtime = (data_dir / "raft.dump").stat().st_mtime
        except OSError:
            self._dump_mtime = 0.0
        self._next_dump_check = 0.0
        self.ready = threading.Event()   # set once this node has applied the leader's log
        self.last_tick_at: float | None = None   # liveness: when a tick last completed
        self._last_shed = 0.0
        self._later: list[tuple[float, Callable[[], None]]] = []
        self.tick_error: str | None = None
        self._leader_seen: str | None = None
        self._thread: threading.Thread | None = None
        self.thread_batch: bool | None = None   # the tick thread's policy set (None: not yet)
        conf = SyncObjConf(
            password=password, autoTick=False, commandsWaitLeader=False,
            journalFile=str(data_dir / "raft.journal"),
            fullDumpFile=str(data_dir / "raft.dump"),
            raftMinTimeout=timing.election_min_s, raftMaxTimeout=timing.election_max_s,
            appendEntriesPeriod=timing.heartbeat_s,
            # A peer that refused a connection (not up yet, restarting) is tried again this
            # often: a node started before its peers, or a peer back from a restart or a
            # partition, rejoins within 0.1 s of becoming reachable instead of 0.5 s. A failed
            # attempt costs a refused connect; only one that connects pays for the handshake.
            connectionTimeout=timing.connection_timeout_s, connectionRetryTime=RECONNECT_S,
            logCompactionMinEntries=timing.compaction_min_entries,
            logCompactionMinTime=timing.compaction_min_time_s, useFork=False,
            # A leader cut off from the majority steps down after this long; fencing never
            # relies on it (leases do), it only keeps the Raft view honest.
            leaderFallbackTimeout=max(2.0, timing.election_max_s * 4),
            # Members are added and removed through the log (hacluster member add/remove).
            dynamicMembershipChange=True,
            onReady=self.ready.set,
        )
        self.replica = StateReplica(self_addr, partner_addrs, conf, self._applied,
                                    also_accepted)

    def _applied(self, cmd: Command, ok: bool, state: ClusterState) -> None:
        """On the tick thread, after each command is applied (in log order)."""
        lock = state.lock
        key = (lock.epoch, lock.renewals, lock.released)
        now = time.monotonic()
        # When this node received the entry, not when it applied it: the two differ by a Raft
        # election when the old leader (often the primary) vanished with a renewal replicated
        # but its commit not yet announced; the next leader commits it only after winning.
        # Receipt is just as safe a start for the others' view of the lease: the entry left
        # the holder after it proposed, so it reached this node after the holder's lease
        # started (lease.py). Unknown (entries loaded at start): the apply time, as before.
        received = received_at(self.replica, applying_index(self.replica))
        seen_at = now if received is None else min(received, now)
        with self._obs_lock:
            if key != self._lock_key:
                self._lock_key = key
                self._lock_seen_at = seen_at
            if ok and isinstance(cmd, Report):
                self._report_seen[cmd.name] = (cmd.clock, time.monotonic())
        if self._on_change is not None:
            self._on_change(state)

    @property
    def self_address(self) -> str:
        return str(self.replica.selfNode)

    def is_leader(self) -> bool:
        return bool(self.replica._isLeader())

    # -- the node's side ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._tick, name="raft", daemon=True)
        self._thread.start()

    def _tick(self) -> None:
        self.thread_batch = yield_to_event_loop("raft")
        failing_since: float | None = None
        last_failure = 0.0
        while not self._stop.is_set():
            try:
                self.replica.doTick(0.02)
            except Exception as exc:
                # pysyncobj writes its journal and meta files from here; a full disk makes
                # those raise. A dead tick thread would leave a node that serves HTTP but
                # never hears Raft again: report it, keep trying, and let liveness tell.
                now = last_failure = time.monotonic()
                if failing_since is None:
                    failing_since = now
                    # The first failure with its traceback: where a tick broke (a borrow error
                    # of a Rust-backed object once, with no clue to which).
                    log.error("Raft ticks failing (retrying): %s: %s", type(exc).__name__, exc,
                              exc_info=True)
                self.tick_error = f"{type(exc).__name__}: {exc}"
                self._shed_leadership(now)
                self._run_calls()
                self._stop.wait(0.1)
                continue
            now = time.monotonic()
            if failing_since is not None and now - last_failure > 2.0:
                log.info("Raft ticks work again (they failed from %.1f s to %.1f s ago)",
                         now - failing_since, now - last_failure)
                failing_since = None
                self.tick_error = None
            if self.tick_error is None:
                self.last_tick_at = now
            self._note_leader()
            self._run_calls()
            now = time.monotonic()
            if now >= self._next_dump_check:
                self._next_dump_check = now + 1.0
                self._note_compaction()

    def _note_leader(self) -> None:
        # Operators (and bench/failover.py --timeline) read failovers from the logs: say when
        # Raft's leader changes, as this node sees it (an attribute read; no decision on it).
        leader = self.replica._getLeader()
        name = str(leader) if leader is not None else None
        if name != self._leader_seen:
            self._leader_seen = name
            log.info("Raft leader is now %s", name or "unknown (election)")

    def _run_calls(self) -> None:
        now = time.monotonic()
        due = [fn for when, fn in self._later if when <= now]
        self._later = [(when, fn) for when, fn in self._later if when > now]
        for fn in due:
            self._calls.put(fn)
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                call()
            except Exception:
                log.exception("Raft call failed")

    def _shed_leadership(self, now: float) -> None:
        """A leader whose ticks fail (its disk is full) half-serves the others: some stop
        hearing from it without an election. Hand the leadership to a follower instead."""
        if now - self._last_shed < 1.0:
            return
        self._last_shed = now
        try:
            if self.replica._isLeader():
                log.warning("Raft ticks failing on the leader: handing Raft leadership over")
                self.replica.transferLeadership(None)
        except Exception as exc:
            log.warning("could not hand Raft leadership over: %s", exc)

    def _note_compaction(self) -> None:
        # pysyncobj says nothing when it compacts; a new dump file is the sign.
        try:
            mtime = (self._dir / "raft.dump").stat().st_mtime
        except OSError:
            return
        if mtime != self._dump_mtime:
            self._compactions += 1
            log.info("Raft log compacted into raft.dump: %s entries left in the log",
                     self.replica.getStatus().get("log_len"))
        self._dump_mtime = mtime

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the tick thread, between ticks."""
        self._calls.put(fn)

    def transfer_leadership(self, address: str, within_s: float = 3.0) -> None:
        """Best effort: move the Raft leadership to ``address`` while we lead.

        pysyncobj refuses a transfer to a follower that lacks the leader's last entry, which
        under load is most of the time: try again every 100 ms until the leadership has moved
        or ``within_s`` has passed.
        """
        deadline = time.monotonic() + within_s

        def attempt() -> None:
            if not self.replica._isLeader():
                return                                   # moved (or lost anyway): done
            if time.monotonic() > deadline:
                log.warning("Raft leadership transfer to %s did not happen within %.1f s",
                            address, within_s)
                return

            def done(result: Any, error: Any) -> None:
                if error == FAIL_REASON.SUCCESS:
                    log.info("Raft leadership transfer to %s: sent", address)
                self.call_later(0.1, attempt)           # check it moved, or try again

            self.replica.transferLeadership(address, callback=done)

        self.call_soon(attempt)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the tick thread after ``delay`` seconds."""
        when = time.monotonic() + delay
        self.call_soon(lambda: self._later.append((when, fn)))

    def change_membership(self, action: str, address: str,
                          done: Callable[[bool], None]) -> None:
        """Add or remove ``address`` (host:port) as a Raft member through the log."""
        def callback(result: Any, error: Any) -> None:
            if error != FAIL_REASON.SUCCESS:
                log.warning("Raft membership change %s %s failed: %s", action, address, error)
            done(error == FAIL_REASON.SUCCESS)

        if action == "add":
            self.replica.addNodeToCluster(address, callback=callback)
        elif action == "remove":
            self.replica.removeNodeFromCluster(address, callback=callback)
        else:
            raise ValueError(f"unknown membership action {action!r}")

    def raft_members(self) -> list[str]:
        """This node's view of the Raft members' addresses (itself included)."""
        return sorted([str(self.replica.selfNode), *(str(n) for n in self.replica.otherNodes)])

    def compact_log(self) -> None:
        """Compact the Raft log into the dump now rather than at the next threshold."""
        self.call_soon(self.replica.forceLogCompaction)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.replica.destroy()

    def propose(self, cmd: Command,
                done: Callable[[bool | None, float], None] | None = None) -> float:
        """Append ``cmd`` to the log; ``done(took_effect, proposed_at)`` runs when it is decided.

        ``took_effect`` is True or False once the command committed (with or without effect),
        None when it could not be committed (no leader, timeout): nothing changed then.

        Returns the proposal time (monotonic). A commit also proves a majority answered after
        that time, which ``has_quorum`` and lease renewals rely on.
        """
        proposed_at = time.monotonic()

        def callback(result: Any, error: Any) -> None:
            if error != FAIL_REASON.SUCCESS:
                log.debug("Raft command %s not committed: %s", cmd, error)
                if done is not None:
                    done(None, proposed_at)
                return
            with self._obs_lock:
                if self._last_ack_at is None or proposed_at > self._last_ack_at:
                    self._last_ack_at = proposed_at
            if done is not None:
                done(bool(result), proposed_at)

        self.replica._apply(encode_command(cmd), callback=callback)
        return proposed_at

    def snapshot(self) -> ClusterState:
        return self.replica._state

    def lock_seen_at(self) -> float | None:
        with self._obs_lock:
            return self._lock_seen_at

    def report_seen_at(self, name: str, clock: float) -> float | None:
        """When this node applied ``name``'s report carrying ``clock``; None if not the last."""
        with self._obs_lock:
            seen = self._report_seen.get(name)
        return seen[1] if seen is not None and seen[0] == clock else None

    def has_quorum(self, now: float, window_s: float) -> bool:
        """A proposal of ours made within ``window_s`` has been committed."""
        with self._obs_lock:
            return self._last_ack_at is not None and now - self._last_ack_at <= window_s

    def raft_status(self) -> dict[str, Any]:
        status = self.replica.getStatus()
        leader = status.get("leader")
        files = {}
        for name in ("raft.journal", "raft.dump"):
            try:
                files[name] = (self._dir / name).stat()
            except OSError:
                pass
        dump = files.get("raft.dump")
        return {"leader": str(leader) if leader is not None else None,
                "term": status.get("raft_term"), "log_len": status.get("log_len"),
                "commit_idx": status.get("commit_idx"),
                "last_applied": status.get("last_applied"),
                "tick_error": self.tick_error,
                "members": self.raft_members(),
                "compactions": self._compactions,
                # Torn final journal records cut at start (a power loss mid-append).
                "torn_records_truncated": journal_stats(self.replica)["torn_records_truncated"],
                "journal_bytes": files["raft.journal"].st_size if "raft.journal" in files
                else None,
                "dump_bytes": dump.st_size if dump else None,
                "dump_age_s": round(time.time() - dump.st_mtime, 1) if dump else None}

"""RaftNode on real pysyncobj: three nodes on loopback sockets, journals in real directories."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacluster.consensus.raft import (
    RaftConfigError,
    RaftNode,
    RaftTiming,
    decode_command,
    encode_command,
)
from hacluster.consensus.state import (
    Acquire,
    CommandError,
    Release,
    Renew,
    Report,
    SetPaused,
    SetSyncSet,
)
from hacluster.testing.harness import free_ports, wait_for

PASSWORD = "raft-test-password-0123"
TIMING = RaftTiming(election_min_s=0.2, election_max_s=0.5, heartbeat_s=0.05)


class Trio:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        self.nodes: dict[int, RaftNode] = {}

    def start(self, i: int) -> RaftNode:
        partners = [a for j, a in enumerate(self.addrs) if j != i]
        node = RaftNode(self.addrs[i], partners, self.root / f"n{i}", PASSWORD, TIMING)
        node.start()
        self.nodes[i] = node
        return node

    def stop(self, i: int) -> None:
        self.nodes.pop(i).stop()

    def propose_all(self, i: int, cmds: dict[int, object], timeout: float = 30.0) -> list[int]:
        """Propose every command at once; the keys of those not committed (None answers)."""
        answered: dict[int, bool | None] = {}
        all_done = threading.Event()

        def done(k: int, ok: bool | None, proposed_at: float) -> None:
            answered[k] = ok
            if len(answered) == len(cmds):
                all_done.set()

        for k, cmd in cmds.items():
            self.nodes[i].propose(cmd, functools.partial(done, k))  # type: ignore[arg-type]
        assert all_done.wait(timeout), f"{len(answered)} of {len(cmds)} proposals answered"
        return sorted(k for k, ok in answered.items() if ok is None)

    def propose_and_wait(self, i: int, cmd: object, timeout: float = 10.0) -> bool:
        done = threading.Event()
        result: list[bool] = []

        def cb(ok: bool | None, proposed_at: float) -> None:
            if ok is not None:  # None: not committed (no leader yet); propose again
                result.append(ok)
            done.set()

        node = self.nodes[i]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:  # no leader yet: proposals fail, try again
            done.clear()
            node.propose(cmd, cb)  # type: ignore[arg-type]
            if done.wait(0.5) and result:
                return result[-1]
        raise AssertionError(f"{cmd} was not committed within {timeout} s")


@pytest.fixture
def trio(tmp_path: Path) -> Iterator[Trio]:
    t = Trio(tmp_path)
    yield t
    for i in list(t.nodes):
        t.stop(i)


def test_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    with pytest.raises(RaftConfigError, match="needs a password"):
        RaftNode("127.0.0.1:1", [], tmp_path, None, TIMING)


def pair_elects(root: Path, first: tuple[str, str | None], second: tuple[str, str | None],
                wait: float) -> bool:
    """Do two nodes with these (password sent, also accepted) elect a leader within wait?"""
    addrs = [f"127.0.0.1:{p}" for p in free_ports(2)]
    nodes = [RaftNode(addrs[i], [addrs[1 - i]], root / f"p{i}", sent, TIMING, also_accepted=also)
             for i, (sent, also) in enumerate((first, second))]
    for node in nodes:
        node.start()
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if nodes[0].replica.getStatus().get("leader") is not None:
                return True
            time.sleep(0.05)
        return False
    finally:
        for node in nodes:
            node.stop()


def test_a_second_accepted_password_lets_a_rolling_password_change_keep_quorum(
        tmp_path: Path) -> None:
    old, new = PASSWORD, "the-next-raft-password-0123"
    # Phase 1 nodes (send old, accept new) with phase 2 nodes (send new, accept old).
    assert pair_elects(tmp_path / "a", (old, new), (new, old), 5.0)
    # Phase 1 with a node not yet restarted; phase 2 with the new password alone.
    assert pair_elects(tmp_path / "b", (old, new), (old, None), 5.0)
    assert pair_elects(tmp_path / "c", (new, old), (new, None), 5.0)
    # But a node sending the new password cannot talk to one that knows only the old one:
    # phase 1 must be complete on every node before phase 2 starts.
    assert not pair_elects(tmp_path / "d", (new, old), (old, None), 2.0)


def test_commands_round_trip_as_plain_tuples() -> None:
    cmds = [Acquire("n1", 3, 4, 100, 1.0, "failover", 1.5), Renew("n1", 4, 77), Release("n1", 4),
            Release("n1", 4, "n2"),
            Report("n2", "http://x", 5, "replica", True, frozenset({"nofailover"})),
            SetSyncSet("n1", 4, frozenset({"n2", "n3"})), SetPaused(True)]
    for cmd in cmds:
        raw = encode_command(cmd)
        assert all(v is None or isinstance(v, str | int | float | bool | tuple) for v in raw)
        assert decode_command(raw) == cmd
    for junk in [None, (), ("launch",), ("renew", "bad name", 1), ("acquire", "n1")]:
        with pytest.raises(CommandError):
            decode_command(junk)


def test_three_nodes_agree_and_the_lock_is_compare_and_set(trio: Trio) -> None:
    for i in range(3):
        trio.start(i)
    for i in range(3):
        assert trio.propose_and_wait(i, Report(f"n{i}", f"http://n{i}", 10 * i, "replica", True))
    # Two candidates race for the same epoch: exactly one wins.
    a = trio.propose_and_wait(1, Acquire("n1", 0, 0, 11, 1.0, "bootstrap", time.time()))
    b = trio.propose_and_wait(2, Acquire("n2", 0, 0, 21, 1.0, "bootstrap", time.time()))
    assert (a, b) == (True, False)
    assert trio.propose_and_wait(1, Renew("n1", 1))
    wait_for(lambda: all(n.snapshot() == trio.nodes[0].snapshot() for n in trio.nodes.values())
             and trio.nodes[0].snapshot().lock.renewals == 1, 10, "all nodes to agree")
    state = trio.nodes[2].snapshot()
    assert (state.lock.holder, state.lock.epoch) == ("n1", 1)
    assert [m.applied_seq for m in state.members] == [0, 10, 20]
    seen = trio.nodes[2].lock_seen_at()
    assert seen is not None and time.monotonic() - seen < 10
    assert trio.nodes[0].raft_status()["leader"] is not None


def test_quorum_is_proven_by_commits_and_lost_with_the_majority(trio: Trio) -> None:
    for i in range(3):
        trio.start(i)
    assert trio.propose_and_wait(0, SetPaused(False))
    assert trio.nodes[0].has_quorum(time.monotonic(), 2.0)
    trio.stop(1)
    trio.stop(2)
    # Alone, nothing commits any more: the last proof of quorum ages out.
    trio.nodes[0].propose(SetPaused(True))
    time.sleep(1.5)
    assert not trio.nodes[0].has_quorum(time.monotonic(), 1.0)
    assert trio.nodes[0].snapshot().paused is False


def test_state_survives_a_full_restart(trio: Trio) -> None:
    for i in range(3):
        trio.start(i)
    assert trio.propose_and_wait(0, Acquire("n0", 0, 0, 1, 1.0, "bootstrap", time.time()))
    assert trio.propose_and_wait(0, SetPaused(True))
    for i in range(3):
        trio.stop(i)
    for i in range(3):
        trio.start(i)
    wait_for(lambda: all(n.snapshot().paused and n.snapshot().lock.holder == "n0"
                         for n in trio.nodes.values()), 15, "the journal to be replayed")
    assert [r.epoch for r in trio.nodes[1].snapshot().history] == [1]


def test_log_is_compacted_into_a_dump_and_a_restart_replays_it(tmp_path: Path) -> None:
    t = Trio(tmp_path)
    timing = RaftTiming(election_min_s=0.2, election_max_s=0.5, heartbeat_s=0.05,
                        compaction_min_entries=30, compaction_min_time_s=3600)
    try:
        for i in range(3):
            partners = [a for j, a in enumerate(t.addrs) if j != i]
            t.nodes[i] = RaftNode(t.addrs[i], partners, tmp_path / f"n{i}", PASSWORD, timing)
            t.nodes[i].start()
        assert t.propose_and_wait(0, Report("n0", "http://n0", 0, "replica", True))
        # The rest in flight together (one at a time took 12 s); any not committed goes again,
        # and the last one only after all others, so it is the one the state keeps.
        pending = list(range(1, 119))
        while pending:
            pending = t.propose_all(0, {k: Report("n0", "http://n0", k, "replica", True)
                                        for k in pending})
        assert t.propose_and_wait(0, Report("n0", "http://n0", 119, "replica", True))
        # Past 30 entries each node dumps its state and drops the log it covers.
        wait_for(lambda: all(n.raft_status()["log_len"] < 60 for n in t.nodes.values()), 15,
                 "every node to compact its log")
        status = t.nodes[1].raft_status()
        assert status["dump_bytes"] and status["journal_bytes"]
        wait_for(lambda: t.nodes[1].raft_status()["compactions"] >= 1, 5,
                 "the compaction to be noticed")
        for i in range(3):
            t.stop(i)
        for i in range(3):
            t.start(i)   # default timing: no compaction threshold reached while replaying
        wait_for(lambda: all(n.snapshot().member("n0") is not None
                             and n.snapshot().member("n0").applied_seq == 119  # type: ignore[union-attr]
                             for n in t.nodes.values()), 15, "the dump and log to be replayed")
    finally:
        for i in list(t.nodes):
            t.stop(i)


def test_journal_growth_on_a_full_disk_is_an_error_not_a_crash(small_disk: Path) -> None:
    """pysyncobj grows its journal through an mmap: unpatched, a full disk is a SIGBUS."""
    import subprocess
    import sys
    script = f"""
import hacluster.consensus.raft
from pysyncobj.journal import ResizableFile
f = ResizableFile({str(small_disk / 'j')!r}, initialSize=1024, defaultContent=b"h" * 16)
try:
    with open({str(small_disk / 'ballast')!r}, "wb", buffering=0) as b:
        while True:
            b.write(b"\\0" * 4096)
except OSError:
    pass
offset = 1024
try:
    while True:
        f.write(offset, b"x" * 1000)
        offset += 1000
except OSError as exc:
    print("OSError", exc.errno)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-500:])
    assert done.stdout.strip() == "OSError 28"


def test_a_journal_append_that_fails_on_a_full_disk_changes_nothing(small_disk: Path) -> None:
    """Memory and file stay equal when an append (or a term and vote) fails to be stored."""
    import subprocess
    import sys
    script = f"""
import os
import hacluster.consensus.raft
from pysyncobj.journal import FileJournal
path, ballast = {str(small_disk / 'raft.journal')!r}, {str(small_disk / 'ballast')!r}
j = FileJournal(path)
j.setCurrentTerm(3, "n1")
for i in range(1, 11):
    j.add(b"entry-%d" % i, i, 1)
try:
    with open(ballast, "wb", buffering=0) as b:
        while True:
            b.write(b"\\0" * 4096)
except OSError:
    pass
failed = 0
i = 11
while failed == 0:
    try:
        j.add(b"x" * 2000, i, 1)
        i += 1
    except OSError:
        failed = i
assert len(j) == failed - 1, (len(j), failed)
try:
    for _ in range(1000):          # fill what the failed append left, then the meta store
        with open(ballast + "2", "ab", buffering=0) as b:
            b.write(b"\\0" * 4096)
except OSError:
    pass
try:
    j.setCurrentTerm(4, "n2")
    raise SystemExit("the term was stored on a full disk?")
except OSError:
    pass
assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (3, "n1")   # nothing changed
os.unlink(ballast + "2")
os.unlink(ballast)
j.add(b"after", failed, 1)
entries = [(bytes(j[k][0]), j[k][1]) for k in range(len(j))]
j._destroy()
again = FileJournal(path)
assert [(bytes(again[k][0]), again[k][1]) for k in range(len(again))] == entries
print("ok", failed)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-800:])
    assert done.stdout.startswith("ok ")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs to fill (mounting it needs root)."""
    import os
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)

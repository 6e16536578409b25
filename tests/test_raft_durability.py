"""Durable Raft storage (hacluster/consensus/raft_journal.py), on real RaftNodes and real files.

A torn final journal record (a power loss mid-append) is cut at start and counted; damage in
the middle of the journal, or an unreadable term-and-vote file, stops the node with an error
naming the file. After proposals commit, the journal, the term-and-vote file and the dump have
no dirty pages left in the page cache (read from /proc/self/smaps): they reached the disk,
which they do not with the syncs off. An unknown pysyncobj layout stops the import.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pysyncobj.journal import FIRST_RECORD_OFFSET, LAST_RECORD_OFFSET_OFFSET

from hacluster.consensus import raft_journal
from hacluster.consensus.raft import RaftNode, RaftTiming
from hacluster.consensus.raft_journal import JournalCorruptError, journal_stats
from hacluster.consensus.state import Report
from hacluster.testing.harness import free_ports, wait_for
from hacluster.testing.lazyfs import LazyFS, PowerLoss, fuse_unavailable

PASSWORD = "raft-test-password-0123"
# No compaction by time while a test runs: the journal holds every entry.
TIMING = RaftTiming(election_min_s=0.2, election_max_s=0.5, heartbeat_s=0.05,
                    compaction_min_time_s=3600)


def records(journal: Path) -> tuple[list[tuple[int, int]], int]:
    """(offset, size) of each record up to the header's log end, and that end."""
    data = journal.read_bytes()
    (end,) = struct.unpack_from("<I", data, LAST_RECORD_OFFSET_OFFSET)
    out, offset = [], FIRST_RECORD_OFFSET
    while offset < end:
        (n,) = struct.unpack_from("<I", data, offset)
        out.append((offset, n))
        offset += n + 8
    assert offset == end
    return out, end


def commit_all(node: RaftNode, seqs: range, timeout: float = 15.0) -> None:
    """Propose a Report per seq (all at once) and wait until every one is committed."""
    left = threading.Semaphore(0)
    failed: list[object] = []

    def done(ok: bool | None, _at: float) -> None:
        if ok is not True:
            failed.append(ok)
        left.release()

    for seq in seqs:
        node.propose(Report("n0", "http://n0", seq, "replica", True), done)
    for _ in seqs:
        assert left.acquire(timeout=timeout), "a proposal was not decided"
    assert not failed, failed


class Solo:
    """One RaftNode alone on loopback: it elects itself and commits by itself."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "n0"
        self.addr = f"127.0.0.1:{free_ports(1)[0]}"
        self.node: RaftNode | None = None

    @property
    def journal(self) -> Path:
        return self.dir / "raft.journal"

    def start(self) -> RaftNode:
        self.node = RaftNode(self.addr, [], self.dir, PASSWORD, TIMING)
        self.node.start()
        wait_for(lambda: self.node is not None and self.node.is_leader(), 10, "self-election")
        return self.node

    def stop(self) -> None:
        if self.node is not None:
            self.node.stop()
            self.node = None

    def applied_seq(self) -> int | None:
        assert self.node is not None
        member = self.node.snapshot().member("n0")
        return member.applied_seq if member is not None else None


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[Solo]:
    s = Solo(tmp_path)
    yield s
    s.stop()


def write_and_stop(solo: Solo, count: int) -> list[tuple[int, int]]:
    commit_all(solo.start(), range(count))
    solo.stop()
    recs, _ = records(solo.journal)
    return recs


@pytest.mark.parametrize("tear", ["file cut mid-record", "record never written"])
def test_rule_4_a_torn_final_record_is_cut_and_the_node_starts(solo: Solo, tear: str) -> None:
    recs = write_and_stop(solo, 20)
    last_at, last_size = recs[-1]
    if tear == "file cut mid-record":
        os.truncate(solo.journal, last_at + 4 + last_size // 2)
    else:   # the header reached the disk, the record's page did not
        with open(solo.journal, "r+b") as f:
            f.seek(last_at)
            f.write(b"\0" * (last_size + 8))

    node = solo.start()
    assert node.raft_status()["torn_records_truncated"] == 1
    # Everything up to the last full record is there; the torn one (seq 19) is gone.
    wait_for(lambda: solo.applied_seq() == 18, 10, "the journal to be replayed")
    kept, end = records(solo.journal)
    assert kept == recs[:-1] + kept[len(recs) - 1:]     # the old records, then new ones
    assert end > last_at                                # and it appends after the cut again

    commit_all(node, range(100, 101))
    solo.stop()
    node = solo.start()       # the cut was made durable and clean: nothing torn this time
    assert node.raft_status()["torn_records_truncated"] == 0
    wait_for(lambda: solo.applied_seq() == 100, 10, "the journal to be replayed again")


def test_rule_4_a_damaged_record_in_the_middle_stops_the_node(solo: Solo) -> None:
    recs = write_and_stop(solo, 20)
    at, size = recs[len(recs) // 2]
    with open(solo.journal, "r+b") as f:
        f.seek(at + 4 + size)                      # its trailing size field
        f.write(struct.pack("<I", size + 1))
    with pytest.raises(JournalCorruptError) as err:
        solo.start()
    message = str(err.value)
    assert str(solo.journal) in message and f"offset {at} " in message
    assert "size fields differ" in message


def test_rule_4_an_unreadable_term_and_vote_stops_the_node(solo: Solo) -> None:
    write_and_stop(solo, 3)
    meta = solo.dir / "raft.journal.meta"
    meta.write_bytes(meta.read_bytes()[:5])       # a torn rewrite: the vote would be forgotten
    with pytest.raises(JournalCorruptError, match="term and vote cannot be read"):
        solo.start()


def test_rule_4_a_resend_never_cuts_entries_the_follower_has(tmp_path: Path) -> None:
    """pysyncobj's follower cut its log at prevLogIdx on every resend that overlapped it (and
    wrote the same entries again): acknowledged entries left the disk for a while. Messages
    from a leader go through the real handler of a real (not ticking) RaftNode."""
    from pysyncobj.journal import FileJournal

    addr, leader_addr = (f"127.0.0.1:{p}" for p in free_ports(2))
    node = RaftNode(addr, [leader_addr], tmp_path / "n1", PASSWORD, TIMING)
    journal = tmp_path / "n1" / "raft.journal"
    try:
        leader = next(iter(node.replica.otherNodes))

        def append(term: int, prev: tuple[int, int], entries: list[tuple[int, int]],
                   commit: int = 1) -> None:
            node.replica._SyncObj__onMessageReceived(leader, {
                "type": "append_entries", "term": term, "commit_index": commit,
                "prevLogIdx": prev[0], "prevLogTerm": prev[1],
                "entries": [(b"\xff%d-%d" % (i, t), i, t) for i, t in entries]})

        def log() -> list[tuple[int, int]]:
            raft_log = node.replica._SyncObj__raftLog
            return [(raft_log[k][1], raft_log[k][2]) for k in range(len(raft_log))]

        append(1, (1, 0), [(i, 1) for i in range(2, 12)])
        assert log() == [(1, 0)] + [(i, 1) for i in range(2, 12)]
        end = records(journal)[1]
        append(1, (1, 0), [(i, 1) for i in range(2, 7)])      # a resend of entries 2-6
        append(1, (4, 1), [])                                 # a late heartbeat
        assert log() == [(1, 0)] + [(i, 1) for i in range(2, 12)]
        assert records(journal)[1] == end                    # not cut, not rewritten
        append(1, (1, 0), [(i, 1) for i in range(2, 14)])     # overlapping, then new
        assert log() == [(1, 0)] + [(i, 1) for i in range(2, 14)]
        assert journal_stats(node.replica)["resent_kept"] == 5 + 10
        # A new leader whose entry 5 differs: cut there (Raft), not at its prevLogIdx.
        append(2, (1, 0), [(2, 1), (3, 1), (4, 1), (5, 2)])
        assert log() == [(1, 0), (2, 1), (3, 1), (4, 1), (5, 2)]
    finally:
        node.replica.destroy()
    again = FileJournal(str(journal))
    assert [(again[k][1], again[k][2]) for k in range(len(again))] == \
        [(1, 0), (2, 1), (3, 1), (4, 1), (5, 2)]
    again._destroy()


def dirty_kb(path: Path) -> int:
    """Dirty page-cache kB of ``path`` (not yet written to the disk), from /proc/self/smaps.

    The file is mapped read-only and every page touched; smaps counts a mapped page as dirty
    when the page cache holds it dirty, whoever wrote it.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        mm = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
        try:
            for offset in range(0, size, mmap.PAGESIZE):
                mm[offset]
            real, total, ours = os.path.realpath(path), 0, False
            with open("/proc/self/smaps") as smaps:
                for line in smaps:
                    parts = line.split()
                    if "-" in parts[0] and len(parts) >= 5:
                        ours = len(parts) >= 6 and parts[-1] == real
                    elif ours and parts[0] in ("Shared_Dirty:", "Private_Dirty:"):
                        total += int(parts[1])
            return total
        finally:
            mm.close()


class Trio:
    def __init__(self, root: Path, timing: RaftTiming) -> None:
        addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        self.dirs = [root / f"n{i}" for i in range(3)]
        self.nodes = [RaftNode(a, [b for b in addrs if b != a], d, PASSWORD, timing)
                      for a, d in zip(addrs, self.dirs, strict=True)]
        for n in self.nodes:
            n.start()

    def leader(self) -> RaftNode:
        wait_for(lambda: any(n.is_leader() for n in self.nodes), 10, "a leader")
        return next(n for n in self.nodes if n.is_leader())

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


@pytest.mark.parametrize("sync", [True, False], ids=["durable", "nosync"])
def test_rule_4_committed_entries_term_vote_and_dump_are_on_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync: bool) -> None:
    # The benchmark switch (HACLUSTER_RAFT_NOSYNC=1 sets it at import) proves the check bites:
    # with the syncs off the journals are still dirty in the page cache.
    monkeypatch.setattr(raft_journal, "SYNC", sync)
    trio = Trio(tmp_path, RaftTiming(election_min_s=0.2, election_max_s=0.5, heartbeat_s=0.05,
                                     compaction_min_entries=150, compaction_min_time_s=3600))
    try:
        leader = trio.leader()
        commit_all(leader, range(100))
        # Committed: on a majority's disk. Nothing was appended since, so every node that
        # acknowledged has nothing left to write.
        dirty = {f"{d.name}/{f}": dirty_kb(d / f) for d in trio.dirs
                 for f in ("raft.journal", "raft.journal.meta")}
        stats = [journal_stats(n.replica) for n in trio.nodes]
        commit_all(leader, range(100, 250))       # past 150 entries: each node dumps
        wait_for(lambda: all((d / "raft.dump").exists() for d in trio.dirs), 15, "the dumps")
        time.sleep(0.2)
        dirty.update({f"{d.name}/raft.dump": dirty_kb(d / "raft.dump") for d in trio.dirs})
    finally:
        trio.stop()
    if sync:
        assert dirty == dict.fromkeys(dirty, 0)
        # Batched: the 100 appends were synced in a few rounds, not one sync each.
        assert all(s["appends"] >= 100 and 0 < s["syncs"] * 4 < s["appends"] for s in stats), \
            stats
    else:
        # The journals (written through an mmap, never renamed) stay dirty. The meta file and
        # the dump may not: ext4 starts writing back a file renamed over another at once
        # (auto_da_alloc), which is no durability (nothing waits for it, nothing orders it).
        assert all(dirty[f"{d.name}/raft.journal"] > 0 for d in trio.dirs), dirty
        assert all(s["syncs"] == 0 for s in stats), stats


# -- power loss, for real: RaftNodes with their data dirs on LazyFS ----------------------------

NODE_SCRIPT = """
import json, sys, threading, time
from pathlib import Path
from hacluster.consensus.raft import RaftNode, RaftTiming
from hacluster.consensus.state import Report

index, addrs, data_dir = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
count, password = int(sys.argv[4]), sys.argv[5]
timing = RaftTiming(election_min_s=0.6, election_max_s=1.2, heartbeat_s=0.05,
                    compaction_min_time_s=3600)
node = RaftNode(addrs[index], [a for a in addrs if a != addrs[index]], Path(data_dir),
                password, timing)
node.start()
out = threading.Lock()
window = threading.Semaphore(20)

def say(**fields):
    with out:
        print(json.dumps(fields), flush=True)

def propose(seq):
    def done(ok, _at):
        if ok is True:
            say(committed=seq)                  # only ever printed once it is committed
            window.release()
        else:                                   # not committed (no leader yet): again
            node.call_later(0.1, lambda: propose(seq))
    node.propose(Report("n0", "http://n0", seq, "replica", True), done)

def feed():
    while node.replica._getLeader() is None:
        time.sleep(0.05)
    for seq in range(count):
        window.acquire()
        propose(seq)

if index == 0:
    threading.Thread(target=feed, daemon=True).start()
while True:
    say(term=node.replica.raftCurrentTerm, vote=node.replica._SyncObj__votedForNodeId)
    time.sleep(0.05)
"""


def journal_seqs(path: Path) -> set[int]:
    """The Report seqs in a journal's complete records (read-only, as found on the disk)."""
    from pysyncobj.pickle import loads
    data = path.read_bytes() if path.exists() else b""
    if len(data) < FIRST_RECORD_OFFSET:
        return set()
    (end,) = struct.unpack_from("<I", data, LAST_RECORD_OFFSET_OFFSET)
    seqs, offset = set(), FIRST_RECORD_OFFSET
    while offset + 4 <= min(end, len(data)):
        (n,) = struct.unpack_from("<I", data, offset)
        if n < 16 or offset + n + 8 > len(data):
            break
        command = data[offset + 20:offset + 4 + n]
        if command[:1] == b"\0":                       # a regular command: (id, (raw,))
            raw = loads(command[1:])[1][0]
            if raw[0] == "report":
                seqs.add(raw[3])
        offset += n + 8
    return seqs


def read_meta(path: Path) -> tuple[int, object] | None:
    """(term, vote) stored on the disk; None when the file is missing or unreadable."""
    from pysyncobj.pickle import loads
    try:
        meta = loads(path.read_bytes())
        return int(meta.get("currentTerm", 0)), meta.get("votedForNodeId")
    except Exception:
        return None


class PoweredCluster:
    """Three RaftNode processes with their data dirs on a LazyFS mount; node 0 proposes."""

    def __init__(self, fs: LazyFS, count: int, sync: bool) -> None:
        self.fs, self.count = fs, count
        self.addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        self.dirs = [fs.mount / f"n{i}" for i in range(3)]
        env = dict(os.environ)
        env.pop(raft_journal.NOSYNC_ENV, None)
        if not sync:
            env[raft_journal.NOSYNC_ENV] = "1"
        root = Path(__file__).resolve().parent.parent
        self.procs = [subprocess.Popen(
            [sys.executable, "-c", NODE_SCRIPT, str(i), ",".join(self.addrs), str(d),
             str(count), PASSWORD], stdout=subprocess.PIPE, cwd=root, env=env, text=True)
            for i, d in enumerate(self.dirs)]
        self.committed: set[int] = set()
        self.status: list[tuple[int, object] | None] = [None] * 3
        self.readers = [threading.Thread(target=self._read, args=(i,), daemon=True)
                        for i in range(3)]
        for r in self.readers:
            r.start()

    def _read(self, i: int) -> None:
        out = self.procs[i].stdout
        assert out is not None
        for line in out:
            fields = json.loads(line)
            if "committed" in fields:
                self.committed.add(fields["committed"])
            else:
                self.status[i] = (fields["term"], fields["vote"])

    def wait_committed(self, at_least: int) -> None:
        wait_for(lambda: len(self.committed) >= at_least
                 or any(p.poll() is not None for p in self.procs), 60, "the commits")
        assert all(p.poll() is None for p in self.procs), "a node process died"

    def power_loss(self) -> tuple[PowerLoss, list[tuple[int, object]]]:
        """Kill every node (no clean stop, no last msync) and cut the power.

        Returns what LazyFS dropped and the term and vote each node last acted on."""
        acted_on = [s for s in self.status if s is not None]
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        for r in self.readers:
            r.join(5)         # every commit printed before the kill is in self.committed
        assert len(acted_on) == 3
        return self.fs.power_loss(), acted_on

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.skipif(fuse_unavailable() is not None, reason=fuse_unavailable() or "")
@pytest.mark.parametrize(("sync", "when"), [(True, "after the commits"),
                                            (True, "during the commits"),
                                            (False, "after the commits")],
                         ids=["durable-after", "durable-during", "nosync-after"])
def test_rule_4_committed_entries_and_the_vote_survive_a_power_loss(tmp_path: Path, sync: bool,
                                                            when: str) -> None:
    count = 60 if when == "after the commits" else 3000
    with LazyFS(tmp_path / "backing", tmp_path / "mnt") as fs:
        cluster = PoweredCluster(fs, count, sync)
        try:
            if when == "after the commits":
                cluster.wait_committed(count)
                time.sleep(0.5)           # steady state: heartbeats only, nothing in flight
            else:
                cluster.wait_committed(200)       # and the power goes mid-stream
            loss, acted_on = cluster.power_loss()
        finally:
            cluster.kill()
        committed = set(cluster.committed)
        seqs = [journal_seqs(d / "raft.journal") for d in cluster.dirs]
        on_disk = [read_meta(d / "raft.journal.meta") for d in cluster.dirs]
        whole = sum(1 for s in seqs if s >= committed)
        # A node may only be on a later term than the one it last reported, never an earlier
        # one, and on the same term it voted for the same node.
        term_kept = [m is not None and (m[0] > t or (m[0] == t and m[1] == v))
                     for m, (t, v) in zip(on_disk, acted_on, strict=True)]
        if not sync:
            # The fault bites: without the syncs the committed entries are gone from a
            # majority, and a node forgot the term and vote it acted on.
            assert loss.bytes_dropped > 0
            assert whole < 2, [len(s) for s in seqs]
            assert not all(term_kept), (on_disk, acted_on)
            return
        # Committed means on a majority's disk, and so it is after the power loss.
        assert whole >= 2, [sorted(committed - s)[:10] for s in seqs]
        assert all(term_kept), (on_disk, acted_on)

        # The cluster comes back (no node refuses its journal) and goes on committing; the
        # log it agrees on holds every entry committed before the power loss.
        nodes = [RaftNode(a, [b for b in cluster.addrs if b != a], d, PASSWORD, TIMING)
                 for a, d in zip(cluster.addrs, cluster.dirs, strict=True)]
        try:
            for n in nodes:
                n.start()
            wait_for(lambda: any(n.is_leader() for n in nodes), 20, "a leader")
            commit_all(next(n for n in nodes if n.is_leader()), range(count, count + 1))
            wait_for(lambda: all((m := n.snapshot().member("n0")) is not None
                                 and m.applied_seq == count for n in nodes), 20,
                     "every node to apply the new entry")
            assert all(n.replica.raftCurrentTerm >= t for n, (t, _) in zip(nodes, acted_on,
                                                                    strict=True))
        finally:
            for n in nodes:
                n.stop()
        assert all(journal_seqs(d / "raft.journal") >= committed for d in cluster.dirs)


def test_rule_4_an_unknown_pysyncobj_layout_stops_the_import() -> None:
    script = (
        "import pysyncobj.journal as j\n"
        "del j.FileJournal._FileJournal__setLastRecordOffset\n"
        "import hacluster.consensus.raft\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: pysyncobj 0.3."), last
    assert "_FileJournal__setLastRecordOffset" in last, last

"""LazyFS, for real: a FUSE mount served by its own process, and power losses on it.

Each test writes through a real mount, checks that its writes reached the backing directory,
cuts the power and reads back what a machine would find after a reboot: only what was fsynced
(or msynced) survives. A real RocksDB database checks the model against what the store needs.
Needs root and /dev/fuse; skips, saying which is missing, otherwise.
"""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import rocksdict

from hacluster.testing.lazyfs import LazyFS, LazyFSError, fuse_unavailable, is_mounted

_reason = fuse_unavailable()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[LazyFS]:
    with LazyFS(tmp_path / "backing", tmp_path / "mnt") as lazy:
        yield lazy
    assert not is_mounted(tmp_path / "mnt")


def write_file(path: Path, data: bytes, *, sync: bool, offset: int | None = None) -> None:
    flags = os.O_RDWR | os.O_CREAT | (0 if offset is not None else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        os.pwrite(fd, data, offset or 0)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_unsynced_write_is_lost_and_synced_write_kept(fs: LazyFS) -> None:
    kept, lost = fs.mount / "kept", fs.mount / "lost"
    write_file(kept, b"durable", sync=True)
    write_file(lost, b"old", sync=True)
    fd = os.open(lost, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"-and-more-never-synced")
        # No write-back cache: the write reached the backing file before any close or sync.
        assert (fs.backing / "lost").read_bytes() == b"old-and-more-never-synced"
    finally:
        os.close(fd)
    assert lost.read_bytes() == b"old-and-more-never-synced"     # now in the page cache too
    stats = fs.stats()
    assert (stats.unsynced_files, stats.unsynced_bytes) == (1, 22)

    loss = fs.power_loss()

    assert (loss.bytes_dropped, loss.files_affected, loss.forced) == (22, 1, False)
    assert lost.read_bytes() == b"old"
    assert lost.stat().st_size == 3
    assert kept.read_bytes() == b"durable"
    assert fs.stats().unsynced_files == 0


def test_new_file_never_synced_comes_back_empty(fs: LazyFS) -> None:
    path = fs.mount / "new"
    path.write_bytes(b"x" * 100_000)
    assert (fs.backing / "new").stat().st_size == 100_000
    loss = fs.power_loss()
    assert loss.bytes_dropped == 100_000
    assert path.exists()                       # names are durable at once (a documented limit)
    assert path.read_bytes() == b""


def test_overwrite_in_the_middle_partly_synced(fs: LazyFS) -> None:
    path = fs.mount / "f"
    write_file(path, b"a" * 10_000, sync=True)
    write_file(path, b"b" * 2_000, sync=True, offset=1_000)      # synced overwrite: kept
    write_file(path, b"c" * 3_000, sync=False, offset=2_500)     # overlaps it, then grows...
    write_file(path, b"d" * 1_000, sync=False, offset=9_500)     # ...and past the end
    write_file(path, b"e" * 500, sync=False, offset=2_700)       # overwrites unsynced data
    assert path.stat().st_size == 10_500

    fs.power_loss()

    expected = b"a" * 1_000 + b"b" * 2_000 + b"a" * 7_000
    assert path.read_bytes() == expected


def test_truncate_and_o_trunc_are_undone(fs: LazyFS) -> None:
    shrunk, emptied = fs.mount / "shrunk", fs.mount / "emptied"
    write_file(shrunk, bytes(range(256)) * 40, sync=True)
    write_file(emptied, b"z" * 5_000, sync=True)
    os.truncate(shrunk, 100)
    os.truncate(shrunk, 8_000)                 # grows again: the cut bytes read as zeros now
    write_file(emptied, b"short", sync=False)  # O_TRUNC, then a write
    assert shrunk.read_bytes()[100:200] == bytes(100)
    fd = os.open(fs.mount / "preallocated", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"p" * 100)
        os.fsync(fd)
        os.posix_fallocate(fd, 0, 1 << 20)     # grows the file: metadata never synced
    finally:
        os.close(fd)

    fs.power_loss()

    assert shrunk.read_bytes() == bytes(range(256)) * 40
    assert emptied.read_bytes() == b"z" * 5_000
    assert (fs.mount / "preallocated").read_bytes() == b"p" * 100


def test_mmap_msync_is_durable_and_unsynced_mmap_writes_are_lost(fs: LazyFS) -> None:
    path = fs.mount / "journal"
    write_file(path, b"a" * 8192, sync=True)
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 8192) as mm:
            before = fs.stats()
            mm[0:4096] = b"b" * 4096
            mm.flush()                         # msync(MS_SYNC)
            after = fs.stats()
            # What the kernel does with msync on FUSE: the dirty page as a write, then FSYNC.
            assert after.writes > before.writes
            assert after.fsyncs == before.fsyncs + 1
            assert (fs.backing / "journal").read_bytes()[:4096] == b"b" * 4096
            mm[4096:8192] = b"c" * 4096         # never msynced
        # munmap writes the dirty page back to the file system; it is still not durable.
        assert (fs.backing / "journal").read_bytes()[4096:] == b"c" * 4096
    finally:
        os.close(fd)

    loss = fs.power_loss()

    assert loss.files_affected == 1
    assert path.read_bytes() == b"b" * 4096 + b"a" * 4096


JOURNAL_WRITER = textwrap.dedent("""
    import sys, time
    from pysyncobj.journal import ResizableFile
    journal = ResizableFile(sys.argv[1], initialSize=4096, defaultContent=b"H" * 16)
    journal.write(0, b"A" * 3000)
    journal.flush()                            # msync: durable
    journal.write(3000, b"B" * 3000)           # grows the mapping past 4096: never synced
    print("ready", flush=True)
    time.sleep(3600)
""")


def test_pysyncobj_mmap_journal_keeps_what_it_flushed(fs: LazyFS) -> None:
    # pysyncobj's journal file (the Raft log) is an mmap it grows and msyncs; the process dies
    # by SIGKILL, which writes its dirty pages back without syncing them.
    path = fs.mount / "raft.journal"
    proc = subprocess.Popen([sys.executable, "-c", JOURNAL_WRITER, str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.kill()
        proc.wait()
    assert (fs.backing / "raft.journal").read_bytes()[3000:6000] == b"B" * 3000

    fs.power_loss()

    assert path.read_bytes() == b"A" * 3000 + bytes(4096 - 3000)


def test_fdatasync_makes_a_journal_mappings_writes_durable(fs: LazyFS) -> None:
    # sync_journal syncs pysyncobj's mmap journal with fdatasync (mmap.flush holds the GIL):
    # the mapping's dirty pages are written and synced as msync would.
    path = fs.mount / "raft.journal"
    write_file(path, b"a" * 8192, sync=True)
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 8192) as mm:
            mm[0:4096] = b"b" * 4096
            os.fdatasync(fd)
            assert (fs.backing / "raft.journal").read_bytes()[:4096] == b"b" * 4096
            mm[4096:8192] = b"c" * 4096         # never synced
    finally:
        os.close(fd)

    fs.power_loss()

    assert path.read_bytes() == b"b" * 4096 + b"a" * 4096


def test_renames_keep_undo_state_with_the_inode(fs: LazyFS) -> None:
    synced, renamed_first, dirty = fs.mount / "s", fs.mount / "r", fs.mount / "d"
    write_file(synced, b"synced", sync=True)
    os.rename(synced, fs.mount / "s2")         # rename of a synced file: kept

    write_file(renamed_first, b"written-then-renamed-then-synced", sync=False)
    os.rename(renamed_first, fs.mount / "r2")
    write_file(fs.mount / "r2", b"", sync=True, offset=0)

    write_file(dirty, b"old", sync=True)
    write_file(dirty, b"new-unsynced", sync=False)
    (fs.mount / "sub").mkdir()
    os.rename(dirty, fs.mount / "sub" / "d2")  # unsynced data moves with the inode

    # An unsynced file replaced by a rename and one unlinked leave no undo state behind.
    write_file(fs.mount / "victim", b"gone", sync=False)
    write_file(fs.mount / "replacer", b"r", sync=True)
    os.rename(fs.mount / "replacer", fs.mount / "victim")
    write_file(fs.mount / "deleted", b"gone too", sync=False)
    os.unlink(fs.mount / "deleted")

    loss = fs.power_loss()

    assert loss.files_affected == 1            # only "d2"
    assert (fs.mount / "s2").read_bytes() == b"synced"
    assert (fs.mount / "r2").read_bytes() == b"written-then-renamed-then-synced"
    assert (fs.mount / "sub" / "d2").read_bytes() == b"old"
    assert (fs.mount / "victim").read_bytes() == b"r"
    assert sorted(os.listdir(fs.mount)) == ["r2", "s2", "sub", "victim"]


def test_hard_links_share_undo_state_and_symlinks_work(fs: LazyFS) -> None:
    first, second, dirty = fs.mount / "first", fs.mount / "second", fs.mount / "dirty"
    write_file(first, b"v1", sync=True)
    os.link(first, second)
    write_file(first, b"v2-unsynced", sync=False)
    write_file(second, b"", sync=True, offset=0)      # fsync through the other name
    write_file(dirty, b"old", sync=True)
    os.link(dirty, fs.mount / "dirty2")
    write_file(fs.mount / "dirty2", b"new", sync=False)
    os.unlink(dirty)                           # one name left: the undo state stays
    os.symlink("first", fs.mount / "alias")
    assert os.readlink(fs.mount / "alias") == "first"

    loss = fs.power_loss()

    assert loss.files_affected == 1
    assert first.read_bytes() == second.read_bytes() == b"v2-unsynced"
    assert (fs.mount / "dirty2").read_bytes() == b"old"
    assert (fs.mount / "alias").read_bytes() == b"v2-unsynced"


def test_concurrent_writers_on_a_multithreaded_server(tmp_path: Path) -> None:
    # Several processes write at once, so requests overlap in the server's threads.
    script = textwrap.dedent("""
        import os, sys
        fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
        block = sys.argv[2].encode() * 4096
        for i in range(200):
            os.pwrite(fd, block, i * 4096)
        os.fsync(fd)
        for i in range(100, 300):              # overwrites half the synced blocks, then grows
            os.pwrite(fd, block.lower(), i * 4096)
    """)
    with LazyFS(tmp_path / "backing", tmp_path / "mnt", threads=3) as lazy:
        names = "ABCDEF"
        procs = [subprocess.Popen([sys.executable, "-c", script, str(lazy.mount / n), n])
                 for n in names]
        assert [p.wait() for p in procs] == [0] * len(names)
        for n in names:
            assert (lazy.backing / n).stat().st_size == 300 * 4096
        loss = lazy.power_loss()
        assert loss.files_affected == len(names)
        assert loss.bytes_dropped == len(names) * 200 * 4096
        for n in names:
            assert (lazy.mount / n).read_bytes() == n.encode() * 4096 * 200


def test_o_sync_writes_and_fdatasync_are_durable(fs: LazyFS) -> None:
    path = fs.mount / "osync"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DSYNC)
    try:
        os.write(fd, b"each write durable")
    finally:
        os.close(fd)
    fd = os.open(fs.mount / "fdatasync", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"data")
        os.fdatasync(fd)
    finally:
        os.close(fd)
    fs.power_loss()
    assert path.read_bytes() == b"each write durable"
    assert (fs.mount / "fdatasync").read_bytes() == b"data"


def test_survivor_of_a_power_loss_loses_its_mount(fs: LazyFS) -> None:
    # A process still holding a file when the power goes gets errors, not the new files.
    script = textwrap.dedent("""
        import os, sys, time
        fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
        os.write(fd, b"unsynced")
        print("ready", flush=True)
        sys.stdin.readline()
        try:
            os.pwrite(fd, b"after", 0)
            print("wrote")
        except OSError as e:
            print("error", e.errno)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(fs.mount / "held")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        loss = fs.power_loss()
        assert loss.forced
        assert loss.bytes_dropped == 8
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=30)
        assert out.startswith("error"), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (fs.mount / "held").read_bytes() == b""
    write_file(fs.mount / "after", b"works", sync=True)   # the new mount serves
    assert (fs.mount / "after").read_bytes() == b"works"


def test_mount_survives_repeated_power_losses(fs: LazyFS) -> None:
    log = fs.mount / "log"
    expected = b""
    for round_ in range(6):
        with open(log, "ab") as f:
            record = f"durable {round_};".encode()
            f.write(record)
            f.flush()
            os.fsync(f.fileno())
            expected += record
            f.write(f"lost {round_};".encode())
        (fs.mount / f"scratch{round_}").write_bytes(b"never synced")
        loss = fs.power_loss()
        assert loss.files_affected == 2
        assert log.read_bytes() == expected
        assert (fs.mount / f"scratch{round_}").read_bytes() == b""
    assert fs.stats().power_losses == 6


def test_stop_keeps_every_write_and_start_again(tmp_path: Path) -> None:
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    with LazyFS(backing, mnt) as lazy:
        (lazy.mount / "f").write_bytes(b"clean shutdown keeps this")
    assert (backing / "f").read_bytes() == b"clean shutdown keeps this"
    with LazyFS(backing, mnt) as lazy:         # existing backing files count as synced
        (lazy.mount / "f").write_bytes(b"x")
        lazy.power_loss()
        assert (lazy.mount / "f").read_bytes() == b"clean shutdown keeps this"


def test_dead_server_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    lazy = LazyFS(tmp_path / "backing", tmp_path / "mnt")
    lazy.start()
    try:
        os.kill(lazy.pid, signal.SIGKILL)
        os.waitpid(lazy.pid, 0)
        with pytest.raises((LazyFSError, OSError)):
            lazy.power_loss()
    finally:
        lazy.stop()
    assert not is_mounted(tmp_path / "mnt")


ROCKS_WRITER = textwrap.dedent("""
    import sys, time
    import rocksdict
    path, prefix, synced_count, unsynced_count = sys.argv[1:]
    db = rocksdict.Rdict(path, rocksdict.Options(raw_mode=True))
    synced = rocksdict.WriteOptions()
    synced.sync = True
    unsynced = rocksdict.WriteOptions()
    unsynced.sync = False
    for i in range(int(synced_count)):
        db.put(f"{prefix}-synced-{i}".encode(), b"v" * 100, write_opt=synced)
    for i in range(int(unsynced_count)):
        db.put(f"{prefix}-unsynced-{i}".encode(), b"w" * 100, write_opt=unsynced)
    print(db.latest_sequence_number(), flush=True)
    time.sleep(3600)
""")


def crash_rocksdb_writer(path: Path, prefix: str, synced: int, unsynced: int) -> int:
    """Write to a RocksDB in a child, then SIGKILL it; returns its last sequence number."""
    proc = subprocess.Popen([sys.executable, "-c", ROCKS_WRITER, str(path), prefix,
                             str(synced), str(unsynced)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        seq = int(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return seq


def open_rocksdb(path: Path) -> rocksdict.Rdict:
    # Options given explicitly, as hacluster.store does: without them rocksdict reads its
    # rocksdict-config.json, which it writes without fsync, so a power loss empties it.
    return rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))


def read_rocksdb(path: Path) -> tuple[int, set[bytes]]:
    db = open_rocksdb(path)
    try:
        return int(db.latest_sequence_number()), set(db.keys())
    finally:
        db.close()


def keys(prefix: str, kind: str, count: int) -> set[bytes]:
    return {f"{prefix}-{kind}-{i}".encode() for i in range(count)}


def test_rocksdb_keeps_synced_writes_and_loses_unsynced_ones(fs: LazyFS) -> None:
    path = fs.mount / "db"
    assert crash_rocksdb_writer(path, "a", 20, 30) == 50
    # A process crash alone loses nothing: the unsynced writes are in the file system, and
    # reopening replays them (and flushes them to a synced table).
    assert fs.stats().unsynced_bytes > 0
    assert read_rocksdb(path) == (50, keys("a", "synced", 20) | keys("a", "unsynced", 30))

    assert crash_rocksdb_writer(path, "b", 5, 10) == 65
    loss = fs.power_loss()
    assert loss.bytes_dropped > 0 and not loss.forced

    # Only the synced writes of the second life are left, and the database opens cleanly.
    seq, found = read_rocksdb(path)
    assert found == keys("a", "synced", 20) | keys("a", "unsynced", 30) | keys("b", "synced", 5)
    assert seq == 55
    db = open_rocksdb(path)
    try:
        db.put(b"after", b"the power loss")
    finally:
        db.close()
    assert read_rocksdb(path)[0] == 56


NATIVE_WRITER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from hacluster.config import StorageConfig
    from hacluster.groupsync import GroupSync
    from hacluster.store import Store
    from hacluster.wal.batch import PUT

    async def main():
        store = Store(Path(sys.argv[1]), ["default"], StorageConfig(write_buffer_size_mb=1))
        native = store.native_wal_sync()
        assert native is not None, "hacluster._walsync is not built"
        # RocksDB's own FlushWAL must not be what makes anything durable here.
        group = GroupSync(store.latest_seq, lambda: sys.exit("FlushWAL used"),
                          store.native_wal_sync)

        def put(kind, i):
            return store.write([(PUT, "default", f"{kind}-{i}".encode(), b"v" * 100)])

        for i in range(20):
            put("first-log", i)
        await group.through(store.latest_seq())
        store.flush()                 # the WAL moves on to a new log file
        for i in range(20):
            put("new-log", i)
        await group.through(store.latest_seq())
        synced = store.latest_seq()
        for i in range(20):
            put("unsynced", i)
        print(synced, store.latest_seq(), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def test_native_wal_sync_survives_a_power_loss_across_a_new_log(fs: LazyFS) -> None:
    from hacluster.config import StorageConfig
    from hacluster.groupsync import NATIVE
    from hacluster.store import Store

    if not NATIVE:
        pytest.skip("hacluster._walsync is not built")
    path = fs.mount / "db"
    proc = subprocess.Popen([sys.executable, "-c", NATIVE_WRITER, str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        synced, written = map(int, proc.stdout.readline().split())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert written > synced
    loss = fs.power_loss()
    assert loss.bytes_dropped > 0
    # The writes of the log that appeared after the syncer started (learnt from inotify) were
    # made durable by its rounds alone; the writes after the last round are gone.
    store = Store(path, ["default"], StorageConfig(write_buffer_size_mb=1))
    try:
        assert store.latest_seq() == synced
        for i in range(20):
            assert store.get_with_seq(f"new-log-{i}".encode(), "default")[0] == b"v" * 100
            assert store.get_with_seq(f"unsynced-{i}".encode(), "default")[0] is None
    finally:
        store.close()


# A managed service: its own process writes its own database (plain rocksdict, no hacluster),
# one step per line read from stdin.
SERVICE_WRITER = textwrap.dedent("""
    import sys
    import rocksdict

    db = rocksdict.Rdict(sys.argv[1], rocksdict.Options(raw_mode=True))

    def put(kind):
        for i in range(20):
            db.put(f"{kind}-{i}".encode(), b"v" * 100)
        print(db.latest_sequence_number(), flush=True)

    put("first-log")
    sys.stdin.readline()
    db.flush()              # the WAL moves on to a new log file, made after the syncer began
    put("new-log")
    sys.stdin.readline()
    put("unsynced")
    sys.stdin.readline()
""")


def test_the_native_syncer_makes_another_process_s_wal_durable(fs: LazyFS) -> None:
    """A managed primary's group commit: hacluster fsyncs the service's logs through its own
    descriptors, the new one learnt from inotify, and what it synced survives a power loss."""
    import asyncio

    from hacluster.groupsync import NATIVE, GroupSync, NativeWalSync

    if not NATIVE:
        pytest.skip("hacluster._walsync is not built")
    path = fs.mount / "svc"
    service = subprocess.Popen([sys.executable, "-c", SERVICE_WRITER, str(path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert service.stdin is not None and service.stdout is not None
    syncer: NativeWalSync | None = None
    try:
        int(service.stdout.readline())
        syncer = NativeWalSync(path)      # as a managed primary starts: the database exists
        service.stdin.write("\n")
        service.stdin.flush()
        synced = int(service.stdout.readline())

        async def one_round(native: NativeWalSync) -> GroupSync:
            group = GroupSync(lambda: synced, lambda: pytest.fail("the Python sync was used"),
                              lambda: native)
            await group.through(synced)
            return group

        group = asyncio.run(one_round(syncer))
        assert group.syncs == 1 and group.synced_seq == synced
        service.stdin.write("\n")
        service.stdin.flush()
        written = int(service.stdout.readline())
        assert written > synced
    finally:
        service.kill()
        service.wait()
        if syncer is not None:
            syncer.close()
    loss = fs.power_loss()
    assert loss.bytes_dropped > 0
    db = rocksdict.Rdict(str(path), rocksdict.Options(raw_mode=True))
    try:
        assert db.latest_sequence_number() == synced
        for i in range(20):
            assert db.get(f"new-log-{i}".encode()) == b"v" * 100
            assert db.get(f"first-log-{i}".encode()) == b"v" * 100
            assert db.get(f"unsynced-{i}".encode()) is None
    finally:
        db.close()

"""Rule 5's group commit: one WAL sync covers every write made before it started."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from hacluster.config import StorageConfig
from hacluster.groupsync import NATIVE, GroupSync
from hacluster.store import Store
from hacluster.wal.batch import PUT


async def test_rule_5_concurrent_writers_share_syncs(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", ["default"], StorageConfig(write_buffer_size_mb=1))
    try:
        syncs: list[int] = []

        def sync() -> None:
            syncs.append(store.latest_seq())
            store.sync_wal()

        group = GroupSync(store.latest_seq, sync)

        async def writer(i: int) -> int:
            seq = store.write([(PUT, "default", b"k%d" % i, b"v")]).last_seq
            await group.through(seq)
            assert group.synced_seq >= seq
            return seq

        seqs = await asyncio.gather(*(writer(i) for i in range(200)))
        # (a write's last seq: a write may take more than one seq, see Store.write)
        assert len(set(seqs)) == 200 and max(seqs) == store.latest_seq()
        # Every writer waited for a sync that began after its write, yet they shared them.
        assert 1 <= group.syncs == len(syncs) < 20
        assert group.synced_seq == store.latest_seq()
    finally:
        store.close()


async def test_rule_5_a_sync_never_covers_writes_made_while_it_ran(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", ["default"], StorageConfig(write_buffer_size_mb=1))
    try:
        def sync_while_writing() -> None:
            store.sync_wal()
            # A write lands during the sync (another writer on the event loop): not covered.
            store.write([(PUT, "default", b"late", b"v")])

        group = GroupSync(store.latest_seq, sync_while_writing)
        first = store.write([(PUT, "default", b"a", b"v")]).last_seq
        await group.through(first)
        assert group.synced_seq == first
        late = store.latest_seq()
        assert late > first
        await group.through(late)       # needs a sync of its own
        assert group.syncs == 2 and group.synced_seq == late
    finally:
        store.close()


async def test_rule_5_a_failed_sync_is_raised_to_every_waiter_and_retried(
        tmp_path: Path) -> None:
    calls = 0

    def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(5, "Input/output error")

    group = GroupSync(lambda: 7, flaky)
    results = await asyncio.gather(group.through(7), group.through(7), return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert group.synced_seq == 0
    await group.through(7)
    assert group.synced_seq == 7 and calls == 2


# -- the native syncer (hacluster._walsync), as built by the normal install ----------------

needs_native = pytest.mark.skipif(not NATIVE, reason="hacluster._walsync is not built")


class CountingFlushWal:
    """RocksDB's FlushWAL as group commit's fallback, counting its calls."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        self.store.sync_wal()


def store_counting_flush_wal(tmp_path: Path) -> tuple[Store, CountingFlushWal]:
    store = Store(tmp_path / "db", ["default"], StorageConfig(write_buffer_size_mb=1))
    return store, CountingFlushWal(store)


@needs_native
async def test_rule_5_native_rounds_are_shared_and_never_use_the_python_thread(
        tmp_path: Path) -> None:
    store, flush_wal = store_counting_flush_wal(tmp_path)
    try:
        group = GroupSync(store.latest_seq, flush_wal, store.native_wal_sync)

        async def writer(i: int) -> int:
            seq = store.write([(PUT, "default", b"k%d" % i, b"v")]).last_seq
            await group.through(seq)
            return seq

        seqs = await asyncio.gather(*(writer(i) for i in range(200)))
        native = store.native_wal_sync()
        assert native is not None
        rounds = native._c.stats()["rounds"]
        assert max(seqs) == store.latest_seq() == group.synced_seq
        assert flush_wal.calls == 0 and 1 <= group.syncs == rounds < 20
    finally:
        store.close()


@needs_native
async def test_rule_5_native_rounds_follow_the_wal_to_each_new_log(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", ["default"], StorageConfig(write_buffer_size_mb=1))
    try:
        group = GroupSync(store.latest_seq, store.sync_wal, store.native_wal_sync)
        await group.through(store.write([(PUT, "default", b"a", b"v")]).last_seq)
        native = store.native_wal_sync()
        assert native is not None
        first = native._c.stats()["newest_log"]
        for i in range(3):
            store.flush()                  # a memtable flush rolls the WAL to a new log
            await group.through(store.write([(PUT, "default", b"b%d" % i, b"v")]).last_seq)
        after = native._c.stats()
        # RocksDB's file numbers grow; the syncer holds only the log that takes writes now.
        assert after["newest_log"] > first and after["open_logs"] == 1
        assert (tmp_path / "db" / f"{after['newest_log']:06d}.log").exists()
    finally:
        store.close()


@needs_native
async def test_native_round_asked_while_one_runs_gets_the_next_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", ["default"], StorageConfig(write_buffer_size_mb=1))
    try:
        native = store.native_wal_sync()
        assert native is not None
        first = native.round()
        store.write([(PUT, "default", b"late", b"v")])
        second = native.round()         # the first may have begun before that write
        assert second is not first and native.round() is second
        await asyncio.gather(first, second)
        assert native._c.stats()["rounds"] == 2
    finally:
        store.close()


@needs_native
async def test_native_rounds_still_waited_for_fail_when_the_store_closes(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "db", ["default"], StorageConfig(write_buffer_size_mb=1))
    native = store.native_wal_sync()
    assert native is not None
    running, following = native.round(), native.round()
    store.close()
    for waited in (running, following):
        with pytest.raises(OSError, match="closed during a WAL sync"):
            await waited
    assert store.native_wal_sync() is None


@needs_native
async def test_a_log_the_native_syncer_cannot_open_fails_its_rounds_and_rocksdb_syncs_after(
        tmp_path: Path) -> None:
    store, flush_wal = store_counting_flush_wal(tmp_path)
    # A socket named like a log: it appears (inotify) but cannot be opened (ENXIO), as a log
    # the process has no descriptor left for could not: the syncer must not pass it over.
    odd = tmp_path / "db" / "999999.log"
    sock = socket.socket(socket.AF_UNIX)
    try:
        group = GroupSync(store.latest_seq, flush_wal, store.native_wal_sync)
        await group.through(store.write([(PUT, "default", b"a", b"v")]).last_seq)
        sock.bind(str(odd))
        seq = store.write([(PUT, "default", b"b", b"v")]).last_seq
        with pytest.raises(OSError, match=r"opening 999999\.log"):
            await group.through(seq)
        native = store.native_wal_sync()
        assert native is not None and native.failed is not None
        assert group.synced_seq < seq and flush_wal.calls == 0
        await group.through(seq)            # from now on through RocksDB's FlushWAL
        assert group.synced_seq == seq and flush_wal.calls == 1
    finally:
        sock.close()
        odd.unlink(missing_ok=True)
        store.close()

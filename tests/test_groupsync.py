"""Rule 5's group commit: one WAL sync covers every write made before it started."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hacluster.config import StorageConfig
from hacluster.groupsync import GroupSync
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

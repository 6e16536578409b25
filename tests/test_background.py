"""Background threads (the WAL sync, Raft's tick) run under SCHED_BATCH, read back from the
kernel; a policy the process was given (SCHED_IDLE here) is kept."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hacluster.background import yield_to_event_loop
from hacluster.config import StorageConfig
from hacluster.consensus.raft import RaftNode, RaftTiming
from hacluster.groupsync import _SYNC_THREAD, NATIVE, GroupSync
from hacluster.store import Store
from hacluster.testing.harness import free_ports, wait_for
from hacluster.wal.batch import PUT

needs_native = pytest.mark.skipif(not NATIVE, reason="hacluster._walsync is not built")


@pytest.fixture(autouse=True)
def _default_policy() -> None:
    # What every test below starts from (and what a node started without chrt or systemd's
    # CPUSchedulingPolicy= runs under); a runner started otherwise would make them meaningless.
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


@needs_native
async def test_the_native_wal_sync_thread_runs_under_sched_batch(tmp_path: Path) -> None:
    store = Store(tmp_path / "db", ["default"], StorageConfig(write_buffer_size_mb=1))
    try:
        group = GroupSync(store.latest_seq, store.sync_wal, store.native_wal_sync)
        await group.through(store.write([(PUT, "default", b"k", b"v")]).last_seq)
        native = store.native_wal_sync()
        assert native is not None
        stats = native._c.stats()
        assert stats["rounds"] == 1 and stats["thread_id"] not in (0, os.getpid())
        assert stats["policy"] == os.SCHED_BATCH
        assert os.sched_getscheduler(stats["thread_id"]) == os.SCHED_BATCH
        # The thread that called start() (the event loop's) is left as it was.
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
    finally:
        store.close()


async def test_the_python_wal_sync_thread_runs_under_sched_batch() -> None:
    seen: list[int] = []
    await _SYNC_THREAD.run(lambda: seen.append(os.sched_getscheduler(0)))
    assert seen == [os.SCHED_BATCH]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_raft_s_tick_thread_runs_under_sched_batch(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_ports(1)[0]}"
    node = RaftNode(address, [], tmp_path, "raft-test-password-0123",
                    RaftTiming(election_min_s=0.2, election_max_s=0.5, heartbeat_s=0.05))
    node.start()
    try:
        wait_for(lambda: node.thread_batch is not None, 10, "the tick thread")
        assert node.thread_batch is True and node._thread is not None
        native_id = node._thread.native_id
        assert native_id is not None and native_id != os.getpid()
        assert os.sched_getscheduler(native_id) == os.SCHED_BATCH
    finally:
        node.stop()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_a_policy_the_process_was_given_is_kept(tmp_path: Path) -> None:
    # In a child process: SCHED_IDLE may not be left again without privileges.
    script = textwrap.dedent(f"""
        import asyncio, os
        from pathlib import Path
        from hacluster.background import yield_to_event_loop
        from hacluster.config import StorageConfig
        from hacluster.groupsync import NATIVE, GroupSync
        from hacluster.store import Store
        from hacluster.wal.batch import PUT

        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        assert yield_to_event_loop("test") is False
        assert os.sched_getscheduler(0) == os.SCHED_IDLE

        async def main():
            store = Store(Path({str(tmp_path / "db")!r}), ["default"],
                          StorageConfig(write_buffer_size_mb=1))
            try:
                group = GroupSync(store.latest_seq, store.sync_wal, store.native_wal_sync)
                await group.through(store.write([(PUT, "default", b"k", b"v")]).last_seq)
                if NATIVE:
                    stats = store.native_wal_sync()._c.stats()
                    assert stats["policy"] == os.SCHED_IDLE, stats
                    assert os.sched_getscheduler(stats["thread_id"]) == os.SCHED_IDLE
                print("kept")
            finally:
                store.close()

        asyncio.run(main())
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "kept", done.stderr


def test_yield_to_event_loop_moves_only_a_default_thread() -> None:
    results: list[tuple[bool, int]] = []

    def in_thread() -> None:
        first = yield_to_event_loop("test")
        results.append((first, os.sched_getscheduler(0)))
        # Under SCHED_BATCH already: not SCHED_OTHER, so left alone.
        results.append((yield_to_event_loop("test"), os.sched_getscheduler(0)))

    asyncio.run(asyncio.to_thread(in_thread))
    assert results == [(True, os.SCHED_BATCH), (False, os.SCHED_BATCH)]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER

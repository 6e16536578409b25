"""Divergent tails: streamed into a capped file, listed from its header, pruned by age and size.

Real RocksDB stores write real WALs; the tail is read back from them. Old-format files (one
CBOR map written whole, as before the streaming format) are written by hand with ``cbor2``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import tracemalloc
from pathlib import Path

import cbor2
import pytest

from hacluster.config import StorageConfig, load_config
from hacluster.consensus.state import EpochRecord
from hacluster.lineage.labels import Divergence
from hacluster.lineage.tails import (
    iter_tail_batches,
    list_divergent_tails,
    prune_diverged_dbs,
    prune_divergence,
    prune_divergent_tails,
    read_tail_header,
    save_divergent_tail,
    set_aside,
)
from hacluster.node import Node
from hacluster.role import Role
from hacluster.store import Store
from hacluster.testing.harness import Cluster
from hacluster.testing.history import divergent_tail_keys
from hacluster.wal.batch import DELETE, PUT
from tests.replica_runs import apply_as_runs

CFS = ["default", "users"]
DAY = 86_400.0


def make_store(tmp_path: Path, batches: int, value_bytes: int = 16,
               ops_per_batch: int = 2) -> Store:
    store = Store(tmp_path / "db", CFS, StorageConfig())
    for i in range(batches):
        ops = [(PUT, "default", f"k{i}-{j}".encode(), bytes([i % 256]) * value_bytes)
               for j in range(ops_per_batch - 1)]
        ops.append((DELETE, "users", f"u{i}".encode(), b""))
        store.write(ops)
    return store


def test_a_tail_is_streamed_to_a_file_that_cbor2_still_reads_whole(tmp_path: Path) -> None:
    store = make_store(tmp_path, 10, ops_per_batch=3)
    try:
        # 10 batches of 3 ops, each op with its key's seq record: 6 seqs a batch, seqs 1..60;
        # the tail is batches 5..10.
        saved = save_divergent_tail(tmp_path, "n1", store, Divergence(1, 25, 60))
    finally:
        store.close()
    # The writes of the tail; their keys' seq records (SEQ_CF) are left out.
    assert (saved.complete, saved.ops, saved.saved_last_seq, saved.error) == (True, 18, 60, None)
    assert saved.path == tmp_path / "divergent" / "epoch1-seq25-60.cbor"
    batches = list(iter_tail_batches(saved.path))
    assert [b["seq"] for b in batches] == [25, 31, 37, 43, 49, 55]
    assert batches[0]["ops"] == [["put", "default", b"k4-0", b"\x04" * 16],
                                 ["put", "default", b"k4-1", b"\x04" * 16],
                                 ["delete", "users", b"u4", b""]]
    with open(saved.path, "rb") as f:
        doc = cbor2.load(f)             # what operators' scripts and bench/failover.py do
    assert doc["batches"] == batches
    assert (doc["node"], doc["epoch"], doc["first_seq"], doc["last_seq"], doc["complete"],
            doc["ops"], doc["error"], doc["format"]) == ("n1", 1, 25, 60, True, 18, None, 2)
    assert divergent_tail_keys([tmp_path]) == {f"k{i}-{j}".encode() for i in range(4, 10)
                                               for j in range(2)}
    assert not list((tmp_path / "divergent").glob("*.tmp"))


def test_listing_reads_only_the_header(tmp_path: Path) -> None:
    store = make_store(tmp_path, 50)
    try:
        saved = save_divergent_tail(tmp_path, "n1", store, Divergence(3, 41, 100))
    finally:
        store.close()
    # Seqs 41..100 are 30 ops and their 30 seq records; the tail keeps the ops.
    entry = {"file": str(saved.path), "epoch": 3, "first_seq": 41, "last_seq": 100, "ops": 30,
             "complete": True, "saved_last_seq": 100, "bytes": saved.path.stat().st_size}
    assert list_divergent_tails(tmp_path) == [entry]
    # Cut the file right after the header: the batches are gone, the listing is the same,
    # because it never reads them (the whole-file read it replaced would call it unreadable).
    data = saved.path.read_bytes()
    cut = data.index(cbor2.dumps("batches")) + len(cbor2.dumps("batches"))
    saved.path.write_bytes(data[:cut])
    assert list_divergent_tails(tmp_path) == [{**entry, "bytes": cut}]
    with pytest.raises(ValueError):
        list(iter_tail_batches(saved.path))


def test_memory_while_saving_stays_bounded_by_one_read(tmp_path: Path) -> None:
    # About 24 MB of values in 400 batches: decoded whole, as before, this held all of it.
    # Each batch's 2 ops and their keys' seq records take 4 seqs: seqs 1..1600.
    store = make_store(tmp_path, 400, value_bytes=60_000)
    try:
        tracemalloc.start()
        try:
            saved = save_divergent_tail(tmp_path, "n1", store, Divergence(1, 1, 1600))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        store.close()
    assert saved.complete and saved.ops == 800
    assert saved.path.stat().st_size > 24_000_000
    assert peak < 6_000_000, f"peak {peak / 1e6:.1f} MB while saving a 24 MB tail"


def test_a_tail_larger_than_the_cap_is_saved_up_to_it_and_marked_incomplete(
        tmp_path: Path) -> None:
    store = make_store(tmp_path, 100, value_bytes=20_000)
    cap = 1 << 20
    try:
        # 100 batches of 2 ops, each with its key's seq record: seqs 1..400
        saved = save_divergent_tail(tmp_path, "n1", store, Divergence(1, 1, 400), max_bytes=cap)
    finally:
        store.close()
    assert not saved.complete
    assert saved.path.stat().st_size <= cap
    assert 0 < saved.ops < 200 and saved.saved_last_seq < 400
    assert saved.error is not None and "storage.divergent_max_mb" in saved.error
    assert f"seqs {saved.saved_last_seq + 1}..400 are not in it" in saved.error
    header = read_tail_header(saved.path)
    assert (header["complete"], header["ops"], header["saved_last_seq"]) == (
        False, saved.ops, saved.saved_last_seq)
    batches = list(iter_tail_batches(saved.path))
    assert sum(len(b["ops"]) for b in batches) == saved.ops
    # A batch of n ops takes 2n seqs (each op and its key's seq record).
    assert batches[-1]["seq"] + 2 * len(batches[-1]["ops"]) - 1 == saved.saved_last_seq
    with open(saved.path, "rb") as f:
        assert cbor2.load(f)["error"] == saved.error


def test_old_format_files_are_still_listed_and_read(tmp_path: Path) -> None:
    folder = tmp_path / "divergent"
    folder.mkdir()
    ops = [["put", "default", b"old-1", b"v"], ["put", "users", b"old-u", b"v"]]
    doc = {"node": "n1", "epoch": 1, "first_seq": 21, "last_seq": 22, "saved_at": time.time(),
           "complete": True, "error": None, "ops": 2, "batches": [{"seq": 21, "ops": ops}]}
    path = folder / "epoch1-seq21-22.cbor"
    path.write_bytes(cbor2.dumps(doc))
    (folder / "epoch9-seq1-1.cbor").write_bytes(b"\x00not cbor at all")
    listed = list_divergent_tails(tmp_path)
    assert listed[0] == {"file": str(path), "epoch": 1, "first_seq": 21, "last_seq": 22,
                         "ops": 2, "complete": True, "saved_last_seq": 22,
                         "bytes": path.stat().st_size}
    assert listed[1]["file"].endswith("epoch9-seq1-1.cbor")
    assert listed[1]["error"].startswith("unreadable:")
    assert list(iter_tail_batches(path)) == doc["batches"]
    (folder / "epoch9-seq1-1.cbor").unlink()
    assert divergent_tail_keys([tmp_path], cf=None) == {b"old-1", b"old-u"}


def tail_file(folder: Path, name: str, size: int, age_days: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    epoch = int(name.split("-")[0].removeprefix("epoch"))
    doc = {"node": "n1", "epoch": epoch, "first_seq": 1, "last_seq": 1, "complete": True,
           "ops": 1, "batches": [{"seq": 1, "ops": [["put", "default", b"k", b"x" * size]]}]}
    path.write_bytes(cbor2.dumps(doc))
    at = time.time() - age_days * DAY
    os.utime(path, (at, at))
    return path


def test_tails_are_pruned_by_age_then_oldest_first_by_size_each_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "divergent"
    ancient = tail_file(folder, "epoch1-seq1-1.cbor", 1000, age_days=40)
    old = tail_file(folder, "epoch2-seq1-1.cbor", 600_000, age_days=3)
    middle = tail_file(folder, "epoch3-seq1-1.cbor", 600_000, age_days=2)
    new = tail_file(folder, "epoch4-seq1-1.cbor", 600_000, age_days=0)
    caplog.set_level(logging.WARNING, logger="hacluster.lineage.tails")
    removed = prune_divergent_tails(tmp_path, keep_days=30, max_bytes=1300_000, keep=new)
    assert removed == [ancient, old]
    assert sorted(folder.iterdir()) == [middle, new]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert str(ancient) in lines[0] and "older than storage.divergent_keep_days (30)" in lines[0]
    assert str(old) in lines[1] and "storage.divergent_max_mb" in lines[1]
    assert "epoch 2, seqs 1..1, 1 ops" in lines[1]
    # The tail just saved is kept even when it alone is over the cap.
    assert prune_divergent_tails(tmp_path, keep_days=30, max_bytes=1000, keep=new) == [middle]
    assert list(folder.iterdir()) == [new]


def test_old_databases_get_unique_names_and_only_three_recent_ones_are_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    made = []
    for _ in range(5):                  # all in the same second: each needs its own name
        db = tmp_path / "db"
        db.mkdir()
        (db / "CURRENT").write_text("x")
        made.append(set_aside(db, now=now))
    assert len({p.name for p in made}) == 5
    assert all(p.is_dir() and (p / "CURRENT").exists() for p in made)
    legacy = tmp_path / f"db.diverged-{int(now - 40 * DAY)}"   # the old naming, 40 days old
    legacy.mkdir()
    caplog.set_level(logging.ERROR, logger="hacluster.lineage.tails")
    removed = prune_diverged_dbs(tmp_path, keep_days=30, now=now)
    kept = made[-3:]                    # the counter orders names set aside in one instant
    assert sorted(removed) == sorted([legacy, *made[:2]])
    assert sorted(tmp_path.glob("db.diverged-*")) == sorted(kept)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert all("incomplete divergent tail" in m for m in messages)
    assert any(str(legacy) in m and "older than storage.divergent_keep_days" in m
               for m in messages)


def test_startup_pruning_removes_partial_files_left_by_a_crash(tmp_path: Path) -> None:
    folder = tmp_path / "divergent"
    keep = tail_file(folder, "epoch1-seq1-1.cbor", 10, age_days=1)
    (folder / "epoch2-seq5-9.tmp").write_bytes(b"\xab partial")
    prune_divergence(tmp_path, 30, 1 << 20)
    assert (folder / "epoch2-seq5-9.tmp").exists()      # only at start-up: a save may be on
    prune_divergence(tmp_path, 30, 1 << 20, startup=True)
    assert list(folder.iterdir()) == [keep]


async def test_a_node_saves_its_tail_off_the_event_loop(tmp_path: Path) -> None:
    """The event loop keeps running while a large tail is saved; the old DB is then removed."""
    cluster = Cluster(tmp_path, storage={"divergent_max_mb": 64})
    cfg = load_config(cluster.nodes["n1"].config)
    data_dir = cfg.node("n1").data_dir
    data_dir.mkdir(parents=True)
    node = Node(cfg, "n1", Role("n1", 1))
    assert node.lineage is not None
    node.lineage.record(1, 1)
    node.store = node.open_store()
    for i in range(300):
        node.store.write([(PUT, "default", f"k{i}".encode(), b"v" * 60_000)])
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    before = ticks
    try:
        await node._handle_divergence([EpochRecord(1, "n1", 1, "bootstrap", 0.0),
                                       EpochRecord(2, "n2", 101, "failover", 0.0)])
    finally:
        stop.set()
        await task
    assert ticks - before > 5, "the event loop stood still while the tail was saved"
    [tail] = list_divergent_tails(data_dir)
    # 300 one-op writes, each op and its key's seq record: seqs 1..600; epoch 2 began at 101
    # (the 51st write), so the tail is 250 writes of 2 ops
    assert (tail["first_seq"], tail["last_seq"], tail["ops"], tail["complete"]) == (
        101, 600, 250, True)
    assert node.store is None and not node.db_dir.exists()
    assert not list(data_dir.glob("db.diverged-*"))     # complete: the old DB is not kept
    assert node.lineage.transitions == [(0, 1)]
    await node.stop()


def test_a_tail_inside_a_run_this_node_applied_as_a_replica_keeps_each_write(
        tmp_path: Path) -> None:
    """A replica writes a run of the primary's writes as one record; the next epoch may have
    begun inside it. The tail is the rest of that record, each write on its own."""
    origin = make_store(tmp_path / "origin", 6)            # 6 writes of 2 ops: seqs 1..24
    replica = Store(tmp_path / "db", CFS, StorageConfig())
    try:
        apply_as_runs(origin, replica)
        saved = save_divergent_tail(tmp_path, "n2", replica, Divergence(1, 13, 24))
    finally:
        origin.close()
        replica.close()
    assert (saved.complete, saved.ops, saved.saved_last_seq, saved.error) == (True, 6, 24, None)
    batches = list(iter_tail_batches(saved.path))
    assert [b["seq"] for b in batches] == [13, 17, 21]
    assert batches[0]["ops"] == [["put", "default", b"k3-0", b"\x03" * 16],
                                 ["delete", "users", b"u3", b""]]

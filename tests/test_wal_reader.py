"""WalReader against real RocksDB directories written by rocksdict."""

from __future__ import annotations

import itertools
import os
import random
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rocksdict import Options, Rdict, WriteBatch

from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT, WalBatch, encode_batch
from hacluster.wal.errors import WalCorruption, WalGone, WalNotAtBoundary
from hacluster.wal.reader import WalReader, list_logs, log_file_name
from hacluster.wal.records import BLOCK_SIZE, HEADER_SIZE, write_log_file

CF_NAMES = ["default", "cf1", "cf2", "cf3"]


def _options() -> Options:
    opt = Options(raw_mode=True)
    opt.create_if_missing(True)
    # Retention makes RocksDB archive obsolete logs instead of deleting them.
    opt.set_wal_ttl_seconds(3600)
    opt.set_wal_size_limit_mb(1024)
    return opt


class Db:
    """A rocksdict DB with CF handles, closable so the LOCK is released."""

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        if create:
            self.db = Rdict(str(path), _options())
            for name in CF_NAMES[1:]:
                self.db.create_column_family(name, Options(raw_mode=True))
        else:
            self.db = Rdict(
                str(path),
                _options(),
                column_families={n: Options(raw_mode=True) for n in CF_NAMES[1:]},
            )
        self.handles: dict[str, Any] = {
            n: self.db.get_column_family_handle(n) for n in CF_NAMES[1:]
        }

    def write(self, ops: list[tuple[int, str, bytes, bytes]]) -> None:
        wb = WriteBatch(raw_mode=True)
        for kind, cf, key, value in ops:
            handle = self.handles.get(cf)
            if kind == PUT:
                wb.put(key, value, handle)
            elif kind == DELETE:
                wb.delete(key, handle)
            else:
                wb.delete_range(key, value, handle)
        self.db.write(wb)

    def flush_all(self) -> None:
        self.db.flush()
        for name in CF_NAMES[1:]:
            self.db.get_column_family(name).flush()

    def contents(self) -> dict[str, dict[Any, Any]]:
        out = {"default": dict(self.db.items())}
        for name in CF_NAMES[1:]:
            out[name] = dict(self.db.get_column_family(name).items())
        return out

    def latest(self) -> int:
        return int(self.db.latest_sequence_number())

    def close(self) -> None:
        self.db.close()
        # The LOCK is only released once every reference is gone.
        self.handles.clear()
        del self.db


def _random_ops(rnd: random.Random, n: int) -> list[tuple[int, str, bytes, bytes]]:
    ops = []
    for _ in range(n):
        cf = rnd.choice(CF_NAMES)
        key = b"key-%03d" % rnd.randrange(200)
        r = rnd.random()
        if r < 0.7:
            size = 70000 if rnd.random() < 0.01 else rnd.randrange(0, 513)
            ops.append((PUT, cf, key, rnd.randbytes(size)))
        elif r < 0.93:
            ops.append((DELETE, cf, key, b""))
        else:
            end = b"key-%03d" % rnd.randrange(200)
            ops.append((DELETE_RANGE, cf, min(key, end), max(key, end) + b"\x00"))
    return ops


def _read_all(reader: WalReader, **limits: int) -> list[WalBatch]:
    out: list[WalBatch] = []
    while batch := reader.read(**limits):
        out += batch
    return out


def _replay(batches: list[WalBatch], path: Path, cf_names: list[str]) -> Db:
    dst = Db(path, create=True)
    for batch in batches:
        dst.write([(kind, cf_names[cf], key, value) for kind, cf, key, value in batch.ops])
    return dst


@dataclass
class Workload:
    path: Path
    batches: list[WalBatch]
    contents: dict[str, dict[Any, Any]]
    latest: int
    cf_names: list[str]


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    path = tmp_path_factory.mktemp("wal") / "db"
    rnd = random.Random(1234)
    db = Db(path, create=True)
    for i in range(400):
        db.write(_random_ops(rnd, rnd.choice([1, 1, 2, 5, 20])))
        if i == 150:
            db.db.flush()  # default CF only: rolls the WAL, old log still live
        if i == 250:
            db.flush_all()
            db.db.compact_range(None, None)
    contents = db.contents()
    latest = db.latest()
    with WalReader(path, 1) as reader:
        batches = _read_all(reader)
    db.close()
    yield Workload(
        path, batches, contents, latest, Rdict.list_cf(str(path), Options(raw_mode=True))
    )


def _assert_contiguous(batches: list[WalBatch], first: int, last: int) -> None:
    assert batches[0].seq == first
    for prev, cur in itertools.pairwise(batches):
        assert cur.seq == prev.last_seq + 1
    assert batches[-1].last_seq == last


def test_workload_covers_interesting_cases(workload: Workload) -> None:
    assert workload.cf_names == CF_NAMES
    _assert_contiguous(workload.batches, 1, workload.latest)
    assert len({b.log_number for b in workload.batches}) >= 3  # rolled over
    ops = [op for b in workload.batches for op in b.ops]
    assert {op[0] for op in ops} == {PUT, DELETE, DELETE_RANGE}
    assert {op[1] for op in ops} == {0, 1, 2, 3}
    assert any(len(op[3]) > 2 * BLOCK_SIZE for op in ops)  # records spanning blocks


def test_replay_reproduces_every_cf(workload: Workload, tmp_path: Path) -> None:
    replica = _replay(workload.batches, tmp_path / "replica", workload.cf_names)
    try:
        assert replica.contents() == workload.contents
        assert replica.latest() == workload.latest
    finally:
        replica.close()


def test_small_read_limits_give_the_same_batches(workload: Workload) -> None:
    with WalReader(workload.path, 1) as reader:
        assert _read_all(reader, max_batches=7, max_bytes=4096) == workload.batches
        assert reader.next_seq == workload.latest + 1


def test_start_in_the_middle(workload: Workload) -> None:
    for i in (1, 37, 150, 151, 260, len(workload.batches) - 1):
        start = workload.batches[i].seq
        with WalReader(workload.path, start) as reader:
            assert reader.next_seq == start
            assert _read_all(reader) == workload.batches[i:]
            assert reader.next_seq == workload.latest + 1
    with WalReader(workload.path, workload.latest + 1) as reader:
        assert reader.read() == []
        assert reader.next_seq == workload.latest + 1
        log_number, offset = reader.position
        last = workload.batches[-1]
        assert log_number > last.log_number or offset > last.offset


def test_start_inside_a_batch(workload: Workload) -> None:
    batch = next(b for b in workload.batches[100:] if b.count >= 3)
    with WalReader(workload.path, batch.seq + 1) as reader:
        with pytest.raises(WalNotAtBoundary) as info:
            reader.read()
        assert f"[{batch.seq}, {batch.last_seq}]" in str(info.value)
        assert (info.value.batch_first, info.value.batch_last) == (batch.seq, batch.last_seq)
        assert isinstance(info.value, WalGone)
        with pytest.raises(WalNotAtBoundary):  # the error sticks
            reader.read()


def test_corrupt_byte_in_a_copy(workload: Workload, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(workload.path, copy, ignore=shutil.ignore_patterns("LOCK"))
    # A mid-log batch whose record is a single FULL fragment.
    victim = next(
        b
        for b in workload.batches[40:]
        if b.offset % BLOCK_SIZE + HEADER_SIZE + 12 + 64 < BLOCK_SIZE and b.count == 1
    )
    path = list_logs(copy)[victim.log_number]
    data = bytearray(path.read_bytes())
    data[victim.offset + HEADER_SIZE + 12 + 2] ^= 0x10
    path.write_bytes(bytes(data))
    with WalReader(copy, 1) as reader:
        got: list[WalBatch] = []
        with pytest.raises(WalCorruption) as info:
            while batch := reader.read():
                got += batch
    assert info.value.path == str(path)
    assert info.value.offset == victim.offset
    assert f"in {path} at offset {victim.offset}: checksum mismatch" in str(info.value)
    # Everything before the bad record was delivered first.
    assert got == workload.batches[: workload.batches.index(victim)]
    assert reader.position == (victim.log_number, victim.offset)


def test_tailing_follows_writes_and_rollover(tmp_path: Path) -> None:
    rnd = random.Random(99)
    db = Db(tmp_path / "db", create=True)
    try:
        reader = WalReader(db.path, 1)
        assert reader.read() == []
        assert reader.position == (0, 0)
        got: list[WalBatch] = []
        logs_seen = set()
        for round_ in range(6):
            for _ in range(rnd.randrange(1, 15)):
                db.write(_random_ops(rnd, rnd.randrange(1, 4)))
            new = _read_all(reader, max_batches=3)
            assert new, round_
            got += new
            assert reader.read() == []
            assert reader.next_seq == db.latest() + 1
            logs_seen.add(reader.position[0])
            if round_ == 1:
                db.db.flush()  # new WAL, old one still needed by other CFs
            elif round_ == 3:
                # Every CF flushed: the logs we read are archived while open.
                db.flush_all()
            elif round_ == 4:
                db.db.flush()
                db.db.flush()  # an empty log may come and go
        assert len(logs_seen) >= 3
        assert os.listdir(db.path / "archive")
        _assert_contiguous(got, 1, db.latest())
        expected = db.contents()
        reader.close()
    finally:
        db.close()
    replica = _replay(got, tmp_path / "replica", CF_NAMES)
    try:
        assert replica.contents() == expected
    finally:
        replica.close()


def test_reads_archived_logs_after_reopen_and_gone(tmp_path: Path) -> None:
    rnd = random.Random(5)
    path = tmp_path / "db"
    db = Db(path, create=True)
    for _ in range(30):
        db.write(_random_ops(rnd, 3))
    db.db.flush()
    for _ in range(30):
        db.write(_random_ops(rnd, 2))
    db.flush_all()
    db.close()
    db = Db(path, create=False)
    try:
        for _ in range(20):
            db.write(_random_ops(rnd, 2))
        latest = db.latest()
        logs = list_logs(path)
        archived = sorted(n for n, p in logs.items() if p.parent.name == "archive")
        assert len(archived) >= 2

        with WalReader(path, 1) as reader:
            batches = _read_all(reader)
        _assert_contiguous(batches, 1, latest)
        assert {b.log_number for b in batches} >= set(archived[:2])

        # Drop the oldest archived log: its sequence numbers are no longer served.
        oldest_kept = next(b for b in batches if b.log_number != archived[0]).seq
        (path / "archive" / log_file_name(archived[0])).unlink()
        with WalReader(path, 1) as reader, pytest.raises(WalGone) as info:
            reader.read()
        assert not isinstance(info.value, WalNotAtBoundary)
        assert info.value.oldest_seq == oldest_kept
        with WalReader(path, oldest_kept) as reader:
            assert _read_all(reader) == [b for b in batches if b.seq >= oldest_kept]
    finally:
        db.close()


# -- synthetic log directories (exact control over the files) --------------------


def _log(dir_: Path, number: int, batches: list[tuple[int, int]]) -> None:
    """Write log ``number`` with batches given as (first seq, op count)."""
    payloads = [
        encode_batch(seq, [(PUT, 0, b"k%d" % (seq + i), b"v") for i in range(count)])
        for seq, count in batches
    ]
    write_log_file(dir_ / log_file_name(number), payloads)


def test_list_logs_prefers_live_dir(tmp_path: Path) -> None:
    (tmp_path / "archive").mkdir()
    for p in ("000003.log", "archive/000003.log", "archive/000001.log", "1234567.log"):
        (tmp_path / p).write_bytes(b"")
    for p in ("00012.log", "000004.sst", "000005.log.tmp", "LOG"):
        (tmp_path / p).write_bytes(b"")
    assert list_logs(tmp_path) == {
        1: tmp_path / "archive/000001.log",
        3: tmp_path / "000003.log",
        1234567: tmp_path / "1234567.log",
    }
    assert list_logs(tmp_path / "missing") == {}


def test_sequence_gap_between_logs(tmp_path: Path) -> None:
    _log(tmp_path, 5, [(1, 3), (4, 2)])
    _log(tmp_path, 8, [(7, 1)])
    with WalReader(tmp_path, 1) as reader:
        assert [b.seq for b in reader.read()] == [1, 4]
        with pytest.raises(WalCorruption) as info:
            reader.read()
    msg = str(info.value)
    assert "sequence gap: expected 6, found batch [7, 7]" in msg
    assert "log 5" in msg and "log 8" in msg
    assert info.value.path == str(tmp_path / "000008.log")


def test_empty_logs_are_skipped_and_waited_on(tmp_path: Path) -> None:
    _log(tmp_path, 3, [(1, 2), (3, 0), (3, 1)])  # count-0 batch is skipped
    (tmp_path / "000004.log").write_bytes(b"")
    _log(tmp_path, 6, [(4, 1)])
    (tmp_path / "000007.log").write_bytes(b"")  # fresh WAL, no data yet
    with WalReader(tmp_path, 1) as reader:
        assert [(b.seq, b.count) for b in _read_all(reader)] == [(1, 2), (3, 1), (4, 1)]
        assert reader.position == (7, 0)
        _log(tmp_path, 7, [(5, 2)])
        assert [b.seq for b in reader.read()] == [5]
    # A start seq served only by the empty trailing log waits for data.
    with WalReader(tmp_path, 7) as reader:
        assert reader.read() == []
        assert reader.next_seq == 7


def test_no_data_yet_and_too_old(tmp_path: Path) -> None:
    with WalReader(tmp_path, 1) as reader:
        assert reader.read() == []  # no logs at all
        (tmp_path / "000002.log").write_bytes(b"")
        assert reader.read() == []
        _log(tmp_path, 2, [(10, 1)])
        with pytest.raises(WalGone) as info:
            reader.read()
        assert info.value.oldest_seq == 10
        assert "older than the oldest retained" in str(info.value)
    with pytest.raises(ValueError):
        WalReader(tmp_path, 0)


def test_log_moved_to_archive_between_reads(tmp_path: Path) -> None:
    _log(tmp_path, 4, [(1, 1)])
    with WalReader(tmp_path, 1) as reader:
        assert [b.seq for b in reader.read()] == [1]
        (tmp_path / "archive").mkdir()
        (tmp_path / "000004.log").rename(tmp_path / "archive" / "000004.log")
        _log(tmp_path, 9, [(2, 1)])
        assert [b.seq for b in reader.read()] == [2]
    # Positioning finds it in the archive too.
    with WalReader(tmp_path, 1) as reader:
        assert [b.seq for b in _read_all(reader)] == [1, 2]


def test_log_deleted_before_it_was_opened_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a log vanishes between listing and opening and the sequence then jumps,
    the missing range is reported as gone, not as corruption."""
    _log(tmp_path, 3, [(1, 2)])
    _log(tmp_path, 5, [(3, 1)])
    _log(tmp_path, 7, [(4, 1)])
    with WalReader(tmp_path, 1) as reader:
        # One log per call: a call that found data does not look for newer logs.
        assert [[b.seq for b in reader.read()] for _ in range(4)] == [[1], [3], [4], []]
    real_open = WalReader._open_log

    def open_log(self: WalReader, number: int) -> Any:
        if number == 5:
            (tmp_path / log_file_name(5)).unlink(missing_ok=True)
        return real_open(self, number)

    monkeypatch.setattr(WalReader, "_open_log", open_log)
    with WalReader(tmp_path, 1) as reader:
        assert [b.seq for b in reader.read()] == [1]
        with pytest.raises(WalGone, match=r"sequences 3\.\.3 are gone: WAL\(s\) 5"):
            reader.read()


def test_tailing_a_concurrent_writer(tmp_path: Path) -> None:
    """Polls race with writes and WAL switches done by another thread."""
    db = Db(tmp_path / "db", create=True)
    errors: list[BaseException] = []

    def writer() -> None:
        rnd = random.Random(11)
        try:
            for i in range(1500):
                db.write(_random_ops(rnd, rnd.randrange(1, 4)))
                if i % 200 == 0:
                    db.db.flush()
                if i % 700 == 0:
                    db.flush_all()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    got: list[WalBatch] = []
    try:
        with WalReader(db.path, 1) as reader:
            thread.start()
            while thread.is_alive():
                got += reader.read(max_batches=5)
            thread.join()
            got += _read_all(reader)
        assert not errors
        _assert_contiguous(got, 1, db.latest())
        assert len({b.log_number for b in got}) >= 5
        expected = db.contents()
    finally:
        thread.join()
        db.close()
    replica = _replay(got, tmp_path / "replica", CF_NAMES)
    try:
        assert replica.contents() == expected
    finally:
        replica.close()

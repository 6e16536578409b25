"""Managed mode: refusing a service database hacluster cannot replicate, probing its LOCK from
another process, and checkpoints of a database a separate writer process owns.

Real RocksDB directories and real subprocesses: a writer (run with sys.executable) writes
continuously with tiny write buffers, so flushes and compactions happen while checkpoints are
taken; each batch puts the same key into two column families, so a checkpoint that is not one
consistent prefix shows as different key counts.
"""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import rocksdict

from hacluster.managed.checkpoint import create_foreign_checkpoint, verify_continuation
from hacluster.managed.options import (
    ManagedDbError,
    check_db_path,
    check_service_options,
    lock_holder,
    parse_options_file,
    refuse_if_in_use,
)
from hacluster.store import latest_options_file

WRITER = textwrap.dedent("""
    import sys, time
    import rocksdict

    path, mode = sys.argv[1], sys.argv[2]
    def opts():
        o = rocksdict.Options(raw_mode=True)
        o.set_write_buffer_size(64 << 10)
        o.set_level_zero_file_num_compaction_trigger(2)
        o.set_target_file_size_base(128 << 10)
        o.set_max_bytes_for_level_base(512 << 10)
        return o
    o = opts()
    o.create_if_missing(True)
    o.create_missing_column_families(True)
    o.set_wal_ttl_seconds(3600)
    o.set_wal_size_limit_mb(1024)
    db = rocksdict.Rdict(path, o, column_families={"cf1": opts()})
    cf1 = db.get_column_family_handle("cf1")
    n = 0
    def batch():
        global n
        n += 1
        wb = rocksdict.WriteBatch(raw_mode=True)
        key = b"k%010d" % n
        wb.put(key, b"v" * 100)
        wb.put(key, b"w" * 5, cf1)   # smaller: cf1 flushes at other times than default
        db.write(wb)
    if mode == "hold":
        batch()
        print("ready", flush=True)
        time.sleep(60)
    else:
        for _ in range(2000):
            batch()
        print("ready", flush=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch()
""")


def raw() -> rocksdict.Options:
    return rocksdict.Options(raw_mode=True)


def spawn(tmp_path: Path, db: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(db), mode],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.wait()
        pytest.fail(f"writer did not start: {line!r}, exit {proc.returncode}")
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    db = tmp_path / "service"
    proc = spawn(tmp_path, db, "write")
    try:
        yield db, proc
    finally:
        stop(proc)


def make_db(path: Path, *, retention: bool = True, recycle: int = 0,
            cfs: tuple[str, ...] = ("cf1",), keys: int = 10) -> None:
    """A closed RocksDB database written by this process."""
    o = raw()
    o.create_if_missing(True)
    o.create_missing_column_families(True)
    if retention:
        o.set_wal_ttl_seconds(3600)
        o.set_wal_size_limit_mb(1024)
    if recycle:
        o.set_recycle_log_file_num(recycle)
    db = rocksdict.Rdict(str(path), o, column_families={c: raw() for c in cfs})
    for i in range(keys):
        db[b"k%010d" % (i + 1)] = b"v"
    db.close()
    del db
    gc.collect()


def read_checkpoint(path: Path) -> tuple[int, dict[str, list[bytes]]]:
    """(latest seq, keys of each column family) of a checkpoint, opened read-only."""
    cfs = rocksdict.Rdict.list_cf(str(path), raw())
    db = rocksdict.Rdict(str(path), raw(), column_families={c: raw() for c in cfs},
                         access_type=rocksdict.AccessType.read_only())
    try:
        seq = int(db.latest_sequence_number())
        keys = {c: list(map(bytes, (db if c == "default" else db.get_column_family(c)).keys()))
                for c in cfs}
    finally:
        db.close()
        del db
        gc.collect()
    return seq, keys


def assert_consistent_prefix(path: Path) -> int:
    seq, keys = read_checkpoint(path)
    n = len(keys["default"])
    assert keys["default"] == [b"k%010d" % i for i in range(1, n + 1)], "not a prefix"
    assert keys["cf1"] == keys["default"], "column families at different points"
    assert seq == 2 * n, f"seq {seq} but {n} batches of 2 puts"
    return seq


# -- checkpoints of a database another process is writing -------------------------------------


def test_checkpoints_while_another_process_writes(
        writer: tuple[Path, subprocess.Popen[str]], tmp_path: Path) -> None:
    db, proc = writer
    deadline = time.monotonic() + 15
    while not list(db.glob("*.sst")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(db.glob("*.sst")), "the writer never flushed"
    (db / "rocksdict-config.json").unlink()   # as for a service that does not use rocksdict
    seqs = []
    for i in range(3):
        target = tmp_path / "checkpoints" / f"cp{i}" / "db"
        seq = create_foreign_checkpoint(db, target, scratch=tmp_path / "scratch")
        assert assert_consistent_prefix(target) == seq
        verify_continuation(db, seq)
        seqs.append(seq)
        time.sleep(0.1)
    assert seqs == sorted(seqs) and seqs[0] > 0
    assert proc.poll() is None, "the writer died while checkpoints were taken"
    # Nothing left behind: no staging directories, no secondary directories, and the sidecar
    # rocksdict creates while opening the secondary was removed again.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["cp0", "cp1", "cp2"]
    assert all(sorted(os.listdir(tmp_path / "checkpoints" / c)) == ["db"]
               for c in ("cp0", "cp1", "cp2"))
    assert list((tmp_path / "scratch").iterdir()) == []
    assert not (db / "rocksdict-config.json").exists()

    # Once the writer is gone, a checkpoint is its last state exactly.
    stop(proc)
    target = tmp_path / "final"
    seq = create_foreign_checkpoint(db, target, scratch=tmp_path / "scratch")
    assert assert_consistent_prefix(target) == seq
    verify_continuation(db, seq)
    live = rocksdict.Rdict(str(db), raw(), column_families={"cf1": raw()},
                           access_type=rocksdict.AccessType.read_only())
    try:
        assert int(live.latest_sequence_number()) == seq
    finally:
        live.close()
        del live
        gc.collect()


def test_checkpoint_leaves_the_service_directory_untouched(tmp_path: Path) -> None:
    db = tmp_path / "db"
    make_db(db, cfs=("cf1", "cf2"), keys=50)
    (db / "rocksdict-config.json").unlink()

    def state() -> dict[str, tuple[int, int, int]]:
        out = {}
        for p in [*db.iterdir(), *(db / "archive").iterdir()]:
            st = p.stat()
            out[str(p.relative_to(db))] = (st.st_ino, st.st_size, st.st_mtime_ns)
        return out

    before = state()
    seq = create_foreign_checkpoint(db, tmp_path / "cp", scratch=tmp_path / "s")
    assert seq == 50
    assert state() == before
    verify_continuation(db, seq)
    _, keys = read_checkpoint(tmp_path / "cp")
    assert len(keys["default"]) == 50 and keys["cf1"] == keys["cf2"] == []


def test_checkpoint_refuses_existing_target_and_missing_db(tmp_path: Path) -> None:
    db = tmp_path / "db"
    make_db(db)
    target = tmp_path / "cp"
    target.mkdir()
    with pytest.raises(ManagedDbError, match="already exists"):
        create_foreign_checkpoint(db, target, scratch=tmp_path / "s")
    with pytest.raises(ManagedDbError, match="does not exist"):
        create_foreign_checkpoint(tmp_path / "nope", tmp_path / "cp2", scratch=tmp_path / "s")


def test_checkpoint_refuses_to_overwrite_a_foreign_rocksdict_sidecar(tmp_path: Path) -> None:
    db = tmp_path / "db"
    make_db(db)
    sidecar = db / "rocksdict-config.json"
    theirs = b'{"raw_mode":false,"prefix_extractors":{}}'
    sidecar.write_bytes(theirs)
    with pytest.raises(ManagedDbError, match=r"rocksdict-config\.json"):
        create_foreign_checkpoint(db, tmp_path / "cp", scratch=tmp_path / "s")
    assert sidecar.read_bytes() == theirs
    assert not (tmp_path / "cp").exists()


def test_checkpoint_gives_up_after_attempts(tmp_path: Path) -> None:
    db = tmp_path / "db"
    make_db(db)
    with pytest.raises(ManagedDbError, match="no checkpoint after 2 attempts"):
        # A column family the database does not have: every attempt fails to open.
        create_foreign_checkpoint(db, tmp_path / "cp", scratch=tmp_path / "s",
                                  column_families=["default", "cf1", "missing"], attempts=2)
    assert not (tmp_path / "cp").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".cp")] == []


def test_verify_continuation(tmp_path: Path) -> None:
    db_path = tmp_path / "db"
    o = raw()
    o.create_if_missing(True)    # no WAL retention: obsolete logs are deleted
    db = rocksdict.Rdict(str(db_path), o)
    try:
        for i in range(10):
            db[b"a%d" % i] = b"v"             # seqs 1..10
        verify_continuation(db_path, 0)
        verify_continuation(db_path, 4)
        verify_continuation(db_path, 10)      # the live end
        db.flush(True)                        # log holding 1..10 becomes obsolete: deleted
        for i in range(5):
            db[b"b%d" % i] = b"v"             # seqs 11..15, in a new log
        verify_continuation(db_path, 10)
        verify_continuation(db_path, 15)
        with pytest.raises(ManagedDbError, match="WAL ends before sequence 100"):
            verify_continuation(db_path, 100)
        with pytest.raises(ManagedDbError, match=r"no longer holds sequence 5") as err:
            verify_continuation(db_path, 4)
        assert str(db_path) in str(err.value)
    finally:
        db.close()
        del db
        gc.collect()


def test_verify_continuation_refuses_inside_a_batch(tmp_path: Path) -> None:
    db_path = tmp_path / "db"
    o = raw()
    o.create_if_missing(True)
    db = rocksdict.Rdict(str(db_path), o)
    try:
        wb = rocksdict.WriteBatch(raw_mode=True)
        for i in range(3):
            wb.put(b"k%d" % i, b"v")
        db.write(wb)                          # one batch: seqs 1..3
        with pytest.raises(ManagedDbError, match="batch boundary"):
            verify_continuation(db_path, 1)
        with pytest.raises(ManagedDbError, match="batch boundary"):
            verify_continuation(db_path, 2)
        verify_continuation(db_path, 0)
        verify_continuation(db_path, 3)       # the live end
    finally:
        db.close()
        del db
        gc.collect()


# -- options ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_options(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A real OPTIONS file of a database with WAL retention and a column family cf1."""
    db = tmp_path_factory.mktemp("good") / "db"
    make_db(db)
    path = latest_options_file(db)
    assert path is not None
    return path.read_text()


def with_options(tmp_path: Path, text: str, name: str = "OPTIONS-000099") -> Path:
    db = tmp_path / "db"
    db.mkdir(exist_ok=True)
    (db / name).write_text(text)
    return db


def edit(text: str, key: str, value: str, section: str = "[DBOptions]") -> str:
    """Set ``key=value`` inside ``section`` only (the line must exist there)."""
    start = text.index(section)
    end = text.find("\n[", start + 1)
    end = len(text) if end < 0 else end
    body, n = re.subn(rf"(?m)^(\s*){re.escape(key)}=.*$", rf"\g<1>{key}={value}",
                      text[start:end], count=1)
    assert n == 1, f"{key} not in {section}"
    return text[:start] + body + text[end:]


def test_real_good_options_pass(tmp_path: Path, good_options: str) -> None:
    db = with_options(tmp_path, good_options)
    check_service_options(db)
    parsed = parse_options_file(db / "OPTIONS-000099")
    assert parsed.db["WAL_ttl_seconds"] == "3600"
    assert set(parsed.column_families) == {"default", "cf1"}
    assert parsed.column_families["cf1"]["comparator"] == "leveldb.BytewiseComparator"


@pytest.mark.parametrize(("key", "value", "section", "expect"), [
    ("wal_compression", "kZSTD", "[DBOptions]", "wal_compression=kZSTD"),
    ("manual_wal_flush", "true", "[DBOptions]", "manual_wal_flush=true"),
    ("allow_2pc", "true", "[DBOptions]", "allow_2pc=true"),
    ("recycle_log_file_num", "4", "[DBOptions]", "recycle_log_file_num=4"),
    ("comparator", "rocksdb.ReverseBytewiseComparator", '[CFOptions "cf1"]',
     "comparator=rocksdb.ReverseBytewiseComparator: column family 'cf1'"),
    ("comparator", "leveldb.BytewiseComparator.u64ts", '[CFOptions "default"]',
     "column family 'default'"),
    ("merge_operator", "PutOperator", '[CFOptions "cf1"]',
     "merge_operator=PutOperator: column family 'cf1'"),
    ("merge_operator", "{id=StringAppendOperator;delimiter=,;}", '[CFOptions "cf1"]',
     "merge_operator=StringAppendOperator: column family 'cf1'"),
])
def test_bad_option_refused(tmp_path: Path, good_options: str, key: str, value: str,
                            section: str, expect: str) -> None:
    db = with_options(tmp_path, edit(good_options, key, value, section))
    with pytest.raises(ManagedDbError) as err:
        check_service_options(db)
    assert expect in str(err.value)
    assert str(db / "OPTIONS-000099") in str(err.value)


def test_no_wal_retention_refused_real(tmp_path: Path) -> None:
    db = tmp_path / "db"
    make_db(db, retention=False)
    with pytest.raises(ManagedDbError) as err:
        check_service_options(db)
    text = str(err.value)
    assert "WAL_ttl_seconds=0 and WAL_size_limit_MB=0" in text and "OPTIONS-" in text
    assert "set WAL_ttl_seconds" in text


def test_retention_by_size_alone_is_enough(tmp_path: Path, good_options: str) -> None:
    db = with_options(tmp_path, edit(good_options, "WAL_ttl_seconds", "0"))
    check_service_options(db)


def test_recycling_refused_real(tmp_path: Path) -> None:
    # RocksDB turns recycling off by itself when WAL retention is on (the OPTIONS file then
    # says 0), so only a database without retention keeps recycle_log_file_num=2.
    db = tmp_path / "db"
    make_db(db, retention=False, recycle=2)
    with pytest.raises(ManagedDbError, match=r"OPTIONS-\d+: \[DBOptions\] "
                                             r"recycle_log_file_num=2"):
        check_service_options(db)


def test_newest_options_file_decides(tmp_path: Path, good_options: str) -> None:
    db = with_options(tmp_path, good_options, "OPTIONS-000007")
    with_options(tmp_path, edit(good_options, "manual_wal_flush", "true"), "OPTIONS-000012")
    with pytest.raises(ManagedDbError, match="OPTIONS-000012"):
        check_service_options(db)
    with_options(tmp_path, good_options, "OPTIONS-000100")
    check_service_options(db)


def test_options_comments_and_odd_lines(tmp_path: Path) -> None:
    db = with_options(tmp_path, textwrap.dedent("""\
        # a comment
        [Version]
          rocksdb_version=9.8.4   # trailing comment
        [DBOptions]
          WAL_ttl_seconds=60
          # manual_wal_flush=true  (commented out)
          db_host_id=host\\#1
        [CFOptions "we \\"quote\\""]
          comparator=leveldb.BytewiseComparator
        [TableOptions/BlockBasedTable "we \\"quote\\""]
          checksum=kXXH3
        """))
    check_service_options(db)
    parsed = parse_options_file(db / "OPTIONS-000099")
    assert parsed.db == {"WAL_ttl_seconds": "60", "db_host_id": "host#1"}
    assert list(parsed.column_families) == ['we "quote"']

    (db / "OPTIONS-000099").write_text("[DBOptions]\n  this is not an option\n")
    with pytest.raises(ManagedDbError, match=r"OPTIONS-000099: line 2"):
        check_service_options(db)


def test_no_options_file(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    with pytest.raises(ManagedDbError, match="no OPTIONS file: not a RocksDB database, or "
                                             "one never opened"):
        check_service_options(tmp_path / "db")


# -- paths and the LOCK file --------------------------------------------------------------


def test_check_db_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ManagedDbError,
                       match=re.escape(f"{missing}: the service's database does not")):
        check_db_path(missing, must_exist=True)
    check_db_path(missing, must_exist=False)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ManagedDbError, match="not a directory"):
        check_db_path(a_file, must_exist=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_db_path(empty, must_exist=False)
    with pytest.raises(ManagedDbError, match="not a RocksDB database"):
        check_db_path(empty, must_exist=True)
    (empty / "junk").write_text("x")
    with pytest.raises(ManagedDbError, match=re.escape(f"{empty}: no CURRENT file: not a RocksDB")):
        check_db_path(empty, must_exist=False)
    db = tmp_path / "db"
    make_db(db)
    check_db_path(db, must_exist=True)


def test_lock_holder_across_processes(tmp_path: Path) -> None:
    db = tmp_path / "service"
    assert lock_holder(db) is None               # no directory at all
    proc = spawn(tmp_path, db, "hold")
    try:
        assert lock_holder(db) == proc.pid
        assert lock_holder(db) == proc.pid       # probing did not take the lock away
        with pytest.raises(ManagedDbError) as err:
            refuse_if_in_use(db)
        text = str(err.value)
        assert str(db) in text and f"process {proc.pid}" in text and "writer.py" in text
    finally:
        stop(proc)
    assert lock_holder(db) is None
    refuse_if_in_use(db)


def test_lock_holder_never_creates_the_lock_file(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    assert lock_holder(db) is None
    assert not (db / "LOCK").exists()


def test_lock_holder_refuses_a_database_this_process_has_open(tmp_path: Path) -> None:
    db_path = tmp_path / "db"
    o = raw()
    o.create_if_missing(True)
    db = rocksdict.Rdict(str(db_path), o)
    try:
        with pytest.raises(ManagedDbError, match="this process holds the lock"):
            lock_holder(db_path)
        # Our lock is still there: another process sees us as the holder.
        out = subprocess.run(
            [sys.executable, "-c",
             "import sys; from pathlib import Path; from hacluster.managed.options import "
             "lock_holder; print(lock_holder(Path(sys.argv[1])))", str(db_path)],
            capture_output=True, text=True, check=True, timeout=60)
        assert out.stdout.strip() == str(os.getpid())
    finally:
        db.close()
        del db
        gc.collect()

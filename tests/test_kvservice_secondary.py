"""The example service's read-only side stays current when the copy it follows flushes.

A RocksDB secondary instance can keep a key's older value in its memtable after the copy
flushed a newer one, and after the copy was closed and opened again (RocksDB #14444, #15051;
rocksdict 0.3.29 has both: a plain secondary beside the example's reads the older value in
each case below). The example's ``Secondary`` must read the newer one. Real RocksDB
directories; the test's read-write handle plays hacluster's copy.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from rocksdict import AccessType, Options, Rdict

SERVICE = Path(__file__).resolve().parent.parent / "examples" / "kvservice" / "service.py"


def load_service() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kvservice_example", SERVICE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


service = load_service()


def copy_options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_wal_ttl_seconds(3600)
    return opts


@pytest.fixture
def copy(tmp_path: Path) -> Iterator[Rdict]:
    db = Rdict(str(tmp_path / "db"), copy_options())
    yield db
    db.close()


def plain_secondary(tmp_path: Path) -> Rdict:
    opts = Options(raw_mode=True)
    opts.set_max_open_files(-1)
    return Rdict(str(tmp_path / "db"), opts,
                 access_type=AccessType.secondary(str(tmp_path / "plain")))


def read(db: Rdict, key: bytes) -> bytes | None:
    db.try_catch_up_with_primary()
    value = db.get(key)
    return value if isinstance(value, bytes) else None


def test_a_flush_of_the_copy_is_read_through(tmp_path: Path, copy: Rdict) -> None:
    plain = plain_secondary(tmp_path)
    ours = service.Secondary(str(tmp_path / "db"))
    try:
        copy.put(b"k", b"v1")
        assert read(plain, b"k") == ours.get(b"k") == b"v1"
        copy.put(b"k", b"v2")            # neither caught up with it before the flush
        copy.flush()
        stale = read(plain, b"k")        # b"v1" with RocksDB's fault; not asserted
        assert ours.get(b"k") == b"v2", f"a plain secondary read {stale!r}"
        assert ours.reopens == 1
        copy.put(b"other", b"x")         # no flush: no reopen
        assert ours.get(b"other") == b"x" and ours.reopens == 1
        assert ours.seq() == copy.latest_sequence_number()
    finally:
        plain.close()
        ours.close()
    assert not Path(ours.scratch).exists()


def test_a_reopen_of_the_copy_is_read_through(tmp_path: Path) -> None:
    copy = Rdict(str(tmp_path / "db"), copy_options())
    plain = plain_secondary(tmp_path)
    ours = service.Secondary(str(tmp_path / "db"))
    try:
        copy.put(b"k", b"a1")
        assert read(plain, b"k") == ours.get(b"k") == b"a1"
        copy.put(b"k", b"a2")
        copy.close()                     # hacluster closes its copy (a full disk) and opens it
        copy = Rdict(str(tmp_path / "db"), copy_options())
        copy.put(b"later", b"y")         # even a later write does not mend RocksDB's own
        stale = read(plain, b"k")        # b"a1" with RocksDB's fault; not asserted
        assert ours.get(b"k") == b"a2", f"a plain secondary read {stale!r}"
        assert ours.get(b"later") == b"y"
    finally:
        plain.close()
        ours.close()
        copy.close()

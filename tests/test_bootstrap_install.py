"""Installing a staged checkpoint, and finishing or discarding an install after a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hacluster.config import StorageConfig
from hacluster.replication.bootstrap import Layout, install, recover
from hacluster.store import Store
from hacluster.wal.batch import PUT

OLD = {"000004.log": b"old wal", "CURRENT": b"MANIFEST-000001\n", "OLD-ONLY.sst": b"x" * 50}
NEW = {"000009.sst": b"new table", "CURRENT": b"MANIFEST-000007\n", "000010.log": b""}
MARKER = {"id": "1700000000-0a1b2c3d", "seq": 4242, "epoch": 3}


def put_files(where: Path, files: dict[str, bytes]) -> None:
    where.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (where / name).write_bytes(data)


def contents(where: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in where.iterdir()}


def stage(lay: Layout, files: dict[str, bytes] | None = NEW, complete: bool = True) -> None:
    lay.staging.mkdir(parents=True, exist_ok=True)
    lay.manifest.write_text(json.dumps({"id": MARKER["id"], "seq": MARKER["seq"], "files": []}))
    if files is not None:
        put_files(lay.files, files)
    if complete:
        lay.complete.write_text(json.dumps(MARKER))


def assert_installed(lay: Layout, files: dict[str, bytes] = NEW) -> None:
    assert contents(lay.db) == files
    assert not lay.staging.exists()
    assert not lay.old.exists()
    assert sorted(p.name for p in lay.data_dir.iterdir()) == ["db"]


def test_layout_paths(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    assert lay.db == tmp_path / "db"
    assert lay.old == tmp_path / "db.old"
    assert lay.staging == tmp_path / "bootstrap"
    assert lay.files == tmp_path / "bootstrap" / "files"
    assert lay.manifest == tmp_path / "bootstrap" / "manifest.json"
    assert lay.complete == tmp_path / "bootstrap" / "COMPLETE"


def test_install_swaps_staged_files_into_db(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    put_files(lay.db, OLD)
    (lay.db / "archive").mkdir()
    (lay.db / "archive" / "000001.log").write_bytes(b"archived")
    stage(lay)
    assert install(tmp_path) == MARKER["seq"]
    assert_installed(lay)


def test_install_without_a_previous_db(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    stage(lay)
    assert install(tmp_path) == MARKER["seq"]
    assert_installed(lay)


def test_install_with_empty_file(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    put_files(lay.db, OLD)
    stage(lay, {"000011.log": b""})
    install(tmp_path)
    assert_installed(lay, {"000011.log": b""})


def test_install_requires_the_marker(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    put_files(lay.db, OLD)
    stage(lay, complete=False)
    with pytest.raises(FileNotFoundError):
        install(tmp_path)
    assert contents(lay.db) == OLD
    assert contents(lay.files) == NEW


# -- crash states, finished (or discarded) by recover() --------------------------------------


def test_crash_a_before_any_rename(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    put_files(lay.db, OLD)
    stage(lay)
    assert recover(tmp_path) is True
    assert_installed(lay)


def test_crash_b_after_db_moved_aside(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    put_files(lay.old, OLD)
    stage(lay)
    assert not lay.db.exists()
    assert recover(tmp_path) is True
    assert_installed(lay)


def test_crash_c_after_files_became_db(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    put_files(lay.old, OLD)
    stage(lay, files=None)
    put_files(lay.db, NEW)  # files/ was already renamed to db/
    assert recover(tmp_path) is True
    assert_installed(lay)


def test_crash_c_without_db_old(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    stage(lay, files=None)
    put_files(lay.db, NEW)
    assert recover(tmp_path) is True
    assert_installed(lay)


def test_crash_d_download_incomplete_keeps_everything(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    put_files(lay.db, OLD)
    stage(lay, {"000009.sst": b"new table", "000010.log.part": b"half"}, complete=False)
    staged_before = contents(lay.files)
    manifest_before = lay.manifest.read_bytes()
    assert recover(tmp_path) is False
    assert contents(lay.db) == OLD
    assert contents(lay.files) == staged_before  # kept for resumption
    assert lay.manifest.read_bytes() == manifest_before
    assert not lay.complete.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bootstrap", "db"]


def test_crash_e_leftover_db_old_is_removed(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    put_files(lay.db, NEW)
    put_files(lay.old, OLD)
    (lay.old / "archive").mkdir()
    (lay.old / "archive" / "x.log").write_bytes(b"x")
    assert recover(tmp_path) is False
    assert_installed(lay)


def test_recover_on_a_clean_data_dir_does_nothing(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    put_files(lay.db, OLD)
    assert recover(tmp_path) is False
    assert contents(lay.db) == OLD
    assert recover(tmp_path / "never-created") is False


def test_recover_twice_is_harmless(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    put_files(lay.db, OLD)
    stage(lay)
    assert recover(tmp_path) is True
    assert recover(tmp_path) is False
    assert_installed(lay)


def test_install_works_on_a_real_checkpoint(tmp_path: Path) -> None:
    """The staged files of a real RocksDB checkpoint open as the DB at the marker's seq."""
    storage = StorageConfig(write_buffer_size_mb=1)
    primary = Store(tmp_path / "primary" / "db", ["default", "users"], storage)
    try:
        primary.write([(PUT, "users", b"u", b"1"), (PUT, "default", b"k", b"v")])
        lay = Layout(tmp_path / "replica")
        seq = primary.checkpoint(lay.files)
    finally:
        primary.close()
    old = Store(lay.db, ["default"], storage)
    old.write([(PUT, "default", b"stale", b"x")])
    old.close()
    lay.complete.write_text(json.dumps({"id": "cp", "seq": seq, "epoch": 1}))
    assert recover(lay.data_dir) is True
    store = Store(lay.db, ["default", "users"], storage)
    try:
        assert store.latest_seq() == seq == 2 * 2  # each op and its key's seq record
        assert store.get(b"u", "users") == b"1"
        assert store.key_seq(b"u", "users") == seq  # the seq records came with the data
        assert store.get(b"stale") is None
    finally:
        store.close()
    assert sorted(p.name for p in lay.data_dir.iterdir()) == ["db"]

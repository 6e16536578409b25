"""The RocksDB store on real directories: column families, writes, replicated batches, options."""

from __future__ import annotations

import gc
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import rocksdict
from hypothesis import given
from hypothesis import strategies as st

from hacluster.config import StorageConfig
from hacluster.key_seqs import SEQ_CF, writes_in
from hacluster.store import (
    AppliedRange,
    DivergenceError,
    NamedOp,
    Store,
    StoreError,
    check_wal_options,
    has_database,
    latest_options_file,
)
from hacluster.wal.batch import (
    DELETE,
    DELETE_RANGE,
    PUT,
    SINGLE_DELETE,
    TAG_CF_MERGE,
    TAG_MERGE,
    WalBatch,
    encode_batch,
)
from hacluster.wal.errors import WalCorruption, WalNotAtBoundary, WalUnsupported
from hacluster.wal.reader import WalReader
from tests.fuzzing import fuzz_settings
from tests.replica_runs import apply_as_runs

CFS = ["default", "users", "events"]
STORAGE = StorageConfig(write_buffer_size_mb=1)


@pytest.fixture
def opened() -> Iterator[list[Store]]:
    """Stores a test opened; closed at the end even if the test fails."""
    stores: list[Store] = []
    yield stores
    for s in stores:
        s.close()


def open_store(stores: list[Store], db_dir: Path, cfs: list[str] = CFS) -> Store:
    store = Store(db_dir, cfs, STORAGE)
    stores.append(store)
    return store


def list_cf(db_dir: Path) -> list[str]:
    return list(rocksdict.Rdict.list_cf(str(db_dir), rocksdict.Options(raw_mode=True)))


def test_open_creates_column_families_in_config_order(tmp_path: Path, opened: list[Store]) -> None:
    db = tmp_path / "node" / "db"
    store = open_store(opened, db, ["default", "zeta", "alpha", "mid"])
    assert has_database(db)
    # the store's own per-key seq family is created after the configured ones
    assert store.column_families == ["default", "zeta", "alpha", "mid", SEQ_CF]
    assert store.column_families == list_cf(db)
    assert store.latest_seq() == 0


def test_reopen_keeps_ids_and_appends_new_families(tmp_path: Path, opened: list[Store]) -> None:
    db = tmp_path / "db"
    open_store(opened, db).close()
    # a different order in the config, a new family, and one no longer listed
    store = open_store(opened, db, ["events", "default", "meta"])
    # SEQ_CF was created on the first open, so the new family comes after it
    assert store.column_families == ["default", "users", "events", SEQ_CF, "meta"]
    assert store.column_families == list_cf(db)
    assert store.seq_cf_id == 3     # its WAL id, not the end of the list


def test_column_family_data_survives_reopen(tmp_path: Path, opened: list[Store]) -> None:
    db = tmp_path / "db"
    store = open_store(opened, db)
    store.write([(PUT, "users", b"u1", b"alice"), (PUT, "default", b"k", b"v")])
    store.close()
    store = open_store(opened, db, ["default"])
    assert store.get(b"u1", "users") == b"alice"
    assert store.get(b"u1") is None
    assert store.get(b"k") == b"v"
    assert store.latest_seq() == 2 * 2  # each op and its key's seq record


def test_write_returns_the_seq_range(tmp_path: Path, opened: list[Store]) -> None:
    store = open_store(opened, tmp_path / "db")
    # each op and its key's seq record take a seq: a single put takes two
    assert store.write([(PUT, "default", b"a", b"1")]) == AppliedRange(1, 2)
    assert store.key_seq(b"a") == 2
    r = store.write([
        (PUT, "users", b"b", b"2"),
        (DELETE, "default", b"a", b""),
        (SINGLE_DELETE, "users", b"zz", b""),
        (DELETE_RANGE, "events", b"a", b"z"),
    ])
    assert r == AppliedRange(3, 2 + 2 * 4)
    assert store.latest_seq() == 10
    assert store.get(b"a") is None
    assert store.get(b"b", "users") == b"2"
    assert store.key_seq(b"b", "users") == 10  # the last seq of its batch
    assert store.key_seq(b"a") == 0


def test_write_unknown_column_family_writes_nothing(tmp_path: Path, opened: list[Store]) -> None:
    store = open_store(opened, tmp_path / "db")
    with pytest.raises(StoreError, match="unknown column family 'nope'"):
        store.write([(PUT, "default", b"a", b"1"), (PUT, "nope", b"b", b"2")])
    assert store.latest_seq() == 0
    assert store.get(b"a") is None
    with pytest.raises(StoreError, match="unknown op kind 9"):
        store.write([(PUT, "default", b"a", b"1"), (9, "default", b"b", b"")])
    assert store.latest_seq() == 0


def test_prepare_and_commit_replicated_batch(tmp_path: Path, opened: list[Store]) -> None:
    store = open_store(opened, tmp_path / "db")
    store.write([(PUT, "default", b"gone", b"x"), (PUT, "events", b"e5", b"x")])
    assert store.latest_seq() == 2 * 2  # each op and its key's seq record
    # a primary with the same families in the same order: cf ids are list indexes
    ops = [
        (PUT, 0, b"k", b"v"),
        (PUT, 1, b"user:1", b"alice"),
        (DELETE, 0, b"gone", b""),
        (SINGLE_DELETE, 1, b"never", b""),
        (DELETE_RANGE, 2, b"e0", b"e9"),
        (PUT, 2, b"e9", b"kept"),
    ]
    wb = encode_batch(5, ops)
    handles = store.handles_for(store.column_families)
    batch = store.prepare(wb, handles, where="test")
    assert store.latest_seq() == 4  # prepared, not written
    store.commit(batch, 5, len(ops), sync=False)
    assert store.latest_seq() == 4 + len(ops)  # a replicated batch takes its own count
    assert store.get(b"k") == b"v"
    assert store.get(b"user:1", "users") == b"alice"
    assert store.get(b"gone") is None
    assert store.get(b"e5", "events") is None
    assert list(store.items("events")) == [(b"e9", b"kept")]


def test_primary_cf_ids_map_by_name(tmp_path: Path, opened: list[Store]) -> None:
    store = open_store(opened, tmp_path / "db")
    # the primary's list has the families in another order: id 0 is "events" there
    handles = store.handles_for(["events", "default", "users"])
    store.commit(store.prepare(encode_batch(1, [(PUT, 0, b"k", b"ev")]), handles), 1, 1,
                 sync=True)
    assert store.get(b"k", "events") == b"ev"
    assert store.get(b"k") is None


def test_handles_for_missing_family(tmp_path: Path, opened: list[Store]) -> None:
    store = open_store(opened, tmp_path / "db")
    with pytest.raises(StoreError) as info:
        store.handles_for(["default", "users", "meta", "x"])
    assert str(info.value) == (
        f"{tmp_path / 'db'}: column families ['meta', 'x'] exist on the primary but not here; "
        "add them to column_families in the config")


def test_commit_at_wrong_position_writes_nothing(tmp_path: Path, opened: list[Store]) -> None:
    store = open_store(opened, tmp_path / "db")
    store.write([(PUT, "default", b"a", b"1")] * 3)
    seq = 2 * 3  # each op and its key's seq record
    handles = store.handles_for(store.column_families)
    for first in (seq, seq + 2, 1):
        batch = store.prepare(encode_batch(first, [(PUT, 0, b"new", b"x")]), handles)
        with pytest.raises(DivergenceError) as info:
            store.commit(batch, first, 1, sync=False)
        message = str(info.value)
        assert message == (f"{tmp_path / 'db'}: batch starts at seq {first} but this DB is "
                           f"at seq {seq}")
        assert store.latest_seq() == seq
        assert store.get(b"new") is None


def test_commit_count_mismatch_is_divergence(tmp_path: Path, opened: list[Store]) -> None:
    store = open_store(opened, tmp_path / "db")
    handles = store.handles_for(store.column_families)
    batch = store.prepare(encode_batch(1, [(PUT, 0, b"a", b"1"), (PUT, 0, b"b", b"2")]), handles)
    with pytest.raises(DivergenceError) as info:
        store.commit(batch, 1, 3, sync=False)  # the frame claimed three seqs
    assert str(info.value) == (
        f"{tmp_path / 'db'}: applied batch [1, 3] but latest_sequence_number() is 2: the "
        "replica has diverged from the primary")


def _merge_payload(seq: int, cf: int) -> bytes:
    """One merge entry (key b"k", operand b"v"); the CF-tagged form when ``cf`` is not 0."""
    tag = bytes([TAG_CF_MERGE, cf]) if cf else bytes([TAG_MERGE])
    return struct.pack("<QI", seq, 1) + tag + b"\x01k" + b"\x01v"


@pytest.mark.parametrize("cf", [0, 1])
def test_prepare_refuses_merge(tmp_path: Path, opened: list[Store], cf: int) -> None:
    store = open_store(opened, tmp_path / "db")
    handles = store.handles_for(store.column_families)
    with pytest.raises(WalUnsupported) as info:
        store.prepare(_merge_payload(1, cf), handles, where="frame #4")
    assert info.value.tag == (TAG_CF_MERGE if cf else TAG_MERGE)
    assert "merge" in str(info.value)
    assert "frame #4" in str(info.value)
    assert store.latest_seq() == 0


def test_prepare_refuses_truncated_payload(tmp_path: Path, opened: list[Store]) -> None:
    store = open_store(opened, tmp_path / "db")
    wb = encode_batch(1, [(PUT, 0, b"key", b"value")])
    with pytest.raises(WalCorruption):
        store.prepare(wb[:-2], store.handles_for(store.column_families))
    assert store.latest_seq() == 0


def test_prepare_unknown_cf_id_is_key_error(tmp_path: Path, opened: list[Store]) -> None:
    store = open_store(opened, tmp_path / "db")
    with pytest.raises(KeyError):
        store.prepare(encode_batch(1, [(PUT, 7, b"k", b"v")]),
                      store.handles_for(store.column_families))


# -- WAL options that make the WAL unshippable -----------------------------------------------


def _raw_db(db_dir: Path, recycle: int) -> None:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_recycle_log_file_num(recycle)
    db = rocksdict.Rdict(str(db_dir), opts)
    db[b"k"] = b"v"
    db.close()
    del db
    gc.collect()


def test_recycled_wal_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "db"
    _raw_db(db, recycle=1)
    options = latest_options_file(db)
    assert options is not None
    with pytest.raises(StoreError) as info:
        Store(db, CFS, STORAGE)
    message = str(info.value)
    assert message.startswith(f"{options}: recycle_log_file_num=1: ")
    assert "WAL recycling must be off" in message
    # refused before opening: the DB was not changed (no column families created)
    assert list_cf(db) == ["default"]


def test_recycle_zero_is_accepted(tmp_path: Path, opened: list[Store]) -> None:
    db = tmp_path / "db"
    _raw_db(db, recycle=0)
    assert open_store(opened, db).get(b"k") == b"v"


def _set_option(db: Path, key: str, value: str) -> Path:
    path = latest_options_file(db)
    assert path is not None
    lines = path.read_text().splitlines()
    hits = [i for i, line in enumerate(lines) if line.strip().startswith(f"{key}=")]
    assert hits, f"{key} not in {path}"
    for i in hits:
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        lines[i] = f"{indent}{key}={value}"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_wal_compression_is_refused(tmp_path: Path, opened: list[Store]) -> None:
    db = tmp_path / "db"
    open_store(opened, db).close()
    path = _set_option(db, "wal_compression", "kZSTD")
    with pytest.raises(StoreError) as info:
        Store(db, CFS, STORAGE)
    assert str(info.value) == (
        f"{path}: wal_compression=kZSTD: WAL compression must be off "
        "(compressed WAL records cannot be decoded by hacluster)")


def test_only_the_newest_options_file_counts(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir()
    (db / "OPTIONS-000099").write_text("[DBOptions]\n  recycle_log_file_num=4\n")
    (db / "OPTIONS-000100").write_text("[DBOptions]\n  recycle_log_file_num=0\n"
                                       "  wal_compression=kNoCompression\n")
    (db / "OPTIONS-000101.dbtmp").write_text("  recycle_log_file_num=9\n")
    assert latest_options_file(db) == db / "OPTIONS-000100"
    check_wal_options(db)  # no error
    # numeric, not lexicographic, order
    (db / "OPTIONS-1000000").write_text("  wal_compression=kLZ4Compression\n")
    assert latest_options_file(db) == db / "OPTIONS-1000000"
    with pytest.raises(StoreError, match=r"OPTIONS-1000000: wal_compression=kLZ4Compression: "):
        check_wal_options(db)


def test_no_options_file_is_fine(tmp_path: Path) -> None:
    assert latest_options_file(tmp_path / "missing") is None
    check_wal_options(tmp_path / "missing")
    assert latest_options_file(tmp_path) is None


# -- content hash and checkpoints ------------------------------------------------------------

CONTENT = [
    (PUT, "default", b"a", b"1"),
    (PUT, "users", b"u1", b"alice"),
    (PUT, "users", b"u2", b"bob"),
    (PUT, "events", b"e", b""),
]


def test_content_hash_equal_for_equal_content(tmp_path: Path, opened: list[Store]) -> None:
    one = open_store(opened, tmp_path / "one")
    two = open_store(opened, tmp_path / "two")
    one.write(CONTENT)
    for op in CONTENT:  # same content, written as separate batches: same seqs
        two.write([op])
    h1, h2 = one.content_hash(), two.content_hash()
    assert h1["seq"] == h2["seq"] == 2 * len(CONTENT)  # each op and its key's seq record
    # The keys' recorded seqs legitimately differ (one batch stamps all with its last seq,
    # separate batches each with their own), so compare the user column families only.
    assert {cf: h1["column_families"][cf] for cf in CFS} == {
        cf: h2["column_families"][cf] for cf in CFS}
    assert h1["column_families"][SEQ_CF] != h2["column_families"][SEQ_CF]
    assert h1["column_families"][SEQ_CF]["keys"] == h2["column_families"][SEQ_CF]["keys"] == 4
    assert h1["column_families"]["users"]["keys"] == 2
    assert h1["column_families"]["default"]["keys"] == 1
    assert set(h1["column_families"]) == {*CFS, SEQ_CF}
    # the same writes at the same seqs give the same hash, seq records included
    three = open_store(opened, tmp_path / "three")
    three.write(CONTENT)
    assert three.content_hash() == h1


def test_content_hash_differs_for_one_value(tmp_path: Path, opened: list[Store]) -> None:
    one = open_store(opened, tmp_path / "one")
    two = open_store(opened, tmp_path / "two")
    one.write(CONTENT)
    two.write([*CONTENT[:2], (PUT, "users", b"u2", b"bot"), CONTENT[3]])
    h1, h2 = one.content_hash(), two.content_hash()
    assert h1["seq"] == h2["seq"]
    assert h1["column_families"]["users"] != h2["column_families"]["users"]
    assert h1["column_families"]["default"] == h2["column_families"]["default"]
    assert h1["column_families"]["events"] == h2["column_families"]["events"]


def test_content_hash_separates_key_and_value(tmp_path: Path, opened: list[Store]) -> None:
    one = open_store(opened, tmp_path / "one")
    two = open_store(opened, tmp_path / "two")
    one.write([(PUT, "default", b"ab", b"c")])
    two.write([(PUT, "default", b"a", b"bc")])
    assert one.content_hash() != two.content_hash()


def test_checkpoint_reopens_at_its_seq(tmp_path: Path, opened: list[Store]) -> None:
    store = open_store(opened, tmp_path / "db")
    store.write(CONTENT)
    store.write([(DELETE, "default", b"a", b"")])
    target = tmp_path / "cp" / "1"
    (target / "stale").mkdir(parents=True)  # an old dir at the target is replaced
    seq = store.checkpoint(target)
    assert seq == 2 * (len(CONTENT) + 1)  # each op and its key's seq record
    store.write([(PUT, "default", b"after", b"x")])  # not in the checkpoint
    expected = store.content_hash()
    copy = open_store(opened, target)
    assert copy.latest_seq() == seq
    assert copy.column_families == [*CFS, SEQ_CF]
    assert copy.get(b"after") is None
    assert copy.get(b"u1", "users") == b"alice"
    assert not (target / "stale").exists()
    copy.write([(PUT, "default", b"after", b"x")])
    assert copy.content_hash() == expected


def test_close_is_idempotent_and_releases_the_lock(tmp_path: Path, opened: list[Store]) -> None:
    db = tmp_path / "db"
    store = Store(db, CFS, STORAGE)
    store.write([(PUT, "default", b"k", b"v")])
    store.close()
    store.close()
    again = open_store(opened, db)
    assert again.get(b"k") == b"v"
    assert again.latest_seq() == 2  # the op and its key's seq record


def test_a_managed_store_adopts_the_primary_s_column_families_in_order(
        tmp_path: Path, opened: list[Store]) -> None:
    """Managed mode: the service's database gets no column family of hacluster's own (no
    seq records, none from the config); the primary's new ones are created here in its
    order, so ids agree; a list that is not an extension of this one is refused."""
    db_dir = tmp_path / "svc"
    service = rocksdict.Rdict(str(db_dir), rocksdict.Options(raw_mode=True))
    service.close()
    store = Store(db_dir, ["ignored"], STORAGE, managed=True)
    opened.append(store)
    assert store.column_families == ["default"]          # nothing created
    assert store.seq_cf_id == -1                         # so every WAL record is one write
    handles = store.handles_for(["default", "events", "users"])
    assert store.column_families == ["default", "events", "users"] == list_cf(db_dir)
    assert set(handles) == {0, 1, 2}
    with pytest.raises(StoreError, match="not those of the primary"):
        store.handles_for(["default", "users", "events", "more"])
    assert store.column_families == ["default", "events", "users"]


_op_kinds = st.sampled_from([PUT, DELETE, DELETE_RANGE])
_named_op = st.tuples(_op_kinds, st.sampled_from(CFS), st.binary(min_size=1, max_size=4),
                      st.binary(max_size=4)).map(
    lambda t: (t[0], t[1], t[2], t[2] + b"\xff" if t[0] == DELETE_RANGE else
               (t[3] if t[0] == PUT else b"")))


@fuzz_settings(25)
@given(writes=st.lists(st.lists(_named_op, min_size=1, max_size=4), min_size=1, max_size=12),
       cuts=st.lists(st.integers(1, 5), min_size=12, max_size=12))
def test_writes_in_finds_each_write_of_a_replica_s_runs_again(
        tmp_path_factory: pytest.TempPathFactory, writes: list[list[NamedOp]],
        cuts: list[int]) -> None:
    """Whatever runs a replica wrote the primary's writes in, each comes back with the seq its
    writer was answered and its ops (their seq records left out)."""
    root = tmp_path_factory.mktemp("runs")
    origin, replica = Store(root / "origin", CFS, STORAGE), Store(root / "replica", CFS, STORAGE)
    try:
        answered = [origin.write(ops).last_seq for ops in writes]
        apply_as_runs(origin, replica, cuts)
        seq_cf = replica.column_families.index(SEQ_CF)
        with WalReader(replica.db_dir, 1) as reader:
            found = [w for record in reader.read() for w in writes_in(record, seq_cf)]
        ids = {name: n for n, name in enumerate(replica.column_families)}
        assert found == [(last - 2 * len(ops) + 1, last,
                          [(k, ids[cf], key, value) for k, cf, key, value in ops])
                         for last, ops in zip(answered, writes, strict=True)]
    finally:
        origin.close()
        replica.close()


def test_a_record_not_in_the_store_s_layout_is_one_write() -> None:
    """A managed service's record, or one from before seqs were recorded: one write."""
    ops = [(PUT, 0, b"a", b"1"), (PUT, 0, b"b", b"2"), (DELETE, 1, b"c", b"")]
    record = WalBatch(7, 3, ops, 1, 0)
    assert writes_in(record, 3) == [(7, 9, ops)]
    assert writes_in(record, -1) == [(7, 9, ops)]
    # Seq records that do not pair with the ops before them: not Store.write's layout.
    odd = WalBatch(7, 3, [(PUT, 0, b"a", b"1"), (PUT, 3, b"\0a", b"x"), (PUT, 3, b"\0b", b"y")],
                   1, 0)
    assert writes_in(odd, 3) == [(7, 9, [(PUT, 0, b"a", b"1")])]


def test_a_replica_at_a_write_inside_a_run_record_continues_from_its_rest(
        tmp_path: Path, opened: list[Store]) -> None:
    """After a failover the new primary's WAL holds runs it applied as one record; a replica
    that had applied only the first writes of such a run gets the rest of the record from its
    position (``cut_at_start``) and ends with the same contents and seq — no bootstrap."""
    origin = open_store(opened, tmp_path / "origin")
    promoted = open_store(opened, tmp_path / "promoted")
    behind = open_store(opened, tmp_path / "behind")
    for i in range(5):
        origin.write([(PUT, "default", b"k%d" % i, b"v%d" % i), (DELETE, "users", b"u", b"")])
    apply_as_runs(origin, promoted)
    apply_as_runs(origin, behind, [1, 1, 0])
    handles = behind.handles_for(origin.column_families)
    at = behind.latest_seq() + 1
    with pytest.raises(WalNotAtBoundary), \
            WalReader(promoted.db_dir, at, decode_ops=False) as reader:
        reader.read()
    with WalReader(promoted.db_dir, at, decode_ops=False, cut_at_start=True) as reader:
        (rest,) = reader.read()
    assert (rest.seq, rest.last_seq) == (at, promoted.latest_seq())
    behind.commit(behind.prepare(rest.payload, handles), rest.seq, rest.count, sync=False)
    assert behind.latest_seq() == promoted.latest_seq() == origin.latest_seq()
    assert behind.content_hash() == origin.content_hash()

"""Fuzzing the WAL log-record reader and the WalReader on top of it.

Valid log files (from ``encode_records`` and from a real RocksDB database) are damaged by
bit flips, truncation, inserted and removed bytes, zeroed ranges, wrong record types and
lengths past the block, and random bytes are read as logs. Whatever the damage, the reader:

- hands out exactly the records that lie wholly before the damage, at their own offsets, and
  never a damaged record as good;
- otherwise raises ``WalCorruption``/``WalUnsupported`` naming the file and an offset inside
  it, and raises it again on the next call (it never skips past it);
- terminates within a bounded number of calls and bounded time.

``HACLUSTER_FUZZ_EXAMPLES=N`` multiplies every example count here by N (for long hunts).
"""

from __future__ import annotations

import itertools
import random
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import crc32c
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT, WalBatch, encode_batch
from hacluster.wal.errors import WalCorruption, WalError, WalGone, WalUnsupported
from hacluster.wal.reader import WalReader, log_file_name
from hacluster.wal.records import (
    BLOCK_SIZE,
    HEADER_SIZE,
    LogRecordReader,
    encode_records,
    mask_crc,
)
from tests.fuzzing import fuzz_settings, time_limit


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-wal")


# -- building valid logs -----------------------------------------------------------------------


@dataclass
class Log:
    data: bytes
    payloads: list[bytes]
    offsets: list[int]    # file offset of each record's first fragment
    ends: list[int]       # file offset just past each record's last fragment


def build_log(payloads: list[bytes]) -> Log:
    data = b""
    offsets, ends = [], []
    for payload in payloads:
        start = len(data)
        if BLOCK_SIZE - start % BLOCK_SIZE < HEADER_SIZE:
            start += BLOCK_SIZE - start % BLOCK_SIZE  # trailer padding comes first
        data += encode_records([payload], start_offset=len(data))
        offsets.append(start)
        ends.append(len(data))
    assert data == encode_records(payloads)
    return Log(data, payloads, offsets, ends)


@st.composite
def payload_lists(draw: st.DrawFn, max_records: int = 6) -> list[bytes]:
    """Payloads whose layout hits every case: tiny and empty records, records that fill a
    block exactly or leave 0..HEADER_SIZE bytes of trailer, and records fragmented over
    several blocks."""
    seed = draw(st.integers(0, 2**32 - 1))
    rnd = random.Random(seed)
    out: list[bytes] = []
    used = 0
    for _ in range(draw(st.integers(1, max_records))):
        how = draw(st.sampled_from(["small", "medium", "fill", "span"]))
        left = BLOCK_SIZE - used % BLOCK_SIZE
        if left < HEADER_SIZE:
            left = BLOCK_SIZE
        if how == "small":
            size = draw(st.integers(0, 40))
        elif how == "medium":
            size = draw(st.integers(100, 4000))
        elif how == "fill":
            # Leave 0..HEADER_SIZE+1 bytes in the block after this record.
            size = max(0, left - HEADER_SIZE - draw(st.integers(0, HEADER_SIZE + 1)))
        else:
            size = draw(st.integers(BLOCK_SIZE - 50, 2 * BLOCK_SIZE + 50))
        payload = rnd.randbytes(size)
        out.append(payload)
        used = len(encode_records(out))
    return out


# -- damage ------------------------------------------------------------------------------------


def header_positions(log: Log) -> list[int]:
    """File offsets of every physical record header (all fragments)."""
    out, pos = [], 0
    data = log.data
    while pos + HEADER_SIZE <= len(data):
        left = BLOCK_SIZE - pos % BLOCK_SIZE
        if left < HEADER_SIZE:
            pos += left
            continue
        _, length, rtype = struct.unpack_from("<IHB", data, pos)
        if rtype == 0 and length == 0:
            break
        out.append(pos)
        pos += HEADER_SIZE + length
    return out


def interesting_positions(log: Log) -> list[int]:
    """Record starts and ends, header fields, block boundaries, the end of the file: where
    an off-by-one in the reader would show."""
    n = len(log.data)
    points = {0, n}
    for h in header_positions(log):
        points.update({h, h + 4, h + 6, h + HEADER_SIZE})
    points.update(log.ends)
    for b in range(BLOCK_SIZE, n + BLOCK_SIZE, BLOCK_SIZE):
        points.update(range(b - HEADER_SIZE, b + 2))
    return sorted(p for p in points if 0 <= p <= n)


@dataclass
class Damage:
    kind: str
    data: bytes
    first: int          # first changed byte: records ending at or before it are intact
    recrc: bool = False  # the damage was given a valid checksum (a structural lie)


@st.composite
def damaged(draw: st.DrawFn, log: Log) -> Damage:
    data = log.data
    n = len(data)
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "remove", "zero", "retype",
                                 "retype_recrc", "relength", "relength_recrc", "garbage"]))

    def position(upper: int) -> int:
        spots = [p for p in interesting_positions(log) if p <= upper]
        if spots and draw(st.booleans()):
            return draw(st.sampled_from(spots))
        return draw(st.integers(0, upper))

    if kind == "flip":
        pos = position(n - 1)
        return Damage(kind, data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))])
                      + data[pos + 1:], pos)
    if kind == "truncate":
        pos = position(n - 1)
        return Damage(kind, data[:pos], pos)
    if kind == "insert":
        pos = position(n)
        blob = draw(st.binary(min_size=1, max_size=12) | st.just(b"\x00" * 7))
        return Damage(kind, data[:pos] + blob + data[pos:], pos)
    if kind == "remove":
        pos = position(n - 1)
        count = draw(st.integers(1, 12))
        return Damage(kind, data[:pos] + data[pos + count:], pos)
    if kind == "zero":
        pos = position(n - 1)
        count = draw(st.integers(1, 2 * HEADER_SIZE))
        end = min(n, pos + count)
        return Damage(kind, data[:pos] + b"\x00" * (end - pos) + data[end:], pos)
    if kind == "garbage":
        pos = position(n)
        blob = random.Random(draw(st.integers(0, 2**32))).randbytes(draw(st.integers(1, 3000)))
        return Damage(kind, data[:pos] + blob, pos)
    # Header surgery on one physical record.
    h = draw(st.sampled_from(header_positions(log)))
    crc, length, rtype = struct.unpack_from("<IHB", data, h)
    if kind.startswith("retype"):
        rtype = draw(st.integers(0, 255).filter(lambda t: t != rtype))
    else:
        length = draw(st.integers(length + 1, 0xFFFF) | st.integers(0, max(0, length - 1)))
    recrc = kind.endswith("_recrc")
    if recrc:
        body = data[h + HEADER_SIZE:h + HEADER_SIZE + length]
        crc = mask_crc(crc32c.crc32c(bytes([rtype & 0xFF]) + body))
    return Damage(kind, data[:h] + struct.pack("<IHB", crc, length, rtype) + data[h + 7:], h,
                  recrc)


# -- reading -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    records: list[tuple[int, bytes]]
    error: WalError | None
    reader_offset: int


def read_everything(path: Path, *, max_records: int | None, max_bytes: int | None,
                    size: int) -> Outcome:
    """Drain a reader; it must stop within as many calls as it has records (+1)."""
    got: list[tuple[int, bytes]] = []
    error: WalError | None = None
    calls = 0
    with time_limit(20), LogRecordReader(path, log_number=1) as rr:
        try:
            while True:
                batch = rr.read_records(max_bytes, max_records=max_records)
                if not batch:
                    break
                calls += 1
                got += batch
                assert calls <= size // HEADER_SIZE + 2, "the reader is not making progress"
        except (WalCorruption, WalUnsupported) as exc:
            error = exc
            # Sticky: the next call starts at the same bad record and raises again.
            with pytest.raises(type(exc)) as again:
                rr.read_records()
            assert again.value.offset == exc.offset
        offset = rr.offset
    return Outcome(got, error, offset)


def check_error(error: WalError, path: Path, size: int, reader_offset: int) -> None:
    assert error.path == str(path)
    assert 0 <= error.offset < size
    assert reader_offset <= error.offset
    text = str(error)
    assert str(path) in text and f"at offset {error.offset}:" in text
    assert error.detail


def check_damaged_log(path: Path, log: Log, damage: Damage, max_records: int | None,
                      max_bytes: int | None) -> Outcome:
    path.write_bytes(damage.data)
    out = read_everything(path, max_records=max_records, max_bytes=max_bytes,
                          size=len(damage.data))
    originals = list(zip(log.offsets, log.payloads, strict=True))
    intact = sum(1 for end in log.ends if end <= damage.first)
    if damage.recrc:
        # A lie with a valid checksum can pass as a (shorter) record; but what comes before
        # the lie is handed out unchanged, and nothing from after it survives unnoticed
        # unless the reader actually re-synchronised on the original records.
        assert out.records[:intact] == originals[:intact]
    elif damage.kind in ("insert", "remove"):
        # Bytes added or taken away can remove or shift whole records (a log that simply has
        # one record less: the WalReader's sequence check catches that). What comes out is
        # still only original records, in order, all those before the damage included.
        assert out.records[:intact] == originals[:intact], damage.kind
        remaining = iter(log.payloads)
        assert all(any(p == q for q in remaining) for _, p in out.records), damage.kind
    else:
        # Never a damaged record: a prefix of the originals, at their own offsets...
        assert out.records == originals[:len(out.records)], damage.kind
        # ... that includes every record lying wholly before the damage.
        assert len(out.records) >= intact, (damage.kind, damage.first)
    if out.error is not None:
        check_error(out.error, path, len(damage.data), out.reader_offset)
    return out


limits = st.sampled_from([(None, None), (1, None), (None, 1), (3, 5000)])


@fuzz_settings(250)
@given(payloads=payload_lists(), data=st.data(), limit=limits)
def test_damaged_log_yields_intact_prefix_or_a_located_error(
        scratch: Path, payloads: list[bytes], data: st.DataObject,
        limit: tuple[int | None, int | None]) -> None:
    log = build_log(payloads)
    damage = data.draw(damaged(log), label="damage")
    check_damaged_log(scratch / "000001.log", log, damage, *limit)


def test_a_removed_whole_record_leaves_a_valid_shorter_log(scratch: Path) -> None:
    """From the long run: removing exactly the 7 bytes of an empty record leaves a log that
    is valid and one record shorter; the record level cannot tell (the batch sequence check
    does: see test_walreader_over_damaged_logs)."""
    log = build_log([b"", b"payload"])
    damage = Damage("remove", log.data[HEADER_SIZE:], 0)
    out = check_damaged_log(scratch / "000006.log", log, damage, None, None)
    assert out.records == [(0, b"payload")] and out.error is None


@fuzz_settings(60)
@given(payloads=payload_lists(max_records=4), data=st.data())
def test_damage_then_repair_of_a_live_log(scratch: Path, payloads: list[bytes],
                                          data: st.DataObject) -> None:
    """A log read while it grows, in random steps, gives each intact record exactly once and
    never one past the damage."""
    log = build_log(payloads)
    damage = data.draw(damaged(log), label="damage")
    if damage.recrc:
        return
    path = scratch / "000002.log"
    path.write_bytes(b"")
    steps = data.draw(st.lists(st.integers(1, len(damage.data) + 1), max_size=6), label="steps")
    cuts = sorted({min(s, len(damage.data)) for s in steps} | {len(damage.data)})
    got: list[tuple[int, bytes]] = []
    error: WalError | None = None
    with time_limit(20), LogRecordReader(path) as rr, open(path, "ab", buffering=0) as f:
        written = 0
        for cut in cuts:
            f.write(damage.data[written:cut])
            written = cut
            try:
                while batch := rr.read_records():
                    got += batch
            except (WalCorruption, WalUnsupported) as exc:
                error = exc
                break
    originals = list(zip(log.offsets, log.payloads, strict=True))
    intact = sum(1 for end in log.ends if end <= damage.first)
    assert got[:intact] == originals[:intact]
    if damage.kind in ("insert", "remove"):  # whole records may go missing or move
        remaining = iter(log.payloads)
        assert all(any(p == q for q in remaining) for _, p in got)
    else:
        assert got == originals[:len(got)]
    if error is not None:
        check_error(error, path, len(damage.data), 0)


def reference_read(data: bytes) -> tuple[list[tuple[int, bytes]], tuple[str, int] | None]:
    """A plain re-statement of the log format, record by record: the records a reader must
    hand out, and the error ``(kind, offset)`` it must then raise (None: it just stops)."""
    out: list[tuple[int, bytes]] = []
    pos, n = 0, len(data)
    frag_start, frags = -1, b""
    while True:
        left = BLOCK_SIZE - pos % BLOCK_SIZE
        if left < HEADER_SIZE:
            if pos + left > n:
                return out, None
            pos += left
            continue
        if pos + HEADER_SIZE > n:
            return out, None
        crc, length, rtype = struct.unpack_from("<IHB", data, pos)
        if rtype > 4:
            return out, ("unsupported", pos)
        if rtype == 0:
            return out, None if (crc, length) == (0, 0) else ("corrupt", pos)
        if HEADER_SIZE + length > left:
            return out, ("corrupt", pos)
        if pos + HEADER_SIZE + length > n:
            return out, None
        payload = data[pos + HEADER_SIZE:pos + HEADER_SIZE + length]
        if mask_crc(crc32c.crc32c(bytes([rtype]) + payload)) != crc:
            return out, ("corrupt", pos)
        if rtype in (1, 2) and frag_start >= 0:
            return out, ("corrupt", pos)
        if rtype in (3, 4) and frag_start < 0:
            return out, ("corrupt", pos)
        if rtype == 1:
            out.append((pos, payload))
        elif rtype == 2:
            frag_start, frags = pos, payload
        elif rtype == 3:
            frags += payload
        else:
            out.append((frag_start, frags + payload))
            frag_start, frags = -1, b""
        pos += HEADER_SIZE + length


@st.composite
def physical_logs(draw: st.DrawFn) -> bytes:
    """Random sequences of physical records: any order of types, mostly valid checksums,
    trailers of zeros or garbage, lengths that fill, nearly fill or overrun a block."""
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    out = bytearray()
    for _ in range(draw(st.integers(0, 14))):
        left = BLOCK_SIZE - len(out) % BLOCK_SIZE
        if left < HEADER_SIZE:
            out += b"\x00" * left if draw(st.booleans()) else rnd.randbytes(left)
            continue
        rtype = draw(st.sampled_from([1, 1, 1, 2, 2, 3, 3, 4, 4, 0, 5, 9, 130, 255]))
        how = draw(st.sampled_from(["small", "small", "fill", "big", "overrun"]))
        if how == "small":
            length = draw(st.integers(0, 30))
        elif how == "fill":
            length = max(0, left - HEADER_SIZE - draw(st.integers(0, HEADER_SIZE + 2)))
        elif how == "big":
            length = draw(st.integers(0, max(0, left - HEADER_SIZE)))
        else:
            length = min(0xFFFF, left - HEADER_SIZE + draw(st.integers(1, 100)))
        payload = rnd.randbytes(min(length, max(0, left - HEADER_SIZE)))
        if draw(st.integers(0, 15)) == 0:
            crc = rnd.getrandbits(32)
        else:
            crc = mask_crc(crc32c.crc32c(bytes([rtype]) + payload[:length]))
        if rtype == 0 and draw(st.booleans()):
            crc, length, payload = 0, 0, b""
        out += struct.pack("<IHB", crc, length, rtype) + payload
    if out and draw(st.booleans()):
        del out[draw(st.integers(0, len(out) - 1)):]
    return bytes(out)


@fuzz_settings(400)
@given(blob=physical_logs() | st.binary(max_size=3 * HEADER_SIZE + 64),
       limit=st.sampled_from([None, 1, 2]))
@example(blob=b"\x00" * HEADER_SIZE, limit=None)                     # a zero header: nothing yet
@example(blob=struct.pack("<IHB", 0, 5, 0) + b"12345", limit=None)   # zero type, a length
@example(blob=struct.pack("<IHB", 1, 0xFFFF, 1), limit=None)         # length past the block
@example(blob=b"\xff" * (BLOCK_SIZE + 7), limit=1)
def test_random_records_match_the_reference_reader(scratch: Path, blob: bytes,
                                                   limit: int | None) -> None:
    path = scratch / "000003.log"
    path.write_bytes(blob)
    out = read_everything(path, max_records=limit, max_bytes=None, size=len(blob))
    records, error = reference_read(blob)
    assert out.records == records
    if error is None:
        assert out.error is None
    else:
        kind = WalUnsupported if error[0] == "unsupported" else WalCorruption
        assert type(out.error) is kind and out.error.offset == error[1], out.error
        check_error(out.error, path, len(blob), out.reader_offset)


def test_corpus_logs(scratch: Path) -> None:
    """Logs kept from fuzzing sessions (tests/fuzz_regressions/records): the reader gives the
    reference reader's records, then its error."""
    corpus = sorted((Path(__file__).parent / "fuzz_regressions" / "records").glob("*.log"))
    assert corpus
    for source in corpus:
        blob = source.read_bytes()
        path = scratch / "000009.log"
        path.write_bytes(blob)
        out = read_everything(path, max_records=None, max_bytes=None, size=len(blob))
        records, error = reference_read(blob)
        assert out.records == records, source
        assert error is not None and out.error is not None and out.error.offset == error[1]


def test_every_truncation_and_every_flipped_byte_of_a_small_log(scratch: Path) -> None:
    """Exhaustive over a three-record log with a fragmented record and a trailer."""
    rnd = random.Random(11)
    log = build_log([rnd.randbytes(10), rnd.randbytes(BLOCK_SIZE - 30), rnd.randbytes(40)])
    path = scratch / "000004.log"
    start = time.monotonic()
    for pos in interesting_positions(log)[:-1]:
        check_damaged_log(path, log, Damage("truncate", log.data[:pos], pos), None, None)
        flipped = log.data[:pos] + bytes([log.data[pos] ^ 0x80]) + log.data[pos + 1:]
        check_damaged_log(path, log, Damage("flip", flipped, pos), None, None)
    assert time.monotonic() - start < 30


# -- a real RocksDB log ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    """The WAL of a real rocksdict database: small and large batches, across blocks."""
    from rocksdict import Options, Rdict, WriteBatch

    path = tmp_path_factory.mktemp("fuzz-real-wal") / "db"
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    db = Rdict(str(path), opts)
    rnd = random.Random(5)
    for i in range(40):
        wb = WriteBatch(raw_mode=True)
        for j in range(rnd.choice([1, 1, 3, 10])):
            wb.put(b"k%03d-%d" % (i, j), rnd.randbytes(rnd.choice([0, 10, 900, 40000])))
        if i % 7 == 3:
            wb.delete(b"k%03d-0" % (i - 1))
        db.write(wb)
    logs = sorted(path.glob("*.log"))
    data = logs[-1].read_bytes()
    db.close()
    del db
    copy = path.parent / "real.log"
    copy.write_bytes(data)
    with LogRecordReader(copy) as rr:
        records = rr.read_records()
    offsets = [o for o, _ in records]
    payloads = [p for _, p in records]
    ends = [*offsets[1:], len(data)]
    # ends[i] is where record i+1 starts; a trailer before it belongs to no record: fine for
    # "records wholly before the damage" (it only makes the bound a little stricter).
    assert len(records) == 40 and len(data) > 4 * BLOCK_SIZE
    return Log(data, payloads, offsets, ends)


@fuzz_settings(120)
@given(data=st.data(), limit=limits)
def test_damaged_real_rocksdb_log(scratch: Path, real_log: Log, data: st.DataObject,
                                  limit: tuple[int | None, int | None]) -> None:
    damage = data.draw(damaged(real_log), label="damage")
    check_damaged_log(scratch / "000005.log", real_log, damage, *limit)


# -- WalReader over a directory of logs ----------------------------------------------------------


def make_batches(seed: int, n: int) -> list[bytes]:
    rnd = random.Random(seed)
    seq = 1
    out = []
    for _ in range(n):
        ops = []
        for _ in range(rnd.choice([1, 1, 2, 7])):
            r = rnd.random()
            key = b"k%d" % rnd.randrange(50)
            if r < 0.7:
                ops.append((PUT, rnd.choice([0, 1]), key,
                            rnd.randbytes(rnd.choice([0, 5, 300, 9000, 40000]))))
            elif r < 0.9:
                ops.append((DELETE, 0, key, b""))
            else:
                ops.append((DELETE_RANGE, 1, key, key + b"\xff"))
        out.append(encode_batch(seq, ops))
        seq += len(ops)
    return out


def expected_batches(payloads: list[bytes]) -> list[tuple[int, int, bytes]]:
    return [(struct.unpack_from("<Q", p)[0], struct.unpack_from("<I", p, 8)[0], p)
            for p in payloads]


def drain(reader: WalReader, limit: int) -> tuple[list[WalBatch], BaseException | None]:
    got: list[WalBatch] = []
    calls = 0
    with time_limit(20):
        try:
            while batch := reader.read(max_batches=limit, max_bytes=limit * 20000):
                got += batch
                calls += 1
                assert calls < 1000, "the WalReader is not making progress"
        except (WalError, WalGone) as exc:
            with pytest.raises(type(exc)):  # the error sticks
                reader.read()
            return got, exc
    return got, None


@fuzz_settings(120)
@given(seed=st.integers(0, 2**32), n=st.integers(2, 12), data=st.data(),
       limit=st.sampled_from([1, 3, 1000]))
def test_walreader_over_damaged_logs(scratch: Path, seed: int, n: int, data: st.DataObject,
                                     limit: int) -> None:
    """Batches split over two or three logs; one log damaged. The reader hands out batches
    equal to the originals, in order from the start, and then either stops (a torn or
    zeroed tail of the last log) or raises a WAL error; never a damaged batch."""
    payloads = make_batches(seed, n)
    cut_points = sorted(data.draw(st.sets(st.integers(1, n - 1), max_size=2), label="cuts"))
    groups = [payloads[a:b] for a, b in zip([0, *cut_points], [*cut_points, n], strict=True)]
    db = scratch / "walreader"
    shutil.rmtree(db, ignore_errors=True)
    db.mkdir()
    logs = []
    for i, group in enumerate(groups):
        log = build_log(group)
        logs.append(log)
        (db / log_file_name(10 + i)).write_bytes(log.data)
    victim = data.draw(st.integers(0, len(groups) - 1), label="victim")
    damage = data.draw(damaged(logs[victim]), label="damage")
    (db / log_file_name(10 + victim)).write_bytes(damage.data)
    with WalReader(db, 1) as reader:
        got, error = drain(reader, limit)
    expected = expected_batches(payloads)
    shown = [(b.seq, b.count, b.payload) for b in got]
    if damage.recrc:
        before = sum(len(g) for g in groups[:victim])
        intact = before + sum(1 for e in logs[victim].ends if e <= damage.first)
        assert shown[:intact] == expected[:intact]
        for b in got:  # whatever passed is a well-formed batch in sequence
            assert b.seq >= 1
    else:
        assert shown == expected[:len(shown)]
        before = sum(len(g) for g in groups[:victim])
        intact = before + sum(1 for e in logs[victim].ends if e <= damage.first)
        assert len(shown) >= intact
    if isinstance(error, WalError):
        assert error.path.startswith(str(db))
        assert str(error.path) in str(error)
    elif error is not None and not damage.recrc:
        # "Gone" only when the oldest log looks empty or unfinished (cut or zeroed inside
        # its first record): a damaged first record is corruption, wherever it is.
        assert isinstance(error, WalGone)
        assert victim == 0 and damage.first < logs[0].ends[0], error


@fuzz_settings(100)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 6), data=st.data())
def test_walreader_over_rewritten_batches(scratch: Path, seed: int, n: int,
                                          data: st.DataObject) -> None:
    """WriteBatch payloads mutated *before* framing (so every record checksum is valid): the
    reader either raises a WAL error or hands out batches that decode exactly as
    ``decode_batch`` says, in contiguous sequence order."""
    from hacluster.wal.batch import decode_batch

    payloads = make_batches(seed, n)
    victim = data.draw(st.integers(0, n - 1), label="victim")
    p = bytearray(payloads[victim])
    how = data.draw(st.sampled_from(["flip", "truncate", "extend", "count", "seq"]), label="how")
    if how == "flip":
        pos = data.draw(st.integers(0, len(p) - 1))
        p[pos] ^= data.draw(st.integers(1, 255))
    elif how == "truncate":
        del p[data.draw(st.integers(0, len(p) - 1)):]
    elif how == "extend":
        p += data.draw(st.binary(min_size=1, max_size=20))
    elif how == "count":
        struct.pack_into("<I", p, 8, data.draw(st.integers(0, 2**32 - 1)))
    else:
        struct.pack_into("<Q", p, 0, data.draw(st.integers(0, 2**64 - 1)))
    payloads[victim] = bytes(p)
    db = scratch / "rewritten"
    shutil.rmtree(db, ignore_errors=True)
    db.mkdir()
    (db / log_file_name(7)).write_bytes(build_log(payloads).data)
    with WalReader(db, 1) as reader:
        got, error = drain(reader, 1000)
    with WalReader(db, 1, decode_ops=False) as fast:
        got_fast, error_fast = drain(fast, 1000)
    # decode_ops=False validates with the C checker (when built): same verdicts.
    assert [(b.seq, b.count) for b in got] == [(b.seq, b.count) for b in got_fast]
    assert type(error) is type(error_fast)
    for prev, cur in itertools.pairwise(got):
        assert cur.seq == prev.seq + prev.count
    for b in got:
        assert b.ops == decode_batch(b.payload).ops
    remaining = iter(payloads)  # what is handed out is the logged batches, in order
    assert all(any(b.payload == q for q in remaining) for b in got)


# -- regressions -------------------------------------------------------------------------------


def two_logs(db: Path) -> tuple[bytes, bytes]:
    shutil.rmtree(db, ignore_errors=True)
    db.mkdir()
    first = build_log([encode_batch(1, [(PUT, 0, b"a", b"1")])]).data
    second = build_log([encode_batch(2, [(PUT, 0, b"b", b"2")]),
                        encode_batch(3, [(PUT, 0, b"c", b"3")])]).data
    (db / log_file_name(10)).write_bytes(first)
    (db / log_file_name(11)).write_bytes(second)
    return first, second


@pytest.mark.parametrize("rtype", [8, 3])
def test_regression_a_damaged_newer_log_does_not_hide_older_batches(scratch: Path,
                                                                    rtype: int) -> None:
    """Found by test_walreader_over_damaged_logs: an unsupported or impossible type in the
    first header of log 11 made positioning raise before log 10 (holding the requested seq)
    was read at all. Now log 10's batch comes first and the error is raised at log 11."""
    db = scratch / "regression-hidden"
    _, second = two_logs(db)
    damaged = bytearray(second)
    damaged[6] = rtype
    (db / log_file_name(11)).write_bytes(bytes(damaged))
    with WalReader(db, 1) as reader:
        got, error = drain(reader, 1000)
    assert [(b.seq, b.ops) for b in got] == [(1, [(PUT, 0, b"a", b"1")])]
    assert isinstance(error, WalUnsupported if rtype == 8 else WalCorruption)
    assert error.path == str(db / log_file_name(11)) and error.offset == 0
    # Asking for a sequence number that can only be in the damaged log: its error, not "gone".
    with WalReader(db, 2) as reader, pytest.raises(
            WalUnsupported if rtype == 8 else WalCorruption):
        reader.read()


def test_regression_a_flipped_first_sequence_number_is_corruption_not_gone(
        scratch: Path) -> None:
    """Found by test_walreader_over_damaged_logs: the first batch header of a log was trusted
    without its checksum, so a flipped bit in its sequence number reported the data as gone
    (a replica would re-bootstrap) or sent the reader to the wrong log."""
    db = scratch / "regression-first-seq"
    first, _ = two_logs(db)
    damaged = bytearray(first)
    damaged[HEADER_SIZE] ^= 0x04  # seq 1 -> 5: "older than the oldest retained data"
    (db / log_file_name(10)).write_bytes(bytes(damaged))
    with WalReader(db, 1) as reader, pytest.raises(WalCorruption) as info:
        reader.read()
    assert not isinstance(info.value, WalGone)
    assert str(info.value) == (f"corrupt WAL record in {db / log_file_name(10)} at offset 0: "
                               "checksum mismatch")


def test_a_first_record_still_being_written_is_waited_for(scratch: Path) -> None:
    db = scratch / "first-record-partial"
    shutil.rmtree(db, ignore_errors=True)
    db.mkdir()
    data = build_log([encode_batch(1, [(PUT, 0, b"k", b"v" * 500)])]).data
    path = db / log_file_name(4)
    path.write_bytes(data[:100])
    with WalReader(db, 1) as reader:
        assert reader.read() == []
        path.write_bytes(data)
        assert [b.seq for b in reader.read()] == [1]

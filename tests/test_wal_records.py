"""RocksDB log record format: round trips, live growth, corruption, unsupported types."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import crc32c
import pytest

from hacluster.wal.errors import WalCorruption, WalUnsupported
from hacluster.wal.records import (
    BLOCK_SIZE,
    HEADER_SIZE,
    LogRecordReader,
    encode_records,
    mask_crc,
    unmask_crc,
    write_log_file,
)


def _expected_offsets(payloads: list[bytes]) -> list[int]:
    """Offset of each record's first fragment, computed from the encoded prefix."""
    offsets = []
    for i in range(len(payloads)):
        off = len(encode_records(payloads[:i]))
        left = BLOCK_SIZE - off % BLOCK_SIZE
        if left < HEADER_SIZE:
            off += left
        offsets.append(off)
    return offsets


def _record(rtype: int, payload: bytes) -> bytes:
    crc = mask_crc(crc32c.crc32c(bytes([rtype]) + payload))
    return struct.pack("<IHB", crc, len(payload), rtype) + payload


def _payloads() -> list[bytes]:
    """Records that exercise every layout case of the writer."""
    rnd = random.Random(7)
    out = [rnd.randbytes(n) for n in (0, 1, 100, 5000)]
    used = len(encode_records(out))
    # Leave exactly 3 bytes in the block: they become trailer padding.
    out.append(rnd.randbytes(BLOCK_SIZE - used - HEADER_SIZE - 3))
    out.append(rnd.randbytes(200))  # starts at the next block
    used = len(encode_records(out))
    # Leave exactly HEADER_SIZE bytes: the next record gets an empty FIRST fragment.
    out.append(rnd.randbytes(BLOCK_SIZE - used % BLOCK_SIZE - 2 * HEADER_SIZE))
    out.append(rnd.randbytes(1000))
    out.append(rnd.randbytes(3 * BLOCK_SIZE + 123))  # FIRST, MIDDLE, MIDDLE, LAST
    used = len(encode_records(out))
    # Fill the block exactly: no padding, next record at the block start.
    out.append(rnd.randbytes(BLOCK_SIZE - used % BLOCK_SIZE - HEADER_SIZE))
    out.append(rnd.randbytes(50))
    return out


def test_mask_crc() -> None:
    # RocksDB's util/crc32c_test.cc vector and mask properties.
    crc = crc32c.crc32c(b"123456789")
    assert crc == 0xE3069283
    assert mask_crc(crc) != crc
    assert mask_crc(mask_crc(crc)) != mask_crc(crc)
    assert unmask_crc(mask_crc(crc)) == crc
    assert unmask_crc(unmask_crc(mask_crc(mask_crc(crc)))) == crc
    for value in (0, 1, 0xFFFFFFFF, 0x80000000, 0xA282EAD8):
        assert 0 <= mask_crc(value) <= 0xFFFFFFFF
        assert unmask_crc(mask_crc(value)) == value


def test_round_trip(tmp_path: Path) -> None:
    payloads = _payloads()
    path = tmp_path / "000001.log"
    write_log_file(path, payloads)
    data = path.read_bytes()
    assert len(data) > 5 * BLOCK_SIZE
    with LogRecordReader(path, log_number=1) as rr:
        records = rr.read_records()
        assert [p for _, p in records] == payloads
        assert [o for o, _ in records] == _expected_offsets(payloads)
        assert rr.offset == len(data)
        assert rr.read_records() == []
        assert rr.log_number == 1


def test_small_reads_and_limits(tmp_path: Path) -> None:
    payloads = _payloads()
    path = tmp_path / "000001.log"
    write_log_file(path, payloads)
    got: list[bytes] = []
    with LogRecordReader(path) as rr:
        while batch := rr.read_records(max_records=2):
            assert 1 <= len(batch) <= 2
            got += [p for _, p in batch]
    assert got == payloads
    got = []
    with LogRecordReader(path) as rr:
        while batch := rr.read_records(max_bytes=1):
            # Stops at the first record that reaches the budget, but always
            # returns at least one.
            assert sum(len(p) for _, p in batch[:-1]) < 1
            got += [p for _, p in batch]
    assert got == payloads


def test_growing_file_every_length(tmp_path: Path) -> None:
    """Append the file one byte at a time: at every length the reader returns
    exactly the records that are complete, each once, in order."""
    rnd = random.Random(3)
    sizes = [10, 0, 300, BLOCK_SIZE - 400, 20, 40000, 5]
    payloads = [rnd.randbytes(n) for n in sizes]
    data = encode_records(payloads)
    ends = [len(encode_records(payloads[: i + 1])) for i in range(len(payloads))]
    offsets = _expected_offsets(payloads)
    path = tmp_path / "000002.log"
    path.write_bytes(b"")
    got: list[tuple[int, bytes]] = []
    with open(path, "ab", buffering=0) as f, LogRecordReader(path) as rr:
        for length in range(1, len(data) + 1):
            f.write(data[length - 1 : length])
            got += rr.read_records()
            complete = sum(1 for e in ends if e <= length)
            assert len(got) == complete, length
        assert got == list(zip(offsets, payloads, strict=True))


def test_truncated_at_every_length_then_completed(tmp_path: Path) -> None:
    """A fresh reader on a file cut at any length returns only the complete
    records; once the rest is written, the next call returns the remainder."""
    rnd = random.Random(5)
    payloads = [rnd.randbytes(n) for n in (3, 0, 700, BLOCK_SIZE - 750, 40, 33000, 9)]
    data = encode_records(payloads)
    ends = [len(encode_records(payloads[: i + 1])) for i in range(len(payloads))]
    path = tmp_path / "000003.log"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    os.pwrite(fd, data, 0)
    try:
        # The previous iteration left the whole file written, so cutting it is
        # enough to get data[:cut].
        for cut in range(len(data) + 1):
            os.ftruncate(fd, cut)
            with LogRecordReader(path) as rr:
                first = [p for _, p in rr.read_records()]
                complete = sum(1 for e in ends if e <= cut)
                assert first == payloads[:complete], cut
                assert rr.offset <= cut
                os.pwrite(fd, data[cut:], cut)
                rest = [p for _, p in rr.read_records()]
                assert first + rest == payloads, cut
    finally:
        os.close(fd)


def test_zero_filled_tail_is_not_yet(tmp_path: Path) -> None:
    """Preallocated (zeroed) space after the data reads as "nothing more yet", and
    records written over it later are picked up."""
    a = encode_records([b"first"])
    b = encode_records([b"second", b"x" * 40000], start_offset=len(a))
    path = tmp_path / "000004.log"
    path.write_bytes(a + b"\x00" * (len(b) + 100))
    with LogRecordReader(path) as rr:
        assert [p for _, p in rr.read_records()] == [b"first"]
        assert rr.read_records() == []
        assert rr.offset == len(a)
        with open(path, "r+b") as f:
            f.seek(len(a))
            f.write(b)
        assert [p for _, p in rr.read_records()] == [b"second", b"x" * 40000]


def _drain(rr: LogRecordReader, got: list[bytes] | None = None) -> None:
    """Read until nothing more is returned (or an error is raised)."""
    while records := rr.read_records():
        if got is not None:
            got += [p for _, p in records]


def _flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_payload_byte_is_corruption(tmp_path: Path) -> None:
    payloads = [b"a" * 100, b"b" * 200, b"c" * 300]
    path = tmp_path / "000012.log"
    write_log_file(path, payloads)
    offsets = _expected_offsets(payloads)
    _flip(path, offsets[1] + HEADER_SIZE + 50)
    got: list[bytes] = []
    with LogRecordReader(path) as rr:
        with pytest.raises(WalCorruption) as info:
            _drain(rr, got)
        # The good record before the bad one is handed out first.
        assert got == payloads[:1]
        assert rr.offset == offsets[1]
    assert info.value.path == str(path)
    assert info.value.offset == offsets[1]
    assert str(info.value) == (
        f"corrupt WAL record in {path} at offset {offsets[1]}: checksum mismatch"
    )


def test_flipped_byte_in_later_fragment_names_that_fragment(tmp_path: Path) -> None:
    path = tmp_path / "000013.log"
    write_log_file(path, [b"x" * 10, b"y" * (2 * BLOCK_SIZE)])
    _flip(path, BLOCK_SIZE + HEADER_SIZE + 10)  # inside the MIDDLE fragment
    with LogRecordReader(path) as rr, pytest.raises(WalCorruption) as info:
        _drain(rr)
    assert info.value.offset == BLOCK_SIZE
    assert "checksum mismatch" in str(info.value)


def test_flipped_type_or_length_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "000014.log"
    write_log_file(path, [b"a" * 100, b"b" * 100])
    good = path.read_bytes()
    second = HEADER_SIZE + 100
    # Length byte: the record now claims more or less than was written.
    bad = bytearray(good)
    bad[second + 4] ^= 0x01
    path.write_bytes(bytes(bad))
    with LogRecordReader(path) as rr:
        assert [p for _, p in rr.read_records()] == [b"a" * 100]
        try:
            assert rr.read_records() == []
        except WalCorruption as exc:
            assert exc.offset == second
        else:
            # Claiming one byte more than the file has is indistinguishable from
            # a record still being written.
            assert bad[second + 4] == 101
    bad = bytearray(good)
    bad[second + 6] = 3  # FULL -> MIDDLE: CRC covers the type byte
    path.write_bytes(bytes(bad))
    with LogRecordReader(path) as rr, pytest.raises(WalCorruption, match="checksum"):
        _drain(rr)


def test_structural_corruption(tmp_path: Path) -> None:
    path = tmp_path / "000015.log"
    path.write_bytes(_record(3, b"orphan middle"))
    with LogRecordReader(path) as rr, pytest.raises(WalCorruption, match="without a preceding"):
        rr.read_records()
    path.write_bytes(_record(2, b"first") + _record(1, b"full"))
    with LogRecordReader(path) as rr, pytest.raises(WalCorruption, match="FULL record inside"):
        _drain(rr)
    path.write_bytes(_record(1, b"ok") + struct.pack("<IHB", 1, 40000, 1) + b"z" * 40000)
    with LogRecordReader(path) as rr, pytest.raises(WalCorruption, match="overruns") as info:
        _drain(rr)
    assert info.value.offset == HEADER_SIZE + 2
    path.write_bytes(struct.pack("<IHB", 0, 5, 0) + b"12345")
    with LogRecordReader(path) as rr, pytest.raises(WalCorruption, match="zero-type"):
        rr.read_records()


@pytest.mark.parametrize(
    ("rtype", "name"),
    [
        (5, "recyclable full"),
        (6, "recyclable first"),
        (7, "recyclable middle"),
        (8, "recyclable last"),
        (9, "set compression type"),
        (10, "user-defined timestamp size"),
        (11, "recyclable user-defined timestamp size"),
        (12, "unknown"),
        (130, "predecessor WAL info"),
        (255, "unknown"),
    ],
)
def test_unsupported_record_type(tmp_path: Path, rtype: int, name: str) -> None:
    path = tmp_path / "000016.log"
    path.write_bytes(_record(1, b"fine") + _record(rtype, b"\x00" * 8))
    with LogRecordReader(path) as rr:
        assert [p for _, p in rr.read_records()] == [b"fine"]
        with pytest.raises(WalUnsupported) as info:
            rr.read_records()
    exc = info.value
    assert exc.tag == rtype
    assert exc.offset == HEADER_SIZE + 4
    assert str(exc) == (
        f"unsupported WAL record type in {path} at offset {HEADER_SIZE + 4}: "
        f"record type {rtype} ({name})"
    )


def test_reading_continues_after_rename(tmp_path: Path) -> None:
    """RocksDB archives a log by renaming it; an open reader must not notice."""
    a = encode_records([b"one"])
    path = tmp_path / "000017.log"
    path.write_bytes(a)
    (tmp_path / "archive").mkdir()
    with LogRecordReader(path) as rr:
        assert [p for _, p in rr.read_records()] == [b"one"]
        moved = tmp_path / "archive" / path.name
        path.rename(moved)
        with open(moved, "ab") as f:
            f.write(encode_records([b"two"], start_offset=len(a)))
        assert [p for _, p in rr.read_records()] == [b"two"]


def test_closed_reader_refuses(tmp_path: Path) -> None:
    path = tmp_path / "000018.log"
    write_log_file(path, [b"x"])
    rr = LogRecordReader(path)
    rr.close()
    rr.close()
    with pytest.raises(ValueError):
        rr.read_records()

"""Names and formats of what the archive holds.

Owns the object names — ``wal/<first>-<last>-e<epoch>-t<first_ms>-<last_ms>.seg`` for a WAL
segment, ``base/<seq>-e<epoch>-<time>/manifest.json`` and ``.../files/<name>.<part>`` for a base
backup, ``history/e<epoch>.json`` for the epoch history a primary saw — and the segment format
(CBOR: epoch, first and last seq, wall-time range, column families, and the batches as the WAL
holds them: seq, count, time seen, the serialized WriteBatch). Names are keyed by sequence
numbers, never by WAL file numbers (a new primary numbers its logs its own way but holds the
same seqs), and carry the writer's epoch, so two primaries never write the same name. It must
never accept a segment whose batches are not contiguous or do not match its name.
"""

from __future__ import annotations

import calendar
import re
import time
from dataclasses import dataclass, field
from typing import Any

import cbor2

from hacluster.backup import BackupError

WAL_PREFIX = "wal/"
BASE_PREFIX = "base/"
HISTORY_PREFIX = "history/"
SEGMENT_FORMAT = 1
PART_BYTES = 8 << 20          # base backup files are stored in parts of this size

_SEGMENT = re.compile(r"wal/(\d{20})-(\d{20})-e(\d{10})-t(\d+)-(\d+)\.seg")
_BASE = re.compile(r"base/((\d{20})-e(\d{10})-(\d{8}T\d{6}Z))/(.+)")


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """A WAL segment as its name describes it."""

    first: int
    last: int
    epoch: int
    first_time: float
    last_time: float
    size: int = 0

    @property
    def name(self) -> str:
        return segment_name(self.first, self.last, self.epoch, self.first_time,
                            self.last_time)


def segment_name(first: int, last: int, epoch: int, first_time: float,
                 last_time: float) -> str:
    return (f"{WAL_PREFIX}{first:020d}-{last:020d}-e{epoch:010d}-t{int(first_time * 1000)}-"
            f"{int(last_time * 1000)}.seg")


def parse_segments(listing: list[tuple[str, int]]) -> list[SegmentRef]:
    out = []
    for name, size in listing:
        m = _SEGMENT.fullmatch(name)
        if m:
            out.append(SegmentRef(int(m[1]), int(m[2]), int(m[3]), int(m[4]) / 1000,
                                  int(m[5]) / 1000, size))
    return sorted(out, key=lambda s: (s.first, s.epoch, s.last))


@dataclass(frozen=True, slots=True)
class BaseRef:
    """A base backup as its objects' names describe it."""

    id: str
    seq: int
    epoch: int
    created: float
    complete: bool            # its manifest is there (written last)
    size: int = 0             # bytes stored (sealed)
    objects: tuple[str, ...] = ()

    @property
    def manifest(self) -> str:
        return base_manifest_name(self.id)


def base_id(seq: int, epoch: int, created: float) -> str:
    return f"{seq:020d}-e{epoch:010d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(created))}"


def base_manifest_name(bid: str) -> str:
    return f"{BASE_PREFIX}{bid}/manifest.json"


def base_part_name(bid: str, file: str, part: int) -> str:
    return f"{BASE_PREFIX}{bid}/files/{file}.{part:05d}"


def parse_bases(listing: list[tuple[str, int]]) -> list[BaseRef]:
    found: dict[str, dict[str, Any]] = {}
    for name, size in listing:
        m = _BASE.fullmatch(name)
        if not m:
            continue
        entry = found.setdefault(m[1], {"seq": int(m[2]), "epoch": int(m[3]),
                                        "created": float(calendar.timegm(time.strptime(
                                            m[4], "%Y%m%dT%H%M%SZ"))),
                                        "complete": False, "size": 0, "objects": []})
        entry["size"] += size
        entry["objects"].append(name)
        if m[5] == "manifest.json":
            entry["complete"] = True
    return sorted((BaseRef(bid, e["seq"], e["epoch"], e["created"], e["complete"], e["size"],
                           tuple(e["objects"])) for bid, e in found.items()),
                  key=lambda b: (b.seq, b.created))


def history_name(epoch: int) -> str:
    return f"{HISTORY_PREFIX}e{epoch:010d}.json"


@dataclass(slots=True)
class Segment:
    """A run of contiguous WAL batches: (seq, count, time seen, serialized WriteBatch)."""

    epoch: int
    column_families: list[str]
    node: str
    batches: list[tuple[int, int, float, bytes]] = field(default_factory=list)

    @property
    def first_seq(self) -> int:
        return self.batches[0][0]

    @property
    def last_seq(self) -> int:
        seq, count, _t, _wb = self.batches[-1]
        return seq + count - 1

    @property
    def first_time(self) -> float:
        return self.batches[0][2]

    @property
    def last_time(self) -> float:
        return self.batches[-1][2]

    @property
    def name(self) -> str:
        return segment_name(self.first_seq, self.last_seq, self.epoch, self.first_time,
                            self.last_time)


def encode_segment(seg: Segment) -> bytes:
    if not seg.batches:
        raise ValueError("an empty segment")
    return bytes(cbor2.dumps({
        "format": SEGMENT_FORMAT, "epoch": seg.epoch, "node": seg.node,
        "first_seq": seg.first_seq, "last_seq": seg.last_seq,
        "first_time": seg.first_time, "last_time": seg.last_time,
        "column_families": seg.column_families,
        "batches": [list(b) for b in seg.batches]}))


def decode_segment(data: bytes, ref: SegmentRef, where: str) -> Segment:
    """The segment ``ref`` names, checked against its name and for contiguity."""
    try:
        doc = cbor2.loads(data)
        if doc.get("format") != SEGMENT_FORMAT:
            raise BackupError(f"{where}: segment format {doc.get('format')!r}, this hacluster "
                              f"reads {SEGMENT_FORMAT}")
        seg = Segment(int(doc["epoch"]), [str(c) for c in doc["column_families"]],
                      str(doc.get("node", "?")),
                      [(int(s), int(c), float(t), bytes(wb)) for s, c, t, wb in doc["batches"]])
    except BackupError:
        raise
    except Exception as exc:
        raise BackupError(f"{where}: not a valid segment: {type(exc).__name__}: {exc}") \
            from None
    if not seg.batches:
        raise BackupError(f"{where}: an empty segment")
    expected = seg.first_seq
    for seq, count, _t, _wb in seg.batches:
        if seq != expected or count < 1:
            raise BackupError(f"{where}: batches not contiguous: seq {seq} (count {count}) "
                              f"where seq {expected} was expected")
        expected = seq + count
    if (seg.first_seq, seg.last_seq, seg.epoch) != (ref.first, ref.last, ref.epoch):
        raise BackupError(f"{where}: holds seqs {seg.first_seq}..{seg.last_seq} of epoch "
                          f"{seg.epoch}, its name says {ref.first}..{ref.last} of epoch "
                          f"{ref.epoch}")
    return seg

"""Divergent tails: writes a former primary made that no current primary has, kept in a file.

Owns ``<data_dir>/divergent/*.cbor`` and the ``<data_dir>/db.diverged-*`` directories: when a
node must give up data past the point where a later epoch took over (async replication lost
them on failover), its own WAL still holds those batches; they are streamed, one batch at a
time, into a CBOR file (node, epoch, sequence numbers, and every op with its column family, key
and value) before the node re-bootstraps, and listed in status from the file's header alone.
It also owns their retention: files older than ``storage.divergent_keep_days`` or beyond
``storage.divergent_max_mb`` in total, and old databases set aside beyond the same age or
``KEEP_DIVERGED_DBS``, are deleted, each deletion logged. It must never drop such writes
silently: if the WAL no longer holds all of them, or the file reached its size cap, the file
says so (``complete: false``) and the caller keeps the old database aside.

File format 2 is one CBOR map, readable whole by ``cbor2.load`` like format 1 (which was
written in one piece): the summary keys come first, then ``batches`` (one item per WAL batch),
then ``error``. The summary's counts are written as fixed-width integers and filled in once
the batches are written, so a reader of the summary stops at ``batches``.
"""

from __future__ import annotations

import calendar
import itertools
import logging
import os
import re
import shutil
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import cbor2

from hacluster.fsutil import fsync_path
from hacluster.key_seqs import writes_in
from hacluster.lineage.labels import Divergence
from hacluster.store import Store
from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT, SINGLE_DELETE
from hacluster.wal.errors import WalError, WalGone
from hacluster.wal.reader import WalReader

log = logging.getLogger(__name__)

KIND_NAMES = {PUT: "put", DELETE: "delete", SINGLE_DELETE: "single_delete",
              DELETE_RANGE: "delete_range"}
FORMAT = 2
# Old databases set aside for incomplete tails: at most this many are kept.
KEEP_DIVERGED_DBS = 3
DEFAULT_MAX_BYTES = 1024 << 20
DAY_S = 86_400.0
# What one WAL read may hold in memory while saving: a batch larger than this still comes
# whole (a batch is the unit), but never many of them.
READ_BYTES = 1 << 20
READ_BATCHES = 64
# Room kept under the size cap for the trailer (the error text and the closing bytes).
TRAILER_RESERVE = 4096
# A summary has about a dozen keys; a file with many more before `batches` is not ours.
MAX_HEADER_KEYS = 64
_ASIDE_PREFIX = "db.diverged-"
_ASIDE_STAMP = re.compile(r"^(\d{8}T\d{6})\.(\d{6})Z(?:-(\d+))?$")


@dataclass(frozen=True, slots=True)
class SavedTail:
    path: Path
    complete: bool
    ops: int
    saved_last_seq: int      # the last seq the file holds (first_seq - 1: none)
    error: str | None        # why it is incomplete


def _u64(value: int) -> bytes:
    # Always the 8-byte form (valid CBOR, just not the shortest), so it can be filled in later.
    return b"\x1b" + struct.pack(">Q", value)


def save_divergent_tail(data_dir: Path, node: str, store: Store, div: Divergence, *,
                        max_bytes: int = DEFAULT_MAX_BYTES) -> SavedTail:
    """Stream the batches [div.first_seq, div.last_seq] into a file of at most ``max_bytes``.

    Blocking file and WAL I/O: async callers run it in a thread, with nothing writing the
    store meanwhile. Memory holds one WAL read (``READ_BYTES``) at a time, whatever the tail.
    """
    names = store.column_families
    seq_cf = store.seq_cf_id
    folder = data_dir / "divergent"
    folder.mkdir(exist_ok=True)
    path = folder / f"epoch{div.epoch}-seq{div.first_seq}-{div.last_seq}.cbor"
    tmp = path.with_suffix(".tmp")
    error: str | None = None
    ops = count = 0
    saved_last = div.first_seq - 1
    with open(tmp, "wb") as f:
        f.write(b"\xab")                 # a map of 11 keys
        for key, value in (("format", FORMAT), ("node", node), ("epoch", div.epoch),
                           ("first_seq", div.first_seq), ("last_seq", div.last_seq),
                           ("saved_at", time.time())):
            f.write(cbor2.dumps(key) + cbor2.dumps(value))
        f.write(cbor2.dumps("complete"))
        at_complete = f.tell()
        f.write(b"\xf4")
        f.write(cbor2.dumps("ops"))
        at_ops = f.tell()
        f.write(_u64(0))
        f.write(cbor2.dumps("saved_last_seq"))
        at_saved = f.tell()
        f.write(_u64(0))
        f.write(cbor2.dumps("batches"))
        at_count = f.tell()
        f.write(b"\x9b" + struct.pack(">Q", 0))     # an array; its length is filled in below
        # first_seq is where the next epoch began, the end of a write of this epoch: a run
        # this node applied as a replica in one record may straddle it (keep its rest).
        reader = WalReader(store.db_dir, div.first_seq, cut_at_start=True)
        try:
            while error is None and reader.next_seq <= div.last_seq:
                got = reader.read(max_batches=READ_BATCHES, max_bytes=READ_BYTES)
                if not got:
                    error = f"the WAL ended at seq {reader.next_seq - 1}"
                    break
                for w in (w for b in got for w in writes_in(b, seq_cf)):
                    if w.first_seq > div.last_seq:
                        break
                    # The writes themselves, each on its own (a run this node applied as a
                    # replica is one record): their keys' seq records (SEQ_CF) say nothing
                    # an operator replaying the tail could use.
                    kept = [[KIND_NAMES[kind], names[cf] if cf < len(names) else cf, key, value]
                            for kind, cf, key, value in w.ops]
                    item = cbor2.dumps({"seq": w.first_seq, "ops": kept})
                    if f.tell() + len(item) + TRAILER_RESERVE > max_bytes:
                        error = (f"the file reached storage.divergent_max_mb "
                                 f"({max_bytes / (1 << 20):g} MB) after seq {saved_last}: "
                                 f"seqs {saved_last + 1}..{div.last_seq} are not in it")
                        break
                    f.write(item)
                    count += 1
                    ops += len(kept)
                    saved_last = max(saved_last, w.last_seq)
                del got
        except (WalError, WalGone) as exc:
            error = f"the WAL no longer held all of them: {exc}"
        finally:
            reader.close()
        f.write(cbor2.dumps("error") + cbor2.dumps(error))
        complete = error is None
        for offset, data in ((at_complete, b"\xf5" if complete else b"\xf4"),
                             (at_ops, _u64(ops)), (at_saved, _u64(saved_last)),
                             (at_count, b"\x9b" + struct.pack(">Q", count))):
            f.seek(offset)
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(folder)
    return SavedTail(path, complete, ops, saved_last, error)


def _head(f: IO[bytes]) -> tuple[int, int | None]:
    """The next CBOR data item's major type and argument (None: indefinite length)."""
    first = f.read(1)
    if not first:
        raise ValueError("unexpected end of file")
    major, info = first[0] >> 5, first[0] & 0x1F
    if info < 24:
        return major, info
    if info == 31:
        return major, None
    width = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if width is None:
        raise ValueError(f"malformed CBOR head byte {first[0]:#04x}")
    raw = f.read(width)
    if len(raw) != width:
        raise ValueError("unexpected end of file")
    return major, int.from_bytes(raw, "big")


def _is_break(f: IO[bytes]) -> bool:
    at = f.tell()
    if f.read(1) == b"\xff":
        return True
    f.seek(at)
    return False


def _walk(f: IO[bytes]) -> Iterator[tuple[str, Any]]:
    """The map's keys in file order, each with its value, except ``batches``: its value is an
    iterator the caller must use up before taking the next key (or stop there)."""
    major, keys = _head(f)
    if major != 5:
        raise ValueError("not a divergent-tail file (the top level is not a CBOR map)")
    decoder = cbor2.CBORDecoder(f)
    for n in itertools.count():
        if (keys is None and _is_break(f)) or (keys is not None and n >= keys):
            return
        if n >= MAX_HEADER_KEYS:
            raise ValueError(f"not a divergent-tail file (more than {MAX_HEADER_KEYS} keys)")
        key = decoder.decode()
        if key != "batches":
            yield str(key), decoder.decode()
            continue
        yield key, _items(f, decoder)


def _items(f: IO[bytes], decoder: cbor2.CBORDecoder) -> Iterator[Any]:
    # A generator: nothing of the array, not even its head, is read until asked for.
    major, items = _head(f)
    if major != 4:
        raise ValueError("batches is not an array")
    for n in itertools.count():
        if (items is None and _is_break(f)) or (items is not None and n >= items):
            return
        yield decoder.decode()


def read_tail_header(path: Path) -> dict[str, Any]:
    """The summary of a tail file (every key before ``batches``), without reading the batches.

    Format 1 files have their summary before ``batches`` too.
    """
    out: dict[str, Any] = {}
    with open(path, "rb") as f:
        for key, value in _walk(f):
            if key == "batches":
                break
            out[key] = value
    return out


def iter_tail_batches(path: Path) -> Iterator[dict[str, Any]]:
    """The batches of a tail file (either format), one at a time: ``{"seq", "ops"}``."""
    with open(path, "rb") as f:
        for key, value in _walk(f):
            if key == "batches":
                yield from value
                return


def list_divergent_tails(data_dir: Path) -> list[dict[str, Any]]:
    """What status shows: one entry per saved tail, read from its header (never its ops)."""
    folder = data_dir / "divergent"
    out = []
    for path in sorted(folder.glob("*.cbor")) if folder.exists() else []:
        try:
            size = path.stat().st_size
            doc = read_tail_header(path)
            out.append({"file": str(path), "epoch": doc["epoch"], "first_seq": doc["first_seq"],
                        "last_seq": doc["last_seq"], "ops": doc["ops"],
                        "complete": doc["complete"],
                        "saved_last_seq": doc.get("saved_last_seq",
                                                  doc["last_seq"] if doc["complete"] else None),
                        "bytes": size})
        except FileNotFoundError:
            continue        # pruned since the listing began
        except (OSError, ValueError, KeyError, cbor2.CBORDecodeError) as exc:
            out.append({"file": str(path), "error": f"unreadable: {exc}"})
    return out


def set_aside(db_dir: Path, now: float | None = None) -> Path:
    """Rename ``db_dir`` to a new ``db.diverged-<UTC time with microseconds>[-n]``; the path.

    Never onto an existing name (two in one second used to make the rename raise).
    """
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    for n in itertools.count():
        aside = db_dir.with_name(f"{_ASIDE_PREFIX}{stamp}" + (f"-{n}" if n else ""))
        # os.rename would silently replace an empty directory of that name: look first.
        if aside.exists():
            continue
        db_dir.rename(aside)
        return aside
    raise AssertionError("unreachable")


def _aside_time(path: Path) -> tuple[float, int]:
    """When a database was set aside (from its name; the mtime for names not of ours)."""
    suffix = path.name[len(_ASIDE_PREFIX):]
    if suffix.isdigit():                # the old names: unix seconds
        return float(suffix), 0
    m = _ASIDE_STAMP.match(suffix)
    if m:
        at = calendar.timegm(time.strptime(m[1], "%Y%m%dT%H%M%S")) + int(m[2]) / 1e6
        return at, int(m[3] or 0)
    return path.stat().st_mtime, 0


def prune_diverged_dbs(data_dir: Path, keep_days: float, keep: int = KEEP_DIVERGED_DBS,
                       now: float | None = None) -> list[Path]:
    """Delete ``db.diverged-*`` older than ``keep_days`` or beyond the newest ``keep``."""
    now = time.time() if now is None else now
    found = []
    for path in data_dir.glob(f"{_ASIDE_PREFIX}*"):
        try:
            if path.is_dir():
                found.append((_aside_time(path), path))
        except OSError:
            continue
    found.sort(reverse=True)            # newest first
    removed = []
    for i, ((at, _), path) in enumerate(found):
        age_days = (now - at) / DAY_S
        if age_days > keep_days:
            why = f"older than storage.divergent_keep_days ({keep_days:g})"
        elif i >= keep:
            why = f"only the newest {keep} are kept"
        else:
            continue
        try:
            shutil.rmtree(path)
        except OSError as exc:
            log.warning("cannot remove the old database %s: %s", path, exc)
            continue
        # These are kept only when a divergent tail could not be saved in full: this may have
        # been the only copy of some of its writes.
        log.error("removed the old database %s, set aside %.1f days ago (%s): writes of an "
                  "incomplete divergent tail that only it held are gone", path, age_days, why)
        removed.append(path)
    return removed


def prune_divergent_tails(data_dir: Path, keep_days: float, max_bytes: int,
                          keep: Path | None = None, now: float | None = None) -> list[Path]:
    """Delete tail files older than ``keep_days``, then the oldest while all of them together
    exceed ``max_bytes``; ``keep`` (the tail just saved) is never deleted."""
    folder = data_dir / "divergent"
    if not folder.exists():
        return []
    now = time.time() if now is None else now
    files = []
    for path in folder.glob("*.cbor"):
        try:
            st = path.stat()
        except OSError:
            continue
        files.append((st.st_mtime, path, st.st_size))
    files.sort()                        # oldest first
    total = sum(size for _, _, size in files)
    removed = []
    for mtime, path, size in files:
        age_days = (now - mtime) / DAY_S
        if path == keep:
            continue
        if age_days > keep_days:
            why = f"older than storage.divergent_keep_days ({keep_days:g})"
        elif total > max_bytes:
            why = (f"the divergent tails took {total / (1 << 20):.1f} MB, more than "
                   f"storage.divergent_max_mb ({max_bytes / (1 << 20):g})")
        else:
            continue
        try:
            summary = read_tail_header(path)
            what = (f"epoch {summary.get('epoch')}, seqs {summary.get('first_seq')}.."
                    f"{summary.get('last_seq')}, {summary.get('ops')} ops")
        except (OSError, ValueError, cbor2.CBORDecodeError):
            what = "unreadable"
        try:
            path.unlink()
        except OSError as exc:
            log.warning("cannot remove divergent tail %s: %s", path, exc)
            continue
        total -= size
        log.warning("removed divergent tail %s (%s, %.1f days old, %d bytes): %s", path, what,
                    age_days, size, why)
        removed.append(path)
    return removed


def prune_divergence(data_dir: Path, keep_days: float, max_bytes: int, *,
                     keep: Path | None = None, startup: bool = False) -> None:
    """Apply the retention to tail files and old databases; at start-up, also delete partial
    tail files (``*.tmp``) a crash left: nothing refers to them, and the divergence they were
    saving is found and saved again before the node follows anyone."""
    if startup:
        for tmp in (data_dir / "divergent").glob("*.tmp"):
            try:
                tmp.unlink()
                log.info("removed the partial divergent tail %s left by a crash", tmp)
            except OSError as exc:
                log.warning("cannot remove %s: %s", tmp, exc)
    prune_divergent_tails(data_dir, keep_days, max_bytes, keep)
    prune_diverged_dbs(data_dir, keep_days)

"""Point-in-time restore: a base backup plus the archived WAL, replayed up to a seq or a time.

Owns listing what the archive can restore (``catalog``, ``describe``), and ``restore``: the
newest base backup at or before the target downloaded into a staging directory beside the
target, every file verified, opened, then the archived segments replayed batch by batch with
the replica's invariant (a batch starts at the database's seq + 1 and ends where its count
says, checked by ``Store.commit``), a missing range reported by its seqs, and only then
renamed into place with a ``hacluster-restore.json`` saying where it came from. It must never
leave a half-restored database at the target, never replay a range the epoch history
superseded, and never skip a missing range.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hacluster.backup import BackupError, base, plan
from hacluster.backup.history import read_history
from hacluster.backup.layout import (
    BASE_PREFIX,
    WAL_PREFIX,
    BaseRef,
    SegmentRef,
    decode_segment,
    parse_bases,
    parse_segments,
)
from hacluster.backup.objects import Archive
from hacluster.config.model import StorageConfig
from hacluster.key_seqs import SEQ_CF
from hacluster.store import Store, StoreError
from hacluster.wal.errors import WalError

log = logging.getLogger(__name__)

RESTORE_INFO = "hacluster-restore.json"


@dataclass(frozen=True, slots=True)
class Catalog:
    bases: list[BaseRef]
    segments: list[SegmentRef]
    history: list[plan.Epoch]


def catalog(archive: Archive) -> Catalog:
    return Catalog(parse_bases(archive.listing(BASE_PREFIX)),
                   parse_segments(archive.listing(WAL_PREFIX)), read_history(archive))


def describe(cat: Catalog) -> dict[str, Any]:
    """Base backups (seq, epoch, time, size, usable) and the restorable ranges."""
    ranges = plan.restorable(cat.bases, cat.segments, cat.history)
    reach = {b.id: top for b, top, _gap in ranges}
    bases = [{"id": b.id, "seq": b.seq, "epoch": b.epoch, "created": b.created,
              "bytes": b.size, "complete": b.complete,
              "on_history": plan.base_kept(b, cat.history), "restorable_to": reach.get(b.id)}
             for b in cat.bases]
    superseded = [s.name for s in cat.segments
                  if plan.kept_through(s, cat.history, cat.segments) < s.first]
    times = [s.last_time for s in cat.segments]
    return {"base_backups": bases,
            "restorable": [{"from_seq": b.seq, "to_seq": top,
                            "gap_after": list(gap) if gap else None} for b, top, gap in ranges],
            "segments": len(cat.segments),
            "segment_bytes": sum(s.size for s in cat.segments),
            "newest_segment_time": max(times) if times else None,
            "superseded_segments": superseded,
            "epochs": [{"epoch": r.epoch, "start_seq": r.start_seq, "primary": r.primary}
                       for r in cat.history]}


@contextmanager
def _progress(total: int | None, desc: str, unit: str) -> Iterator[Callable[[int], None]]:
    try:
        from hacluster.tools.progress import progress
    except ImportError:
        yield lambda n: None
        return
    with progress(total=total, desc=desc, unit=unit) as bar:
        yield bar.update


def _replay(archive: Archive, store: Store, steps: tuple[plan.Step, ...],
            to_time: float | None) -> int:
    """Apply the steps' batches in order; the number of batches applied."""
    applied = 0
    total = sum(s.segment.size for s in steps)
    with _progress(total or None, "restore replay", "B") as update:
        for step in steps:
            ref = step.segment
            where = f"{archive.url}/{ref.name}"
            seg = decode_segment(archive.get(ref.name), ref, where)
            try:
                handles = store.handles_for(seg.column_families)
            except StoreError as exc:
                raise BackupError(f"{where}: {exc}") from None
            for seq, count, t, wb in seg.batches:
                last = seq + count - 1
                if last < step.first:
                    continue                # the database has it already (an overlap)
                if seq > step.last or last > step.last:
                    break
                if to_time is not None and t > to_time:
                    return applied
                have = store.latest_seq()
                if seq != have + 1:
                    raise BackupError(
                        f"{where}: the archive has a gap: the database is at seq {have}, this "
                        f"segment's next batch starts at seq {seq} (seqs {have + 1}..{seq - 1} "
                        "are missing)" if seq > have + 1 else
                        f"{where}: batch [{seq}, {last}] straddles seq {have}: the archive's "
                        "segments do not line up")
                try:
                    batch = store.prepare(wb, handles, where=f"{where} batch at seq {seq}")
                    store.commit(batch, seq, count, sync=False)
                except (WalError, KeyError, StoreError) as exc:
                    raise BackupError(f"{where}: batch at seq {seq} cannot be applied: "
                                      f"{exc}") from None
                applied += 1
            update(ref.size)
    return applied


def restore(archive: Archive, target: Path, storage: StorageConfig, *,
            to_seq: int | None = None, to_time: float | None = None,
            say: Callable[[str], None] = print) -> dict[str, Any]:
    """Restore into ``target`` (a new directory, a RocksDB database when done)."""
    if target.exists():
        raise BackupError(f"{target} exists; give a new directory")
    started = time.monotonic()
    cat = catalog(archive)
    p = plan.restore_plan(cat.bases, cat.segments, cat.history, to_seq=to_seq,
                          to_time=to_time)
    manifest = base.read_manifest(archive, p.base)
    say(f"restore: base backup {p.base.id} (seq {p.base.seq}, epoch {p.base.epoch}), then "
        f"{len(p.steps)} WAL segments up to seq {p.target}")
    staging = target.parent / f".{target.name}.restoring"
    shutil.rmtree(staging, ignore_errors=True)       # an interrupted restore's leftovers
    staging.mkdir(parents=True)
    try:
        return _restore_into(archive, p, manifest, staging, target, storage, started, to_seq,
                             to_time, cat.history, say)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _restore_into(archive: Archive, p: plan.RestorePlan, manifest: dict[str, Any],
                  staging: Path, target: Path, storage: StorageConfig, started: float,
                  to_seq: int | None,
                  to_time: float | None, history: list[plan.Epoch],
                  say: Callable[[str], None]) -> dict[str, Any]:
    db_dir = staging / "db"
    total = int(manifest.get("total_bytes", 0))
    with _progress(total, "restore download", "B") as update:
        base.download(archive, p.base, manifest, db_dir, update)
    downloaded = time.monotonic()
    cfs = [c for c in manifest["column_families"] if c != SEQ_CF]
    store = Store(db_dir, cfs, storage)
    try:
        if store.latest_seq() != p.base.seq:
            raise BackupError(f"base backup {p.base.id} opened at seq {store.latest_seq()}, "
                              f"its manifest says {p.base.seq}")
        batches = _replay(archive, store, p.steps, to_time)
        reached = store.latest_seq()
        store.sync_wal()
    finally:
        store.close()
        del store
        gc.collect()
    if to_seq is not None and reached != to_seq:
        say(f"restore: seq {to_seq} is inside a batch; restored to seq {reached}, the end of "
            "the last whole batch before it")
    info = {"restored_at": time.time(), "source": archive.url, "base_backup": p.base.id,
            "base_seq": p.base.seq, "base_epoch": p.base.epoch, "seq": reached,
            "to_seq": to_seq, "to_time": to_time, "batches_replayed": batches,
            "column_families": manifest["column_families"],
            "history": [{"epoch": r.epoch, "start_seq": r.start_seq, "primary": r.primary}
                        for r in history]}
    (db_dir / RESTORE_INFO).write_text(json.dumps(info, indent=1))
    db_dir.rename(target)
    seconds = time.monotonic() - started
    info.update(seconds=round(seconds, 3), download_seconds=round(downloaded - started, 3),
                bytes=total)
    say(f"restore done: {target} at seq {reached} ({batches} batches replayed on the base "
        f"backup at seq {p.base.seq}) in {seconds:.1f} s")
    return info

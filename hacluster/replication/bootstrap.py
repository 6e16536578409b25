"""Replica bootstrap: download a primary's checkpoint into a staging dir and install it before open.

Owns the staging layout under ``<data_dir>/bootstrap`` (``manifest.json``, ``files/`` with
``*.part`` while a file is in flight, and the ``COMPLETE`` marker written only after every file
verified), resuming per file after an interruption, the atomic swap of ``files/`` into
``<data_dir>/db``, and each bootstrap's progress (``BootstrapProgress``: phase, bytes done of
the total, start time), which ``/status`` and the CLI read. It must never touch ``db/`` while
RocksDB has it open (the caller closes the store first), never install an unverified file, and
never leave ``db/`` half-installed: the swap is two renames guarded by ``COMPLETE``, which
``recover()`` finishes after a crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext
from typing import Any

import aiohttp
import crc32c

from hacluster.fsutil import fsync_path
from hacluster.replication.checkpoints import file_crc32c

log = logging.getLogger(__name__)

PROGRESS_EVERY = 1.0
READ_BUFFER = 4 << 20
PARALLEL_FILES = 3


class BootstrapError(Exception):
    """The checkpoint could not be fetched or did not verify; nothing was installed."""


class CheckpointUnavailable(BootstrapError):
    """The node asked answered 503: it is not (or no longer, or not yet) the primary, or it
    cannot make a checkpoint now (busy, its service's database not there yet). Try again."""


@dataclass(frozen=True, slots=True)
class Layout:
    data_dir: Path
    # The database: ``<data_dir>/db``, or in managed mode the service's own directory (on the
    # same file system: the install is a rename).
    db_dir: Path | None = None

    @property
    def db(self) -> Path:
        return self.db_dir if self.db_dir is not None else self.data_dir / "db"

    @property
    def old(self) -> Path:
        return self.db.with_name(self.db.name + ".old")

    @property
    def staging(self) -> Path:
        return self.data_dir / "bootstrap"

    @property
    def files(self) -> Path:
        return self.staging / "files"

    @property
    def manifest(self) -> Path:
        return self.staging / "manifest.json"

    @property
    def complete(self) -> Path:
        return self.staging / "COMPLETE"


def recover(data_dir: Path, db_dir: Path | None = None) -> bool:
    """Finish or discard an install interrupted by a crash; True if an install was finished."""
    lay = Layout(data_dir, db_dir)
    if lay.complete.exists():
        log.info("finishing the checkpoint install interrupted in %s", data_dir)
        install(data_dir, db_dir)
        return True
    if lay.old.exists():
        # Without COMPLETE the swap never started; db.old is only leftover clean-up.
        shutil.rmtree(lay.old, ignore_errors=True)
    return False


def install(data_dir: Path, db_dir: Path | None = None) -> int:
    """Swap a verified staging dir into place; the DB must be closed. Returns the checkpoint seq."""
    lay = Layout(data_dir, db_dir)
    marker = json.loads(lay.complete.read_text())
    if lay.files.exists():
        if lay.old.exists():
            shutil.rmtree(lay.old)
        if lay.db.exists():
            lay.db.rename(lay.old)
        lay.files.rename(lay.db)
        fsync_path(lay.db.parent)
    shutil.rmtree(lay.staging, ignore_errors=True)
    shutil.rmtree(lay.old, ignore_errors=True)
    report = progress_of(data_dir)
    if report is not None and report.checkpoint_id == marker.get("id"):
        report.phase, report.finished_at = "installed", time.time()
    log.info("installed checkpoint %s (seq %d) into %s", marker.get("id"), marker["seq"], lay.db)
    return int(marker["seq"])


# Phases of one bootstrap as /status shows them: the primary making its checkpoint, the
# download, the check of the staged files, then installed (or failed).
PHASES = ("checkpoint", "downloading", "verifying", "installed", "failed")


@dataclass
class BootstrapProgress:
    """How far one bootstrap got: read by ``/status`` and ``hacluster reinit|backup``."""

    started_at: float                   # wall clock (time.time()), for people and other hosts
    phase: str = "checkpoint"
    bytes_total: int | None = None      # known once the primary answered with its manifest
    bytes_done: int = 0                 # on disk, including what an earlier attempt left
    bytes_resumed: int = 0              # of bytes_done, found from an earlier attempt
    checkpoint_id: str | None = None
    checkpoint_seq: int | None = None
    finished_at: float | None = None
    error: str | None = None

    def snapshot(self) -> dict[str, Any]:
        elapsed = (self.finished_at or time.time()) - self.started_at
        fetched = self.bytes_done - self.bytes_resumed
        return {"phase": self.phase, "bytes_done": self.bytes_done,
                "bytes_total": self.bytes_total, "bytes_resumed": self.bytes_resumed,
                "started_at": round(self.started_at, 3),
                "finished_at": None if self.finished_at is None else round(self.finished_at, 3),
                "rate_bytes_s": round(fetched / elapsed) if elapsed > 0 else None,
                "checkpoint_id": self.checkpoint_id, "checkpoint_seq": self.checkpoint_seq,
                "error": self.error}


# The newest bootstrap per data directory in this process. The follower creates the
# Bootstrapper and keeps it only while it runs; /status reads the progress by the one thing
# both share, the data directory, and still shows the last one after it ended.
_LATEST: dict[Path, BootstrapProgress] = {}


def progress_of(data_dir: Path) -> BootstrapProgress | None:
    """The newest bootstrap into ``data_dir`` in this process, running or ended; None if none."""
    return _LATEST.get(Path(data_dir).resolve())


class _Progress:
    """Counts the bytes of one fetch into its ``BootstrapProgress``; logs a line a second."""

    def __init__(self, report: BootstrapProgress, total: int, done: int) -> None:
        self.report = report
        report.bytes_total, report.bytes_done, report.bytes_resumed = total, done, done
        self.total = total
        self.done = done
        self.started = time.monotonic()
        self.base = done
        self.last = 0.0

    def add(self, n: int, force: bool = False) -> None:
        self.done += n
        self.report.bytes_done = self.done
        now = time.monotonic()
        if force or now - self.last >= PROGRESS_EVERY:
            self.last = now
            elapsed = max(now - self.started, 1e-6)
            pct = 100.0 * self.done / self.total if self.total else 100.0
            log.info("bootstrap: %.1f/%.1f MB (%.0f%%), %.1f MB/s", self.done / 1e6,
                     self.total / 1e6, pct, (self.done - self.base) / 1e6 / elapsed)

    def skip(self, n: int) -> None:
        """Bytes already on disk from an earlier attempt: done, but not transferred now."""
        self.done += n
        self.base += n
        self.report.bytes_done = self.done
        self.report.bytes_resumed += n

    @property
    def rate_mb_s(self) -> float:
        return (self.done - self.base) / 1e6 / max(time.monotonic() - self.started, 1e-6)


class Bootstrapper:
    """Fetches one checkpoint from ``primary_url`` into ``data_dir/bootstrap``."""

    def __init__(self, data_dir: Path, primary_url: str, headers: dict[str, str], node: str,
                 chunk_bytes: int, max_rate_mb_s: float = 0.0,
                 ssl: SSLContext | None = None) -> None:
        self.ssl = ssl
        self.lay = Layout(data_dir)
        self.primary_url = primary_url.rstrip("/")
        self.headers = headers
        self.node = node
        self.chunk_bytes = chunk_bytes
        self.max_rate = max_rate_mb_s * 1e6
        self.bytes_downloaded = 0
        self.last_rate_mb_s = 0.0
        self.progress = BootstrapProgress(started_at=time.time())
        _LATEST[data_dir.resolve()] = self.progress

    async def fetch(self) -> dict[str, Any]:
        """Create a checkpoint on the primary and download it; returns the verified manifest."""
        # A session of its own: large read buffers for file transfer, and a read timeout long
        # enough for the primary to checksum a large checkpoint before it answers.
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=300)
        connector = aiohttp.TCPConnector(ssl=self.ssl) if self.ssl is not None else None
        try:
            async with aiohttp.ClientSession(timeout=timeout, read_bufsize=READ_BUFFER,
                                             connector=connector) as session:
                return await self._fetch(session)
        except BaseException as exc:
            self.progress.phase = "failed"
            self.progress.error = ("cancelled: replication stopped" if isinstance(
                exc, asyncio.CancelledError) else f"{type(exc).__name__}: {exc}")
            self.progress.finished_at = time.time()
            raise

    async def _fetch(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        url = f"{self.primary_url}/v1/replication/checkpoints"
        async with session.post(url, json={"node": self.node}, headers=self.headers) as resp:
            if resp.status != 200:
                refused = CheckpointUnavailable if resp.status == 503 else BootstrapError
                raise refused(f"checkpoint request to {url} failed: HTTP {resp.status} "
                              f"{(await resp.text())[:200]}")
            manifest: dict[str, Any] = await resp.json()
        log.info("bootstrap: checkpoint %s from %s at seq %d, %d files, %.1f MB",
                 manifest["id"], self.primary_url, manifest["seq"], len(manifest["files"]),
                 manifest["total_bytes"] / 1e6)
        self.progress.checkpoint_id, self.progress.checkpoint_seq = (manifest["id"],
                                                                     manifest["seq"])
        self._prepare(manifest)
        done = sum(f["size"] for f in manifest["files"] if (self.lay.files / f["name"]).exists())
        progress = _Progress(self.progress, manifest["total_bytes"], done)
        self.progress.phase = "downloading"
        # A few files at once: one file's fsync (off the loop) overlaps the others' transfer.
        gate = asyncio.Semaphore(PARALLEL_FILES)

        async def one(entry: dict[str, Any]) -> None:
            async with gate:
                await self._download(session, manifest["id"], entry, progress)

        try:
            # A TaskGroup cancels the other downloads as soon as one fails.
            async with asyncio.TaskGroup() as group:
                for e in manifest["files"]:
                    if not (self.lay.files / e["name"]).exists():
                        group.create_task(one(e))
        except* (BootstrapError, aiohttp.ClientError, TimeoutError, OSError) as failed:
            raise failed.exceptions[0] from None
        progress.add(0, force=True)
        self.last_rate_mb_s = progress.rate_mb_s
        self.progress.phase = "verifying"
        self._verify_all(manifest)
        marker = {"id": manifest["id"], "seq": manifest["seq"], "epoch": manifest["epoch"]}
        tmp = self.lay.staging / "COMPLETE.tmp"
        tmp.write_text(json.dumps(marker))
        fsync_path(tmp)
        tmp.rename(self.lay.complete)
        fsync_path(self.lay.staging)
        try:
            async with session.delete(f"{url}/{manifest['id']}", headers=self.headers):
                pass
        except aiohttp.ClientError:
            log.info("bootstrap: could not delete checkpoint %s on the primary; it expires",
                     manifest["id"])
        return manifest

    def _prepare(self, manifest: dict[str, Any]) -> None:
        """Keep staged files (complete or partial) the new checkpoint shares; drop the rest."""
        self.lay.files.mkdir(parents=True, exist_ok=True)
        self.lay.complete.unlink(missing_ok=True)
        old: dict[str, Any] = {}
        if self.lay.manifest.exists():
            try:
                old = {f["name"]: f for f in json.loads(self.lay.manifest.read_text())["files"]}
            except (ValueError, KeyError, TypeError):
                old = {}
        wanted = {f["name"]: f for f in manifest["files"]}
        for path in self.lay.files.iterdir():
            name = path.name.removesuffix(".part")
            prev, new = old.get(name), wanted.get(name)
            if prev is None or new is None or (
                    (prev["size"], prev["crc32c"]) != (new["size"], new["crc32c"])) or (
                    path.suffix == ".part" and path.stat().st_size > new["size"]):
                path.unlink()
        self.lay.manifest.write_text(json.dumps(manifest))

    async def _download(self, session: aiohttp.ClientSession, cp_id: str,
                        entry: dict[str, Any], progress: _Progress) -> None:
        name, size, want = entry["name"], int(entry["size"]), int(entry["crc32c"])
        part = self.lay.files / f"{name}.part"
        have = part.stat().st_size if part.exists() else 0
        crc = file_crc32c(part) if have else 0
        if have:
            log.info("bootstrap: resuming %s at byte %d of %d", name, have, size)
            progress.skip(have)
        headers = dict(self.headers)
        if have:
            headers["Range"] = f"bytes={have}-"
        url = f"{self.primary_url}/v1/replication/checkpoints/{cp_id}/files/{name}"
        if have < size:
            async with session.get(url, headers=headers) as resp:
                if resp.status not in (200, 206):
                    raise BootstrapError(f"download of {name} failed: HTTP {resp.status}")
                if have and resp.status == 200:
                    raise BootstrapError(f"primary ignored the Range request for {name}")
                with open(part, "ab") as f:
                    async for chunk in resp.content.iter_chunked(self.chunk_bytes):
                        f.write(chunk)
                        crc = crc32c.crc32c(chunk, crc)
                        have += len(chunk)
                        self.bytes_downloaded += len(chunk)
                        progress.add(len(chunk))
                        if self.max_rate:
                            await self._throttle(progress)
                    f.flush()
                    await asyncio.to_thread(os.fsync, f.fileno())
        else:
            part.touch()  # empty files (a fresh WAL) are part of the checkpoint too
        if have != size or crc != want:
            part.unlink(missing_ok=True)
            raise BootstrapError(f"{name}: got {have} bytes with crc32c {crc:#010x}, "
                                 f"expected {size} bytes with {want:#010x}; discarded")
        part.rename(self.lay.files / name)

    async def _throttle(self, progress: _Progress) -> None:
        ahead = (progress.done - progress.base) / self.max_rate - (
            time.monotonic() - progress.started)
        if ahead > 0:
            await asyncio.sleep(ahead)

    def _verify_all(self, manifest: dict[str, Any]) -> None:
        names = {f["name"] for f in manifest["files"]}
        present = {p.name for p in self.lay.files.iterdir()}
        if present != names:
            raise BootstrapError(f"staged files differ from the manifest: missing "
                                 f"{sorted(names - present)}, extra {sorted(present - names)}")
        fsync_path(self.lay.files)

"""The primary's checkpoint service: create RocksDB checkpoints and serve their files for bootstrap.

Owns ``POST /v1/replication/checkpoints`` (create one, answer its manifest: sequence number,
files, sizes, CRC32C), ``GET .../checkpoints/{id}/files/{name}`` (a file, with HTTP Range so an
interrupted download resumes), ``DELETE .../checkpoints/{id}``, the clean-up of checkpoints
nobody fetched for ``checkpoint_ttl_seconds``, and the cap on how many exist at once
(``max_checkpoints``: the least recently used idle one makes room; when every one is in use the
request is refused with 503). It must never serve a path outside a checkpoint directory, never
serve from the live DB directory (only from immutable hard-linked copies), and never remove a
checkpoint while a file of it is being sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import crc32c
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_protocol import RequestPayloadError

log = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9]{10,}-[0-9a-f]{8}$")
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
READ_CHUNK = 4 << 20
# A checkpoint counts as in use this long after its last request, besides while a file of it
# is being sent: a bootstrapping replica asks for the files one after another, and checksums
# what it staged earlier before the first request.
IN_USE_GRACE_S = 30.0
MAX_NAME = 200


def file_crc32c(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            crc = crc32c.crc32c(chunk, crc)
    return int(crc)


class CheckpointService:
    def __init__(self, root: Path, *, create: Callable[[Path], int], epoch: Callable[[], int],
                 column_families: Callable[[], list[str]], ttl_seconds: float,
                 on_bootstrap: Callable[[str], None] | None = None, max_checkpoints: int = 4,
                 in_use_grace_s: float = IN_USE_GRACE_S, create_in_thread: bool = False) -> None:
        self.root = root
        self._create = create
        # Managed mode: the checkpoint of another process's database takes a secondary
        # instance and a WAL replay (hundreds of ms): off the loop, which it cannot race.
        self._create_in_thread = create_in_thread
        self._epoch = epoch
        self._column_families = column_families
        self._ttl = ttl_seconds
        self._on_bootstrap = on_bootstrap
        self._last_used: dict[str, float] = {}
        self._owner: dict[str, str] = {}
        self._max = max_checkpoints
        self._grace = in_use_grace_s
        self._sending: Counter[str] = Counter()    # files of each checkpoint being sent now
        # SST files are immutable and hard-linked into every checkpoint: checksum each once.
        self._crc_cache: dict[tuple[int, int, int, int], int] = {}
        self._lock = asyncio.Lock()

    def clear(self) -> None:
        """Checkpoints do not survive a restart: nobody can be mid-download from a dead process."""
        if self.root.exists():
            shutil.rmtree(self.root)

    def _checksum(self, path: Path) -> tuple[int, int]:
        st = path.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._crc_cache:
            self._crc_cache[key] = file_crc32c(path)
        return st.st_size, self._crc_cache[key]

    def _manifest(self, cp_id: str, seq: int) -> dict[str, Any]:
        db = self.root / cp_id / "db"
        files = []
        for entry in sorted(db.iterdir()):
            if entry.is_file():
                size, crc = self._checksum(entry)
                files.append({"name": entry.name, "size": size, "crc32c": crc})
        return {"id": cp_id, "seq": seq, "epoch": self._epoch(),
                "column_families": self._column_families(), "files": files,
                "total_bytes": sum(f["size"] for f in files)}

    async def handle_create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
        except (ValueError, RecursionError, RequestPayloadError):
            return web.json_response({"error": "body must be JSON"}, status=400)
        replica = str(body.get("node", "?")) if isinstance(body, dict) else "?"
        if len(replica) > MAX_NAME:
            return web.json_response(
                {"error": f"node must be at most {MAX_NAME} characters"}, status=400)
        async with self._lock:
            self.expire()
            # A replica asking again has abandoned its earlier checkpoint (it was killed or
            # restarted mid-download); it will resume from its staged files, not from that one.
            for old in [c for c, owner in self._owner.items() if owner == replica]:
                self._remove(old)
            refusal = self._make_room()
            if refusal:
                log.warning("checkpoint for %s refused: %s", replica, refusal)
                return web.json_response({"error": "busy", "reason": refusal}, status=503,
                                         headers={"Retry-After": str(int(self._grace))})
            cp_id = f"{int(time.time()):010d}-{secrets.token_hex(4)}"
            started = time.monotonic()
            target = self.root / cp_id / "db"
            if self._create_in_thread:
                try:
                    seq = await asyncio.to_thread(self._create, target)
                except Exception as exc:    # e.g. the service has not created its database
                    log.warning("checkpoint for %s failed: %s", replica, exc)
                    shutil.rmtree(self.root / cp_id, ignore_errors=True)
                    return web.json_response(
                        {"error": "checkpoint failed", "reason": str(exc)}, status=503,
                        headers={"Retry-After": "1"})
            else:
                # On the loop thread on purpose: no write may interleave between reading the
                # sequence number and linking the files.
                seq = self._create(target)
            manifest = await asyncio.to_thread(self._manifest, cp_id, seq)
            (self.root / cp_id / "manifest.json").write_text(json.dumps(manifest))
            self._last_used[cp_id] = time.monotonic()
            self._owner[cp_id] = replica
        if self._on_bootstrap:
            self._on_bootstrap(replica)
        log.info("checkpoint %s for %s: seq %d, %d files, %.1f MB, made in %.2f s", cp_id,
                 replica, seq, len(manifest["files"]), manifest["total_bytes"] / 1e6,
                 time.monotonic() - started)
        return web.json_response(manifest)

    def _checkpoint_dir(self, cp_id: str) -> Path:
        if not _ID.match(cp_id) or not (self.root / cp_id / "db").is_dir():
            raise web.HTTPNotFound(text=json.dumps({"error": f"no checkpoint {cp_id!r}"}),
                                   content_type="application/json")
        return self.root / cp_id

    async def handle_file(self, request: web.Request) -> web.FileResponse:
        cp_dir = self._checkpoint_dir(request.match_info["id"])
        name = request.match_info["name"]
        path = cp_dir / "db" / name
        if not _FILE.match(name) or not path.is_file():
            raise web.HTTPNotFound(text=json.dumps({"error": f"no file {name!r}"}),
                                   content_type="application/json")
        self._last_used[cp_dir.name] = time.monotonic()
        return _Sending(path, self, cp_dir.name)

    async def handle_delete(self, request: web.Request) -> web.Response:
        cp_dir = self._checkpoint_dir(request.match_info["id"])
        self._remove(cp_dir.name)
        return web.json_response({"deleted": cp_dir.name})

    def _remove(self, cp_id: str) -> None:
        shutil.rmtree(self.root / cp_id, ignore_errors=True)
        self._last_used.pop(cp_id, None)
        self._owner.pop(cp_id, None)
        log.info("checkpoint %s removed", cp_id)

    def expire(self) -> None:
        now = time.monotonic()
        for cp_id, used in list(self._last_used.items()):
            if now - used > self._ttl and not self._sending[cp_id]:
                self._remove(cp_id)

    def in_use(self, cp_id: str) -> bool:
        return bool(self._sending[cp_id]) or (
            time.monotonic() - self._last_used.get(cp_id, float("-inf")) < self._grace)

    def _make_room(self) -> str | None:
        """Remove idle checkpoints (least recently used first) until one more fits; or why not."""
        while len(self._last_used) >= self._max:
            idle = [c for c in self._last_used if not self.in_use(c)]
            if not idle:
                return (f"all {len(self._last_used)} checkpoints (replication.max_checkpoints "
                        f"= {self._max}) are in use by {sorted(set(self._owner.values()))}; "
                        f"retry once one of those bootstraps is done")
            oldest = min(idle, key=lambda c: self._last_used[c])
            log.info("checkpoint %s of %s is idle: removed to make room "
                     "(replication.max_checkpoints = %d)", oldest, self._owner.get(oldest),
                     self._max)
            self._remove(oldest)
        return None

    def _sent(self, cp_id: str, started: bool) -> None:
        if started:
            self._sending[cp_id] += 1
            return
        self._sending[cp_id] -= 1
        if self._sending[cp_id] <= 0:
            del self._sending[cp_id]
        if cp_id in self._last_used:
            self._last_used[cp_id] = time.monotonic()

    def list_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir()) if self.root.exists() else []


class _Sending(web.FileResponse):
    """A checkpoint file, counted as in use from the first byte sent until the last (aiohttp
    sends a file after the handler returned, in ``prepare``)."""

    def __init__(self, path: Path, service: CheckpointService, cp_id: str) -> None:
        super().__init__(path, chunk_size=1 << 20)
        self._service = service
        self._cp_id = cp_id

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        self._service._sent(self._cp_id, started=True)
        try:
            return await super().prepare(request)
        finally:
            self._service._sent(self._cp_id, started=False)




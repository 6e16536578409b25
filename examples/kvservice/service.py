"""kvservice: a small key-value HTTP service that embeds RocksDB, run by hacluster's managed mode.

hacluster starts it with HACLUSTER_ROLE=primary on the primary (it opens the database
read-write and is its only writer) and, when configured, with HACLUSTER_ROLE=replica on the
replicas (it opens hacluster's copy as a RocksDB secondary instance, catches up before each
read, and refuses writes). hacluster ships the WAL this process writes to the replicas.

A secondary instance's catch-up can keep serving a key's older value from its memtable after
the copy it follows flushed (or reopened with) a newer one — RocksDB issues #14444 and #15051,
present in rocksdict 0.3.29 — until later writes or a reopen: this service opens the instance
again whenever a catch-up shows a new level-0 file (what a flush leaves), see ``Secondary``.

    PUT /kv/{key}   body = value: written; with KVSERVICE_WAIT=1 acknowledged (200) only once
                    hacluster says the write is held (GET $HACLUSTER_API_URL/v1/wait?seq=N),
                    else 503 with "outcome": "unknown" (written here, not acknowledged)
    GET /kv/{key}   the value, or 404
    GET /health     200 {"role": ..., "seq": ...}

Environment: HACLUSTER_ROLE, HACLUSTER_DB_PATH, HACLUSTER_API_URL (set by hacluster);
KVSERVICE_PORT (or --port), KVSERVICE_WAIT=1, KVSERVICE_WAIT_TIMEOUT_MS (default 5000),
KVSERVICE_TOKEN (a Bearer token for hacluster's API), KVSERVICE_FSYNC=1 (or --fsync);
KVSERVICE_RECYCLE_LOG_FILE_NUM=N (N > 0: a misconfigured service, for tests: the primary opens
its database with WAL recycling, which hacluster refuses).
SIGTERM or SIGINT: the database is closed and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading

import aiohttp
from aiohttp import web
from rocksdict import AccessType, Options, Rdict, WriteOptions

log = logging.getLogger("kvservice")


def options(role: str) -> Options:
    opts = Options(raw_mode=True)
    # hacluster ships this WAL: keep old logs around for a while, and never recycle them.
    opts.set_wal_ttl_seconds(3600)
    opts.set_wal_size_limit_mb(1024)
    opts.set_recycle_log_file_num(0)
    recycle = int(os.environ.get("KVSERVICE_RECYCLE_LOG_FILE_NUM", "0"))
    if recycle > 0 and role == "primary":
        # Misconfigured on purpose (tests). RocksDB drops recycling while archived logs are
        # kept, so retention goes too: the OPTIONS file then says recycle_log_file_num=N.
        opts.set_wal_ttl_seconds(0)
        opts.set_wal_size_limit_mb(0)
        opts.set_recycle_log_file_num(recycle)
    if role == "primary":
        opts.create_if_missing(True)
    else:
        opts.set_max_open_files(-1)             # required of a secondary instance
    return opts


class Secondary:
    """A RocksDB secondary instance of hacluster's copy, kept current for reads.

    After the copy flushes, a catch-up can leave the instance's memtable holding a key's
    value from before the flush, which then hides the newer one in the new file (RocksDB
    #14444, #15051); a reopen reads the files afresh. So a catch-up that shows a level-0
    file not seen before opens the instance again. One lock: a reopen never runs under a read.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.scratch = tempfile.mkdtemp(prefix="kvservice-secondary-")   # its own small state
        self.lock = threading.Lock()
        self.reopens = 0
        self.db = self._open()
        self.level0 = self._level0()

    def _open(self) -> Rdict:
        return Rdict(self.path, options("replica"), access_type=AccessType.secondary(self.scratch))

    def _level0(self) -> set[str]:
        return {f["name"] for f in self.db.live_files() if f["level"] == 0}

    def current(self) -> Rdict:
        """Caught up with the copy, and opened again if that shows a flush; hold ``lock``."""
        self.db.try_catch_up_with_primary()
        level0 = self._level0()
        if not level0 <= self.level0:
            self.db.close()
            self.db = self._open()
            self.reopens += 1
            level0 = self._level0()
        self.level0 = level0
        return self.db

    def get(self, key: bytes) -> bytes | None:
        with self.lock:
            value = self.current().get(key)
        return value if isinstance(value, bytes) else None

    def seq(self) -> int:
        with self.lock:
            return int(self.current().latest_sequence_number())

    def close(self) -> None:
        with self.lock:
            self.db.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


class KV:
    """``db``: the database, read-write (primary) or a ``Secondary`` (replica)."""

    def __init__(self, role: str, db: Rdict | Secondary, fsync: bool, api_url: str,
                 wait: bool, wait_timeout_ms: int, token: str | None) -> None:
        self.role, self.db, self.api_url = role, db, api_url.rstrip("/")
        self.wait, self.wait_timeout_ms = wait, wait_timeout_ms
        self.write_opts = WriteOptions()
        self.write_opts.sync = fsync
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session: aiohttp.ClientSession | None = None

    def _write(self, key: bytes, value: bytes) -> int:
        assert isinstance(self.db, Rdict)
        self.db.put(key, value, self.write_opts)
        # With other writers this may be beyond our own write: fine to wait for.
        return int(self.db.latest_sequence_number())

    def _read(self, key: bytes) -> bytes | None:
        if isinstance(self.db, Secondary):
            return self.db.get(key)
        value = self.db.get(key)
        return value if isinstance(value, bytes) else None

    def latest_seq(self) -> int:
        if isinstance(self.db, Secondary):
            return self.db.seq()
        return int(self.db.latest_sequence_number())

    async def put(self, request: web.Request) -> web.Response:
        if self.role != "primary":
            return web.json_response({"error": "read-only replica"}, status=503)
        key, value = request.match_info["key"].encode(), await request.read()
        seq = await asyncio.to_thread(self._write, key, value)
        if not self.wait:
            return web.json_response({"seq": seq})
        error, epoch = await self._held(seq)
        if error is None:
            return web.json_response({"seq": seq, "epoch": epoch})
        return web.json_response({"error": error, "seq": seq, "outcome": "unknown"}, status=503)

    async def _held(self, seq: int) -> tuple[str | None, int | None]:
        """(None, the epoch that holds it) once hacluster says ``seq`` is held; else why not."""
        if self.session is None:            # one keep-alive connection pool to hacluster
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.wait_timeout_ms / 1000 + 5))
        params = {"seq": str(seq), "timeout_ms": str(self.wait_timeout_ms)}
        try:
            async with self.session.get(f"{self.api_url}/v1/wait", params=params,
                                        headers=self.headers) as resp:
                if resp.status == 200:
                    return None, (await resp.json()).get("epoch")
                return f"hacluster answered {resp.status}: {(await resp.text())[:200]}", None
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"hacluster did not answer: {exc!r}", None

    async def get(self, request: web.Request) -> web.Response:
        value = await asyncio.to_thread(self._read, request.match_info["key"].encode())
        if value is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(body=value, content_type="application/octet-stream")

    async def health(self, request: web.Request) -> web.Response:
        seq = await asyncio.to_thread(self.latest_seq)
        return web.json_response({"role": self.role, "seq": seq})


async def serve(args: argparse.Namespace) -> None:
    role = os.environ.get("HACLUSTER_ROLE", "primary")
    path = os.environ["HACLUSTER_DB_PATH"]
    db = Rdict(path, options(role)) if role == "primary" else Secondary(path)
    kv = KV(role, db, args.fsync, os.environ.get("HACLUSTER_API_URL", "http://127.0.0.1:8701"),
            os.environ.get("KVSERVICE_WAIT") == "1",
            int(os.environ.get("KVSERVICE_WAIT_TIMEOUT_MS", "5000")),
            os.environ.get("KVSERVICE_TOKEN"))
    app = web.Application()
    app.router.add_put("/kv/{key}", kv.put)
    app.router.add_get("/kv/{key}", kv.get)
    app.router.add_get("/health", kv.health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    for signo in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signo, stop.set)
    try:
        await web.TCPSite(runner, args.host, args.port).start()
        log.info("kvservice: %s on %s:%d, db %s, seq %d", role, args.host, args.port, path,
                 kv.latest_seq())
        await stop.wait()
    finally:
        await runner.cleanup()              # no request is using the database any more
        if kv.session is not None:
            await kv.session.close()
        db.close()
        log.info("kvservice: %s stopped, db %s closed", role, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("KVSERVICE_PORT", 8080)))
    parser.add_argument("--fsync", action="store_true",
                        default=os.environ.get("KVSERVICE_FSYNC") == "1",
                        help="sync the WAL on every write")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()

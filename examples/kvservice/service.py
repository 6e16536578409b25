"""kvservice: a small key-value HTTP service that embeds RocksDB, run by hacluster's managed mode.

hacluster starts it with HACLUSTER_ROLE=primary on the primary (it opens the database
read-write and is its only writer) and, when configured, with HACLUSTER_ROLE=replica on the
replicas (it opens hacluster's copy as a RocksDB secondary instance, catches up before each
read, and refuses writes). hacluster ships the WAL this process writes to the replicas.

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

import aiohttp
from aiohttp import web
from rocksdict import AccessType, Options, Rdict, WriteOptions

log = logging.getLogger("kvservice")


def open_db(role: str, path: str) -> tuple[Rdict, str | None]:
    """The primary opens the database read-write (created if missing); a replica opens it as
    a secondary instance, whose own small state lives in a temporary directory."""
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
        return Rdict(path, opts), None
    opts.set_max_open_files(-1)                 # required of a secondary instance
    secondary = tempfile.mkdtemp(prefix="kvservice-secondary-")
    return Rdict(path, opts, access_type=AccessType.secondary(secondary)), secondary


class KV:
    def __init__(self, role: str, db: Rdict, fsync: bool, api_url: str, wait: bool,
                 wait_timeout_ms: int, token: str | None) -> None:
        self.role, self.db, self.api_url = role, db, api_url.rstrip("/")
        self.wait, self.wait_timeout_ms = wait, wait_timeout_ms
        self.write_opts = WriteOptions()
        self.write_opts.sync = fsync
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.session: aiohttp.ClientSession | None = None

    def _write(self, key: bytes, value: bytes) -> int:
        self.db.put(key, value, self.write_opts)
        # With other writers this may be beyond our own write: fine to wait for.
        return int(self.db.latest_sequence_number())

    def _read(self, key: bytes) -> bytes | None:
        if self.role != "primary":
            self.db.try_catch_up_with_primary()
        value = self.db.get(key)
        return value if isinstance(value, bytes) else None

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
        if self.role != "primary":
            await asyncio.to_thread(self.db.try_catch_up_with_primary)
        return web.json_response({"role": self.role, "seq": self.db.latest_sequence_number()})


async def serve(args: argparse.Namespace) -> None:
    role = os.environ.get("HACLUSTER_ROLE", "primary")
    path = os.environ["HACLUSTER_DB_PATH"]
    db, secondary = open_db(role, path)
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
                 db.latest_sequence_number())
        await stop.wait()
    finally:
        await runner.cleanup()              # no request is using the database any more
        if kv.session is not None:
            await kv.session.close()
        db.close()
        if secondary:
            shutil.rmtree(secondary, ignore_errors=True)
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

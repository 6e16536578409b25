"""Phases of bench/api.py that measure what the Python clients and the new endpoints give.

- ``cas_phase``: conditional PUTs (``?if_seq=``, each task naming the seq its previous write
  got) from the same kind of load generator as the plain PUT phase (its own interpreter,
  aiohttp, 32 keep-alive connections): ``cas_rate``, comparable with ``put_rate_sync``.
- ``watch_lag_phase``: a ``Client`` watcher in its own process and 8 ``AsyncClient`` writers;
  for every write, the time from its acknowledgement reaching the writer to its change
  reaching the watcher (``watch_lag_p99_ms``; both read CLOCK_MONOTONIC). Changes the watcher
  sees before the writer sees the acknowledgement count as 0; a change never seen counts in
  ``watch_missing``.
- ``client_phase``: the blocking ``Client``, one thread, sequential PUTs over its keep-alive
  pool (``client_put_rate_sync``), and for the fair baseline the same loop with a bare aiohttp
  session on one connection in its own interpreter (``raw_put_rate_1conn``).

Every phase counts its failed requests (``errors``) and keeps their times apart.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacluster.client import AsyncClient, Client, HaclusterError
from hacluster.testing.harness import TOKEN


def _p99(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(0.99 * len(values)))] if values else 0.0


def _cas_load(port: int, seconds: float, clients: int, out: Any) -> None:
    """Runs in its own process: ``clients`` loops of PUT ?if_seq=<the seq of the previous
    write of the same key> for ``seconds``."""
    import aiohttp

    async def main() -> dict[str, Any]:
        ok: list[float] = []
        failed: list[float] = []
        refused = 0
        url = f"http://127.0.0.1:{port}"
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(
                connector=connector, headers={"Authorization": f"Bearer {TOKEN}"},
                timeout=aiohttp.ClientTimeout(total=30)) as session:
            end = time.monotonic() + seconds

            async def one(c: int) -> None:
                nonlocal refused
                seq = 0                        # the key does not exist yet
                while time.monotonic() < end:
                    start = time.perf_counter()
                    try:
                        async with session.put(f"{url}/v1/kv/cas-{c:02d}?if_seq={seq}",
                                               data=b"v" * 100) as resp:
                            body = await resp.json(content_type=None)
                            status = resp.status
                    except (aiohttp.ClientError, TimeoutError, ValueError):
                        status, body = 0, {}
                    took = time.perf_counter() - start
                    if status == 200:
                        ok.append(took)
                        seq = int(body["seq"])
                    else:
                        failed.append(took)
                        refused += status == 412
                        seq = int(body.get("seq", seq)) if status == 412 else seq

            started = time.monotonic()
            await asyncio.gather(*(one(c) for c in range(clients)))
            return {"ok": ok, "failed": failed, "refused": refused,
                    "seconds": time.monotonic() - started}

    out.put(asyncio.run(main()))


def cas_phase(port: int, seconds: float, clients: int = 32) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_cas_load, args=(port, seconds, clients, q))
    p.start()
    result = q.get(timeout=seconds + 120)
    p.join(30)
    ok, failed = result["ok"], result["failed"]
    every = ok + failed
    return {"cas_rate": len(ok) / result["seconds"],
            "cas_p99_ms": 1000 * _p99(every) if every else None,
            "cas_refused": result["refused"], "errors": len(failed),
            "failed_p99_ms": 1000 * _p99(failed) if failed else None}


def _watcher(urls: list[str], since: int, out: Any) -> None:
    """Runs in its own process (its own interpreter and event loop, so the writers' work
    does not delay it): a ``Client`` watch, the time each change arrived, until ``wl/end``."""
    seen: dict[int, float] = {}
    for event in Client(urls, TOKEN).watch("wl/", since_seq=since):
        seen.setdefault(event.seq, time.perf_counter())     # CLOCK_MONOTONIC: shared
        if event.key == b"wl/end":
            break
    out.put(seen)


def watch_lag_phase(urls: list[str], seconds: float, writers: int = 8) -> dict[str, Any]:
    start_seq = Client(urls, TOKEN).put("wl/start", "x").seq + 1
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    watcher = ctx.Process(target=_watcher, args=(urls, start_seq, q))
    watcher.start()

    async def write() -> tuple[dict[int, float], int]:
        acked: dict[int, float] = {}
        errors = 0
        async with AsyncClient(urls, TOKEN) as wc:
            end = time.monotonic() + seconds

            async def one(w: int) -> None:
                nonlocal errors
                i = 0
                while time.monotonic() < end:
                    i += 1
                    try:
                        r = await wc.put(f"wl/{w}/{i}", b"v" * 100)
                    except HaclusterError:
                        errors += 1
                        continue
                    acked[r.seq] = time.perf_counter()

            await asyncio.gather(*(one(w) for w in range(writers)))
            await wc.put("wl/end", "x")
        return acked, errors

    time.sleep(1.0)                      # the watcher's interpreter starts and connects
    acked, errors = asyncio.run(write())
    seen = q.get(timeout=60)
    watcher.join(30)
    lags = [max(0.0, seen[s] - t) for s, t in acked.items() if s in seen]
    return {"watch_lag_p50_ms": 1000 * statistics.median(lags) if lags else None,
            "watch_lag_p99_ms": 1000 * _p99(lags) if lags else None,
            "watch_events": len(lags), "watch_missing": sum(1 for s in acked if s not in seen),
            "watch_write_rate": len(acked) / seconds, "errors": errors}


def _raw_one_connection(port: int, seconds: float, out: Any) -> None:
    import aiohttp

    async def main() -> dict[str, Any]:
        n, failed = 0, 0
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1),
                headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            end = time.monotonic() + seconds
            started = time.monotonic()
            while time.monotonic() < end:
                async with session.put(f"http://127.0.0.1:{port}/v1/kv/raw1-{n}",
                                       data=b"v" * 100) as resp:
                    await resp.read()
                    n += resp.status == 200
                    failed += resp.status != 200
            return {"rate": n / (time.monotonic() - started), "errors": failed}

    out.put(asyncio.run(main()))


def client_phase(urls: list[str], port: int, seconds: float) -> dict[str, Any]:
    client = Client(urls, TOKEN)
    client.put("client/warm", "x")
    n, errors = 0, 0
    end = time.monotonic() + seconds
    started = time.monotonic()
    while time.monotonic() < end:
        try:
            client.put(f"client/{n}", b"v" * 100)
            n += 1
        except HaclusterError:
            errors += 1
    rate = n / (time.monotonic() - started)
    client.close()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_raw_one_connection, args=(port, seconds, q))
    p.start()
    raw = q.get(timeout=seconds + 60)
    p.join(30)
    return {"client_put_rate_sync": rate, "raw_put_rate_1conn": raw["rate"],
            "errors": errors + raw["errors"]}

"""Replication benchmark: every figure is a ratio against a baseline measured in the same run.

1. Cluster throughput: a primary and two replicas (real processes on loopback); a load process
   writes 100-op batches through POST /v1/batch (CBOR) as fast as the primary accepts them.
   write_rate = primary ops/s; apply_rate = a replica's ops/s over the same window.
2. Lag: the load process paces at half the sustained rate; lag = replica apply time (traced by the
   replica, CLOCK_MONOTONIC) minus the client's ack time for the same batch.
3. WAL replay: a pre-written WAL (>= 200 MB) replayed into an empty DB through the production
   path (WAL reader + frame encoder in one process, frame decoder + applier in another) against
   applying the already-decoded ops with bare rocksdict WriteBatch (the ceiling).
4. Bootstrap: a replica's checkpoint download + verify + install from a primary node, against
   `cp -r` of the same DB directory.

Workload: keys 16-32 bytes, values uniform 0-512 bytes, 4 column families, ~4 % deletes and ~1 %
range deletes. `--quick` uses smaller sizes (same keys in the JSON). `--json` prints one JSON
object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import gc
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import rocksdict

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hacluster.config import StorageConfig
from hacluster.node import GC_GEN0_THRESHOLD
from hacluster.replication import frames
from hacluster.replication.applier import Verdict, check_frame
from hacluster.replication.bootstrap import Bootstrapper, install
from hacluster.store import Store
from hacluster.testing.harness import CFS, TOKEN, Cluster, wait_for
from hacluster.wal.batch import DELETE, DELETE_RANGE, PUT
from hacluster.wal.reader import WalReader, list_logs

OPS_PER_BATCH = 100
# Large memtables: neither WAL-replay run is slowed by flushes or compactions.
WAL_BENCH_STORAGE = StorageConfig(write_buffer_size_mb=512)
KEY_ORDER = ["write_rate", "apply_rate", "apply_ratio", "lag_p50_ms", "lag_p99_ms", "wal_mb_s",
             "wal_ops_s", "wal_apply_ratio", "raw_apply_mb_s", "bootstrap_mb_s", "cp_mb_s",
             "bootstrap_ratio", "cp_sync_mb_s", "bootstrap_sync_ratio"]


# -- workload --------------------------------------------------------------------------------

def make_ops(rng: random.Random, n: int = OPS_PER_BATCH) -> list[tuple[int, str, bytes, bytes]]:
    ops = []
    for _ in range(n):
        cf = CFS[rng.randrange(4)]
        key = rng.randbytes(rng.randint(16, 32))
        r = rng.random()
        if r < 0.95:
            ops.append((PUT, cf, key, rng.randbytes(rng.randint(0, 512))))
        elif r < 0.99:
            ops.append((DELETE, cf, key, b""))
        else:
            end = key[:-1] + bytes([min(255, key[-1] + 1)]) + b"\xff"
            ops.append((DELETE_RANGE, cf, key, end))
    return ops


def request_body(ops: list[tuple[int, str, bytes, bytes]]) -> bytes:
    names = {PUT: "put", DELETE: "delete", DELETE_RANGE: "delete_range"}
    out = []
    for kind, cf, key, value in ops:
        if kind == DELETE_RANGE:
            out.append({"op": "delete_range", "cf": cf, "start": key, "end": value})
        elif kind == DELETE:
            out.append({"op": names[kind], "cf": cf, "key": key})
        else:
            out.append({"op": "put", "cf": cf, "key": key, "value": value})
    return cbor2.dumps({"ops": out})


# -- load process ----------------------------------------------------------------------------

async def _load(port: int, seconds: float, concurrency: int, rate: float | None,
                seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    bodies = [request_body(make_ops(rng)) for _ in range(400)]
    url = f"http://127.0.0.1:{port}/v1/batch"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/cbor"}
    acks: list[tuple[int, int]] = []
    done = 0
    errors = 0
    deadline = time.monotonic() + seconds
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker(i: int) -> None:
            nonlocal done, errors
            j = i
            next_at = time.monotonic()
            while time.monotonic() < deadline:
                if rate:
                    next_at += OPS_PER_BATCH / rate
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                async with session.post(url, data=bodies[j % len(bodies)],
                                        headers=headers) as resp:
                    body = await resp.read()
                    t = time.monotonic_ns()
                if resp.status != 200:
                    errors += 1
                    continue
                done += OPS_PER_BATCH
                if rate:
                    acks.append((json.loads(body)["seq"], t))
                j += concurrency
        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"ops": done, "elapsed": elapsed, "errors": errors, "acks": acks}


def _load_main(port: int, seconds: float, concurrency: int, rate: float | None, seed: int,
               out: Any) -> None:
    out.put(asyncio.run(_load(port, seconds, concurrency, rate, seed)))


class Load:
    """The load generator, in its own process so the client does not share our interpreter."""

    def __init__(self, port: int, seconds: float, concurrency: int, rate: float | None,
                 seed: int) -> None:
        ctx = mp.get_context("spawn")
        self.q = ctx.Queue()
        self.seconds = seconds
        self.proc = ctx.Process(target=_load_main,
                                args=(port, seconds, concurrency, rate, seed, self.q))
        self.proc.start()

    def result(self) -> dict[str, Any]:
        result: dict[str, Any] = self.q.get(timeout=self.seconds + 120)
        self.proc.join(30)
        return result


def run_load(port: int, seconds: float, concurrency: int, rate: float | None,
             seed: int) -> dict[str, Any]:
    return Load(port, seconds, concurrency, rate, seed).result()


# -- 1 + 2: cluster throughput and lag -------------------------------------------------------

def bench_cluster(root: Path, seconds: float) -> dict[str, float]:
    trace = root / "apply-trace.txt"
    cluster = Cluster(root / "cluster", storage={"write_buffer_size_mb": 64},
                      replication={"heartbeat_interval": 0.5})
    cluster.nodes["n2"].env["HACLUSTER_APPLY_TRACE"] = str(trace)
    try:
        cluster.start()
        cluster.wait_converged()
        p, r = cluster.primary, cluster.nodes["n2"]
        run_load(p.port, 2.0, 8, None, 1)  # warm-up
        cluster.wait_converged(timeout=60)
        writes_before = p.status()["writes"]
        running = Load(p.port, seconds + 3, 8, None, 2)
        # Measure inside the load window (the load process starts up in ~1 s), so neither the
        # start-up nor the replica catching up after the load ends counts.
        wait_for(lambda: p.status()["writes"] > writes_before + 50, 30,
                 "the load to start")
        time.sleep(0.5)
        p0, r0, t0 = p.status()["applied_seq"], r.status()["applied_seq"], time.monotonic()
        time.sleep(seconds)
        p1, r1, t1 = p.status()["applied_seq"], r.status()["applied_seq"], time.monotonic()
        load = running.result()
        write_rate = (p1 - p0) / (t1 - t0)
        apply_rate = (r1 - r0) / (t1 - t0)
        cluster.wait_converged(timeout=120)
        print(f"sustained: primary {write_rate:,.0f} ops/s, replica n2 {apply_rate:,.0f} ops/s "
              f"(client saw {load['ops'] / load['elapsed']:,.0f} ops/s, {load['errors']} errors)")

        # Let the flushes and compactions the sustained load left behind finish first, so the
        # lag figure is about replication, not a compaction backlog.
        wait_for(lambda: all(not any(n.status()["rocksdb"].values())
                             for n in cluster.nodes.values()), 120, "compactions to settle")
        trace.write_text("")
        paced = run_load(p.port, seconds, 1, write_rate / 2, 3)
        cluster.wait_converged(timeout=60)
        applied: dict[int, int] = {}
        for line in trace.read_text().split("\n"):
            if line:
                seq, t = line.split()
                applied[int(seq)] = int(t)
        lags = sorted(max(0, applied[seq] - t) / 1e6 for seq, t in paced["acks"]
                      if seq in applied)
        before = sum(1 for seq, t in paced["acks"] if seq in applied and applied[seq] <= t)
        assert len(lags) == len(paced["acks"]), "every acknowledged batch must be applied"
        p50 = statistics.median(lags)
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        print(f"lag at {paced['ops'] / paced['elapsed']:,.0f} ops/s (half the sustained rate): "
              f"p50 {p50:.2f} ms, p99 {p99:.2f} ms over {len(lags)} batches; "
              f"{100 * before / len(lags):.0f} % applied before the client saw the ack")
        return {"write_rate": write_rate, "apply_rate": apply_rate,
                "apply_ratio": apply_rate / write_rate, "lag_p50_ms": p50, "lag_p99_ms": p99}
    finally:
        cluster.stop()


# -- 3: WAL parse + apply --------------------------------------------------------------------

def wal_bytes(db_dir: Path) -> int:
    return sum(p.stat().st_size for p in list_logs(db_dir).values())


def write_wal(db_dir: Path, target_mb: int) -> int:
    storage = StorageConfig(write_buffer_size_mb=256, wal_size_limit_mb=1 << 20)
    store = Store(db_dir, CFS, storage)
    rng = random.Random(7)
    pool = [make_ops(rng) for _ in range(2000)]
    i = 0
    while True:
        for _ in range(200):
            store.write(pool[i % len(pool)])
            i += 1
        if wal_bytes(db_dir) >= target_mb << 20:
            break
    seq = store.latest_seq()
    store.close()
    return seq


def _produce(db_dir: str, fd: int) -> None:
    """Runs in its own process, as the primary does: read the WAL, encode frames, send."""
    reader = WalReader(db_dir, 1, decode_ops=False)
    out = os.fdopen(fd, "wb", buffering=0)
    encode = frames.encode_batch
    while True:
        # Small reads keep both processes busy: the consumer applies one chunk while the
        # producer decodes the next (a TCP stream's socket buffers do the same for a replica).
        batches = reader.read(max_bytes=256 << 10)
        if not batches:
            break
        out.write(b"".join(encode(1, b.seq, b.count, b.payload) for b in batches))
    out.close()


def raw_apply(decoded: list[Any], dst: Path, names: list[str], last_seq: int) -> float:
    """The ceiling: apply already-decoded ops with bare rocksdict WriteBatch; seconds taken."""
    store = Store(dst, CFS, WAL_BENCH_STORAGE)
    db = store._db
    handles = [store.handle(n) for n in names]
    started = time.perf_counter()
    for b in decoded:
        wb = rocksdict.WriteBatch(raw_mode=True)
        for kind, cf, key, value in b.ops:
            if kind == PUT:
                wb.put(key, value, handles[cf])
            elif kind == DELETE_RANGE:
                wb.delete_range(key, value, handles[cf])
            else:
                wb.delete(key, handles[cf])
        db.write(wb)
    elapsed = time.perf_counter() - started
    assert store.latest_seq() == last_seq
    store.close()
    return elapsed


def pipeline_apply(src: Path, dst: Path, names: list[str], last_seq: int) -> tuple[float, Any]:
    """The production path: reader process -> frames -> decoder + applier; (seconds, hash)."""
    store = Store(dst, CFS, WAL_BENCH_STORAGE)
    rfd, wfd = os.pipe()
    fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, 1 << 20)
    started = time.perf_counter()
    proc = mp.get_context("fork").Process(target=_produce, args=(str(src), wfd))
    proc.start()
    os.close(wfd)
    decoder = frames.FrameDecoder(64 << 20)
    handle_map: dict[int, Any] = store.handles_for(names)
    with os.fdopen(rfd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(1 << 20):
            for frame in decoder.feed(chunk):
                assert isinstance(frame, frames.BatchFrame)
                applied = store.latest_seq()
                if check_frame(applied, 1, frame).verdict is not Verdict.APPLY:
                    raise AssertionError(f"unexpected frame at {frame.seq}, applied {applied}")
                batch = store.prepare(frame.wb, handle_map)
                store.commit(batch, frame.seq, frame.count, sync=False)
    elapsed = time.perf_counter() - started
    proc.join()
    assert store.latest_seq() == last_seq, "replay must end at the source's sequence number"
    digest = store.content_hash()["column_families"]
    store.close()
    return elapsed, digest


def bench_wal(root: Path, target_mb: int, rounds: int) -> dict[str, float]:
    src = root / "walsrc" / "db"
    last_seq = write_wal(src, target_mb)
    size = wal_bytes(src)
    names = rocksdict.Rdict.list_cf(str(src), rocksdict.Options(raw_mode=True))
    source = Store(src, CFS, StorageConfig(write_buffer_size_mb=256))
    expected = source.content_hash()["column_families"]
    source.close()
    os.sync()
    print(f"WAL: {size / 1e6:.0f} MB in {len(list_logs(src))} logs, {last_seq:,} ops")
    reader = WalReader(src, 1)
    decoded = []
    while batch_list := reader.read(max_bytes=64 << 20):
        decoded.extend(batch_list)
    reader.close()
    # Both paths under the collector settings a node uses (Node.start).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
    raw_s, pipe_s = [], []
    # Alternate the two and keep each one's best run: this machine's noise only slows runs.
    for i in range(rounds):
        raw_s.append(raw_apply(decoded, root / f"raw{i}", names, last_seq))
        shutil.rmtree(root / f"raw{i}")
        os.sync()
        seconds, digest = pipeline_apply(src, root / f"replay{i}", names, last_seq)
        assert digest == expected, "the replayed DB must equal the source in every CF"
        pipe_s.append(seconds)
        shutil.rmtree(root / f"replay{i}")
        os.sync()
    raw_mb_s, wal_mb_s = size / 1e6 / min(raw_s), size / 1e6 / min(pipe_s)
    print(f"WAL replay: {wal_mb_s:.1f} MB/s ({last_seq / min(pipe_s):,.0f} ops/s) "
          f"parse+apply; raw WriteBatch apply {raw_mb_s:.1f} MB/s "
          f"({last_seq / min(raw_s):,.0f} ops/s); best of {rounds}")
    return {"wal_mb_s": wal_mb_s, "wal_ops_s": last_seq / min(pipe_s),
            "wal_apply_ratio": wal_mb_s / raw_mb_s, "raw_apply_mb_s": raw_mb_s}


# -- 4: bootstrap ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_bootstrap(root: Path, target_mb: int) -> dict[str, float]:
    cluster = Cluster(root / "boot", names=["n1"])
    db_dir = cluster.primary.data_dir / "db"
    store = Store(db_dir, CFS, StorageConfig(write_buffer_size_mb=64))
    rng = random.Random(11)
    while dir_bytes(db_dir) < target_mb << 20:
        for _ in range(500):
            store.write([(PUT, CFS[rng.randrange(4)], rng.randbytes(24), rng.randbytes(1000))
                         for _ in range(100)])
        store.flush()
    store.compact()
    # cp -r copies what a bootstrap transfers: a checkpoint of the DB (not its WAL archive).
    cp_src = root / "cp-source"
    store.checkpoint(cp_src)
    store.close()
    try:
        cluster.start()
        # Warm the page cache the same way for both sides.
        subprocess.run(["cat", *map(str, db_dir.glob("*.sst"))], stdout=subprocess.DEVNULL,
                       check=True)
        cp_dst = root / "cp-copy"
        cp_bytes = dir_bytes(cp_src)

        def timed_cp(sync: bool) -> float:
            started = time.perf_counter()
            subprocess.run(["cp", "-r", str(cp_src), str(cp_dst)], check=True)
            if sync:  # the same durability the bootstrap gives: every file fsync'd
                subprocess.run(["sync", *map(str, cp_dst.iterdir())], check=True)
            elapsed = time.perf_counter() - started
            shutil.rmtree(cp_dst)
            return elapsed

        cp_s = statistics.median(timed_cp(False) for _ in range(3))
        cp_sync_s = statistics.median(timed_cp(True) for _ in range(3))

        replica = root / "replica"
        replica.mkdir()

        async def fetch() -> dict[str, Any]:
            boot = Bootstrapper(replica, f"http://127.0.0.1:{cluster.primary.port}",
                                {"Authorization": f"Bearer {TOKEN}"}, "bench", 1 << 20)
            manifest = await boot.fetch()
            install(replica)
            return manifest

        started = time.perf_counter()
        manifest = asyncio.run(fetch())
        boot_s = time.perf_counter() - started
        check = Store(replica / "db", CFS, StorageConfig())
        assert check.latest_seq() == manifest["seq"]
        check.close()
    finally:
        cluster.stop()
    boot_mb_s = manifest["total_bytes"] / 1e6 / boot_s
    cp_mb_s = cp_bytes / 1e6 / cp_s
    cp_sync_mb_s = cp_bytes / 1e6 / cp_sync_s
    print(f"bootstrap: {manifest['total_bytes'] / 1e6:.0f} MB in {boot_s:.2f} s = "
          f"{boot_mb_s:.0f} MB/s (checkpoint, checksums, HTTP, fsync, install); "
          f"cp -r {cp_bytes / 1e6:.0f} MB: {cp_mb_s:.0f} MB/s, cp -r + sync: "
          f"{cp_sync_mb_s:.0f} MB/s (medians of 3)")
    return {"bootstrap_mb_s": boot_mb_s, "cp_mb_s": cp_mb_s, "bootstrap_ratio": boot_mb_s / cp_mb_s,
            "cp_sync_mb_s": cp_sync_mb_s, "bootstrap_sync_ratio": boot_mb_s / cp_sync_mb_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 60 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--seconds", type=float, help="length of each load phase")
    parser.add_argument("--wal-mb", type=int, help="size of the pre-written WAL")
    parser.add_argument("--bootstrap-mb", type=int, help="size of the DB to bootstrap")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 20.0)
    wal_mb = args.wal_mb or (40 if args.quick else 220)
    boot_mb = args.bootstrap_mb or (100 if args.quick else 500)
    root = Path(tempfile.mkdtemp(prefix="hacluster-bench-"))
    started = time.monotonic()
    try:
        result: dict[str, float] = {}
        # Each phase starts with the previous one's dirty pages written back, so the kernel's
        # writeback does not compete with the next measurement.
        os.sync()
        result.update(bench_wal(root / "w", wal_mb, 1 if args.quick else 3))
        os.sync()
        result.update(bench_bootstrap(root / "b", boot_mb))
        os.sync()
        result.update(bench_cluster(root / "c", seconds))
        result = {k: result[k] for k in KEY_ORDER if k in result}
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"{'figure':<22}{'value':>14}   goal")
    goals = {"apply_ratio": ">= 0.95", "lag_p99_ms": "<= 5 ms", "wal_apply_ratio": ">= 0.8",
             "bootstrap_ratio": ">= 0.8 (vs cp -r)"}
    for key, value in result.items():
        print(f"{key:<22}{value:>14,.3f}   {goals.get(key, '')}")
    print(f"(total {time.monotonic() - started:.0f} s)")
    if args.json:
        print(json.dumps({k: round(v, 4) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

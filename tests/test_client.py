"""Both Python clients against a real three-node consensus cluster in sync mode: following a
SIGKILL failover with writers and watchers running, compare-and-set under contention, a
transaction's atomicity across a failover, keep-alive connections, and a watcher that stops
reading."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import pytest

from hacluster.client import (
    AsyncClient,
    Client,
    Event,
    HaclusterError,
    NoLeader,
    OutcomeUnknown,
    PreconditionFailed,
)
from hacluster.groupsync import NATIVE
from hacluster.testing.harness import TOKEN, Cluster, NodeProc, request, wait_for


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("client"), consensus=True,
                limits={"max_batch_ops": 100, "watch_send_timeout_s": 3})
    c.start()
    c.wait_primary()
    yield c
    c.stop()


def urls(cluster: Cluster) -> list[str]:
    return [f"http://127.0.0.1:{n.port}" for n in cluster.nodes.values()]


def wait_sync_standby(cluster: Cluster) -> NodeProc:
    """The primary, once the synchronous set is full (a kill then loses nothing acked)."""
    p = cluster.wait_primary()

    def full() -> bool:
        st = p.status()
        return len(st.get("consensus", {}).get("sync_set", [])) >= 1
    wait_for(full, 30, "a synchronous standby")
    return p


@dataclass
class Writer:
    """Puts ``prefix/<n>`` = n until stopped; records what was acknowledged and what not."""

    prefix: str
    acked: dict[int, int] = field(default_factory=dict)      # seq -> n
    unknown: set[int] = field(default_factory=set)           # n of writes with no answer
    errors: list[str] = field(default_factory=list)


def sync_writer(client: Client, w: Writer, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        try:
            r = client.put(f"{w.prefix}/{n}", str(n))
            w.acked[r.seq] = n
        except OutcomeUnknown:
            w.unknown.add(n)
        except (NoLeader, HaclusterError) as exc:
            w.errors.append(str(exc))
        time.sleep(0.005)


async def async_writer(client: AsyncClient, w: Writer, stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        try:
            r = await client.put(f"{w.prefix}/{n}", str(n))
            w.acked[r.seq] = n
        except OutcomeUnknown:
            w.unknown.add(n)
        except (NoLeader, HaclusterError) as exc:
            w.errors.append(str(exc))
        await asyncio.sleep(0.005)


def check_watched(events: list[Event], writers: list[Writer], who: str) -> None:
    """Every acknowledged write seen once, in seq order; nothing seen that was not written."""
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"{who}: order or duplicates"
    seen = {(e.key.decode(), e.value) for e in events}
    by_seq = {e.seq: (e.key.decode(), e.value) for e in events}
    for w in writers:
        for seq, n in w.acked.items():
            assert by_seq.get(seq) == (f"{w.prefix}/{n}", str(n).encode()), \
                f"{who}: acknowledged {w.prefix}/{n} at seq {seq} not watched"
    written = {(f"{w.prefix}/{n}", str(n).encode()) for w in writers
               for n in [*w.acked.values(), *w.unknown]}
    assert seen <= written, f"{who}: watched writes nobody made: {sorted(seen - written)[:5]}"


def test_both_clients_follow_a_sigkill_failover_with_writers_and_watchers(
        cluster: Cluster) -> None:
    old = wait_sync_standby(cluster)
    start = old.status()["applied_seq"] + 1
    sync_client = Client(urls(cluster), TOKEN)
    sync_w, async_w = Writer("fs"), Writer("fa")
    sync_seen: list[Event] = []
    async_seen: list[Event] = []
    stop, watch_stop = threading.Event(), threading.Event()

    def sync_watch() -> None:
        watcher = Client(urls(cluster), TOKEN)
        for event in watcher.watch("f", since_seq=start):
            sync_seen.append(event)
            if watch_stop.is_set() and event.seq >= target[0]:
                return

    async def async_side() -> None:
        async with AsyncClient(urls(cluster), TOKEN) as writer, \
                AsyncClient(urls(cluster), TOKEN) as watcher:
            async def watch() -> None:
                async for event in watcher.watch("f", since_seq=start):
                    async_seen.append(event)
                    if watch_stop.is_set() and event.seq >= target[0]:
                        return
            task = asyncio.create_task(watch())
            await async_writer(writer, async_w, stop)
            await asyncio.wait_for(task, 60)

    target = [1 << 62]
    threads = [threading.Thread(target=sync_writer, args=(sync_client, sync_w, stop)),
               threading.Thread(target=sync_watch),
               threading.Thread(target=lambda: asyncio.run(async_side()))]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(sync_w.acked) > 30 and len(async_w.acked) > 30, 30,
                 "writes before the kill")
        old.kill()
        new = cluster.wait_primary(30, among=[n for n in cluster.nodes.values() if n is not old])
        before = (len(sync_w.acked), len(async_w.acked))
        wait_for(lambda: len(sync_w.acked) > before[0] + 30 and len(async_w.acked) > before[1]
                 + 30, 60, "writes through the new primary")
    finally:
        stop.set()
        time.sleep(0.2)
        target[0] = max([*sync_w.acked, *async_w.acked, 0])
        watch_stop.set()
        threads[0].join(30)
        # One more write wakes a watcher that saw everything already.
        try:
            sync_client.put("f-last", "x")
        except HaclusterError:
            pass
        for t in threads:
            t.join(60)
        old.start()
    assert not any(t.is_alive() for t in threads), "a writer or watcher did not finish"
    assert new.name != old.name
    epochs = {e.epoch for e in sync_seen}
    assert len(epochs) >= 2, f"the watch did not cross the failover (epochs {epochs})"
    check_watched([e for e in sync_seen if e.key != b"f-last"], [sync_w, async_w], "sync")
    check_watched([e for e in async_seen if e.key != b"f-last"], [sync_w, async_w], "async")
    # The history of the cluster agrees: every acknowledged write is there after failover.
    for w in (sync_w, async_w):
        for n in list(w.acked.values())[::10]:
            assert sync_client.get(f"{w.prefix}/{n}") == str(n).encode()
    cluster.wait_primary(30)


def test_compare_and_set_from_16_clients_loses_no_update(cluster: Cluster) -> None:
    cluster.wait_primary()
    Client(urls(cluster), TOKEN).put("counter", "0")
    successes = [0] * 16
    deadline = time.monotonic() + 20

    def bump(i: int) -> None:
        client = Client(urls(cluster), TOKEN)
        while time.monotonic() < deadline and successes[i] < 15:
            item = client.get_item("counter")
            assert item is not None
            try:
                client.put("counter", str(int(item.value) + 1), if_seq=item.seq)
                successes[i] += 1
            except PreconditionFailed as exc:
                assert exc.seq > item.seq

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    value = Client(urls(cluster), TOKEN).get("counter")
    assert value is not None and int(value) == sum(successes)
    assert sum(successes) >= 16, "too few compare-and-sets succeeded to show anything"


def test_a_transaction_is_atomic_across_a_failover(cluster: Cluster) -> None:
    old = wait_sync_standby(cluster)
    client = Client(urls(cluster), TOKEN)
    client.batch([{"op": "put", "key": "acct/a", "value": "1000"},
                  {"op": "put", "key": "acct/b", "value": "0"}])
    start = old.status()["applied_seq"] + 1
    done, unknown, stop = [0], [0], threading.Event()

    def transfer() -> None:
        c = Client(urls(cluster), TOKEN)
        while not stop.is_set():
            try:
                a, b = c.get_item("acct/a"), c.get_item("acct/b")
                assert a is not None and b is not None
                r = c.txn([{"key": "acct/a", "seq": a.seq}, {"key": "acct/b", "seq": b.seq}],
                          [{"op": "put", "key": "acct/a", "value": str(int(a.value) - 1)},
                           {"op": "put", "key": "acct/b", "value": str(int(b.value) + 1)}])
                done[0] += r.succeeded
            except OutcomeUnknown:
                unknown[0] += 1
            except (NoLeader, HaclusterError):
                pass

    threads = [threading.Thread(target=transfer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: done[0] > 20, 30, "transfers before the kill")
        old.kill()
        cluster.wait_primary(30, among=[n for n in cluster.nodes.values() if n is not old])
        before = done[0]
        wait_for(lambda: done[0] > before + 20, 60, "transfers after the failover")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        old.start()
    a, b = int(client.get("acct/a") or b"-1"), int(client.get("acct/b") or b"-1")
    assert a + b == 1000, "a transfer was applied in part"
    assert done[0] <= b <= done[0] + unknown[0]
    # In the WAL each transfer is one write: both keys in every watched change.
    client.put("acct/zz-end", "")
    events: dict[int, set[bytes]] = {}
    for event in Client(urls(cluster), TOKEN).watch("acct/", since_seq=start):
        if event.key == b"acct/zz-end":
            break
        events.setdefault(event.seq, set()).add(event.key)
    assert len(events) >= b
    odd = {s: k for s, k in events.items() if k != {b"acct/a", b"acct/b"}}
    assert not odd, (start, odd)
    cluster.wait_primary(30)


def test_keep_alive_connections_are_reused_for_thousands_of_requests(
        cluster: Cluster) -> None:
    cluster.wait_primary()
    # These puts may be sent twice: a busy machine can let a lease run out meanwhile.
    client = Client(urls(cluster), TOKEN, retry_unknown=True)
    client.put("ka/0", "x")

    def accepted() -> int:
        return sum(n.status()["http"]["connections_accepted"] for n in cluster.nodes.values())

    before = accepted()
    for i in range(1000):
        client.put(f"ka/{i}", "x")
        assert client.get(f"ka/{i}") == b"x"

    async def many() -> None:
        async with AsyncClient(urls(cluster), TOKEN, pool_size=8, retry_unknown=True) as ac:
            async def worker(w: int) -> None:
                for i in range(125):
                    await ac.put(f"kb/{w}/{i}", "y")
            await asyncio.gather(*(worker(w) for w in range(8)))
    asyncio.run(many())
    made = accepted() - before
    # 3,000 requests: one connection for the blocking client and eight for the asyncio one
    # per node they had to use (a failover moves them), and this test's status requests.
    assert made <= 3 * (1 + 8) + 2 * 3, f"{made} connections for 3000 requests"
    # Every acknowledged write waited for a group-commit round (storage.durability: fsync,
    # the default), on the native syncer where the C module is built.
    primary = cluster.wait_primary()
    synced = primary.status()["wal_sync"]
    assert synced["native"] is NATIVE and synced["native_error"] is None, synced
    assert synced["rounds"] >= 1 and synced["synced_seq"] >= 1, synced


def test_bad_conditional_writes_and_watches_are_refused(cluster: Cluster) -> None:
    p = cluster.wait_primary()
    for path in ("/v1/kv/k?if_seq=abc", "/v1/kv/k?if_seq=-1", "/v1/kv/k?if_seq=1e3"):
        r = request(p.port, "PUT", path, b"v")
        assert r.status == 400 and "if_seq" in r.json()["error"], (path, r.body)
    too_many = {"then": [{"op": "put", "key": f"k{i}", "value": "v"} for i in range(101)]}
    r = request(p.port, "POST", "/v1/txn", json.dumps(too_many).encode())
    assert r.status == 400 and "max_batch_ops" in r.json()["error"]
    nested = {"compare": [{"key": "k", "seq": [[[[{"x": 1}]]]]}], "then": [[{"op": "put"}]]}
    r = request(p.port, "POST", "/v1/txn", json.dumps(nested).encode())
    assert r.status == 400 and "compare[0].seq" in r.json()["error"]
    latest = p.status()["applied_seq"]
    for query, fragment in (("since_seq=-5", "since_seq"),
                            (f"since_seq={latest + 10}", "in the future"),
                            ("since_seq=1&progress_ms=1", "progress_ms")):
        r = request(p.port, "GET", f"/v1/watch?{query}")
        assert r.status == 400 and fragment in r.json()["error"], (query, r.body)


def test_a_watcher_that_stops_reading_is_cut_and_never_stalls_the_primary(
        cluster: Cluster) -> None:
    p = cluster.wait_primary()
    client = Client(urls(cluster), TOKEN)
    since = client.put("slow/start", "x").seq
    assert p.proc is not None
    proc = psutil.Process(p.proc.pid)
    rss_before = proc.memory_info().rss
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", p.port))
    sock.sendall(f"GET /v1/watch?prefix=slow/&since_seq={since} HTTP/1.1\r\n"
                 f"Host: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    try:
        wait_for(lambda: p.status()["http"]["watches_open"] == 1, 10, "the watch to open")
        value = "v" * 20_000
        started = time.monotonic()
        for i in range(1500):          # 30 MB the watcher never reads
            client.put(f"slow/{i}", value)
        per_write_stuck = (time.monotonic() - started) / 1500
        st = wait_for(lambda: (lambda s: s if s["http"]["watches_open"] == 0 else None)(
            p.status()), 30, "the slow watcher to be cut")
        assert st["http"]["watches_ended"].get("slow") == 1
        assert "stopped reading" in p.log()
        grown = proc.memory_info().rss - rss_before
        assert grown < 40 << 20, f"the primary grew by {grown >> 20} MB"
        # Writes went on at about the pace of a node without the stuck watcher.
        started = time.monotonic()
        for i in range(300):
            client.put(f"slow/after/{i}", value)
        per_write_after = (time.monotonic() - started) / 300
        assert per_write_stuck < 5 * per_write_after + 0.01, (per_write_stuck,
                                                                per_write_after)
    finally:
        sock.close()

"""The client-side history checker: each check finds what it is for and passes clean histories.

Histories are built by hand (times are made-up monotonic seconds); the writer is exercised
against small real HTTP servers on loopback, including the subprocess entry point.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cbor2
import pytest

from hacluster.testing.harness import wait_for
from hacluster.testing.history import (
    Endpoint,
    History,
    Op,
    Writer,
    acked_after,
    check_all,
    divergent_tail_keys,
    linearizable,
    lost_acked,
    overlapping_epochs,
    seq_anomalies,
    unreported_losses,
)


def ack(key: str, start: float, end: float, epoch: int = 1, seq: int = 1,
        node: str = "n1") -> Op:
    return Op(key, node, start, end, 200, epoch, seq)


def refused(key: str, start: float, end: float, status: int = 503, node: str = "n1") -> Op:
    return Op(key, node, start, end, status, note="not accepting writes")


# --- lost_acked / unreported_losses --------------------------------------------------------

def test_lost_acked_names_acknowledged_keys_missing_from_the_final_state() -> None:
    h = History([ack("a", 1.0, 1.1, seq=1), ack("b", 1.2, 1.3, seq=2),
                 refused("c", 1.4, 1.5), Op("d", "n1", 1.6, 3.6, 0, note="timeout")])
    assert lost_acked(h, {b"a", b"b"}) == []            # c and d were never acknowledged
    found = lost_acked(h, {b"a"})
    assert len(found) == 1 and "'b'" in found[0] and "seq 2" in found[0]
    assert len(lost_acked(h, set())) == 2


def test_unreported_losses_accepts_losses_kept_in_a_tail_file_only() -> None:
    h = History([ack("a", 1.0, 1.1, seq=1), ack("b", 1.2, 1.3, seq=2),
                 ack("c", 1.4, 1.5, seq=3)])
    assert unreported_losses(h, {b"a"}, {b"b", b"c"}) == []
    found = unreported_losses(h, {b"a"}, {b"b"})
    assert len(found) == 1 and "'c'" in found[0]


def test_divergent_tail_keys_reads_the_put_keys_of_every_tail_file(tmp_path: Path) -> None:
    for node, name, ops in (
            ("n1", "epoch1-seq21-22.cbor", [["put", "default", b"k1", b"v"],
                                            ["put", "users", b"u1", b"v"]]),
            ("n2", "epoch2-seq5-6.cbor", [["delete", "default", b"gone", b""],
                                          ["put", "default", b"k2", b"v"]])):
        folder = tmp_path / node / "divergent"
        folder.mkdir(parents=True)
        doc = {"node": node, "epoch": 1, "batches": [{"seq": 21, "ops": ops}]}
        (folder / name).write_bytes(cbor2.dumps(doc))
    (tmp_path / "n3").mkdir()                           # no divergent folder at all
    dirs = [tmp_path / n for n in ("n1", "n2", "n3")]
    assert divergent_tail_keys(dirs) == {b"k1", b"k2"}
    assert divergent_tail_keys(dirs, cf=None) == {b"k1", b"u1", b"k2"}


# --- overlapping_epochs --------------------------------------------------------------------

def test_an_old_epoch_acknowledging_after_a_new_one_did_is_split_brain() -> None:
    h = History([ack("a", 1.0, 1.1, epoch=1, node="n1"),
                 ack("b", 2.0, 2.1, epoch=2, node="n2"),
                 ack("c", 2.3, 2.4, epoch=1, node="n1", seq=2)])   # started after b ended
    found = overlapping_epochs(h)
    assert len(found) == 1
    assert "epoch 1" in found[0] and "epoch 2" in found[0]
    assert "'c'" in found[0] and "'b'" in found[0]


def test_writes_in_flight_across_a_failover_are_not_split_brain() -> None:
    # c's request overlaps b's: the old primary may have acknowledged it before b; nothing
    # is certain, so nothing is reported.
    h = History([ack("a", 1.0, 1.1, epoch=1, node="n1"),
                 ack("c", 1.9, 2.5, epoch=1, node="n1", seq=2),
                 ack("b", 2.0, 2.1, epoch=2, node="n2"),
                 ack("d", 2.05, 2.6, epoch=1, node="n1", seq=3),   # started before b ended
                 ack("e", 3.0, 3.1, epoch=3, node="n3")])
    assert overlapping_epochs(h) == []


def test_refusals_from_an_old_epoch_are_not_split_brain() -> None:
    h = History([ack("a", 1.0, 1.1, epoch=1), ack("b", 2.0, 2.1, epoch=2, node="n2"),
                 refused("c", 3.0, 3.1), Op("d", "n1", 3.2, 5.2, 0)])
    assert overlapping_epochs(h) == []


# --- acked_after ---------------------------------------------------------------------------

def test_acked_after_reports_acks_certainly_made_after_the_fence() -> None:
    h = History([ack("a", 9.0, 9.2, seq=1),
                 ack("b", 9.9, 10.3, seq=2),     # in flight at 10.0: may have been before
                 ack("c", 10.5, 10.6, seq=3),    # certainly after
                 ack("d", 10.5, 10.6, node="n2", epoch=2),
                 refused("e", 11.0, 11.1)])
    found = acked_after(h, "n1", 10.0)
    assert len(found) == 1 and "'c'" in found[0] and "0.500 s after" in found[0]
    assert acked_after(h, "n2", 11.0) == []
    assert acked_after(h, "n1", 10.0, until=10.55) == []    # c may have ended after until
    assert len(acked_after(h, "n1", 10.0, until=10.7)) == 1


# --- seq_anomalies -------------------------------------------------------------------------

def test_seq_anomalies_finds_duplicates_and_inversions_within_an_epoch() -> None:
    clean = History([ack("a", 1.0, 1.1, seq=1), ack("b", 1.05, 1.2, seq=3),
                     ack("c", 1.06, 1.3, seq=2),                 # concurrent: any order
                     ack("d", 2.0, 2.1, epoch=2, seq=2, node="n2")])   # async reuse: fine
    assert seq_anomalies(clean) == []
    dup = History([ack("a", 1.0, 1.1, seq=5), ack("b", 1.05, 1.2, seq=5)])
    found = seq_anomalies(dup)
    assert len(found) == 1 and "seq 5 acknowledged twice" in found[0]
    inverted = History([ack("a", 1.0, 1.1, seq=7), ack("b", 1.2, 1.3, seq=6)])
    found = seq_anomalies(inverted)
    assert len(found) == 1 and "lower seq" in found[0] and "'b'" in found[0]


# --- check_all and JSON ----------------------------------------------------------------------

def test_check_all_runs_the_checks_that_apply() -> None:
    h = History([ack("a", 1.0, 1.1), ack("b", 2.0, 2.1, epoch=2, seq=2, node="n2"),
                 refused("c", 2.2, 2.3)])
    v = check_all(h, {b"a", b"b"}, fences=[("n1", 1.5, None)])
    assert v.ok, str(v)
    s = v.summary()
    assert (s["attempts"], s["acked"], s["statuses"], s["epochs"]) == (3, 2, {200: 2, 503: 1},
                                                                      [1, 2])
    assert s["lost_acked"] == [] and s["split_brain"] == [] and s["late_acks"] == []
    bad = check_all(h, {b"a"}, fences=[("n2", 1.5, None)])
    assert not bad.ok and len(bad.violations["lost_acked"]) == 1
    assert len(bad.violations["late_acks"]) == 1
    async_ = check_all(h, {b"a"}, tail_keys={b"b"})
    assert async_.ok and "lost_acked" not in async_.violations
    assert async_.notes["acked_missing_from_final"] == 1
    many = check_all(History([ack(f"k{i}", 1.0, 1.1, seq=i) for i in range(10)]), set())
    assert many.summary(limit=3)["lost_acked"][-1] == "... and 7 more"


def test_history_round_trips_through_json(tmp_path: Path) -> None:
    h = History([ack("a", 1.0, 1.1, epoch=4, seq=9), refused("b", 1.2, 1.3),
                 Op("c", "n2", 1.4, 3.4, 0, note="TimeoutError: timed out")])
    path = tmp_path / "h.json"
    h.save(path)
    back = History.load(path)
    assert back.ops() == h.ops()
    assert [op.key for op in back.acked()] == ["a"]
    path.write_text(json.dumps([[1.0, "a", 200]]))           # the old ad-hoc format
    with pytest.raises(ValueError, match="not a hacluster-history file"):
        History.load(path)


def test_history_is_safe_to_append_from_several_threads() -> None:
    h = History()

    def add(prefix: str) -> None:
        for i in range(1000):
            h.append(ack(f"{prefix}{i}", 1.0, 1.1))

    threads = [threading.Thread(target=add, args=(p,)) for p in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(h) == 4000 and len({op.key for op in h}) == 4000


# --- the writer, against real HTTP servers -------------------------------------------------

class FakeNode:
    """A real HTTP server on loopback answering PUTs like a primary (200) or a replica (307)."""

    def __init__(self, name: str, status: int, redirect_to: FakeNode | None = None,
                 lagging: bool = False) -> None:
        self.name, self.host, self.status = name, "127.0.0.1", status
        self.redirect_to = redirect_to
        self.puts: list[str] = []
        self.gets: list[str] = []
        self.running = True
        # A primary stores what it acknowledges and reads it back, each op atomic under the
        # lock; a lagging one answers reads with the value before the latest write.
        self.data: dict[str, bytes] = {}
        self.before: dict[str, bytes | None] = {}
        self.lagging = lagging
        self.lock = threading.Lock()
        node = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                node.gets.append(self.path)
                key = self.path.split("?")[0]
                with node.lock:
                    value = (node.before.get(key) if node.lagging else node.data.get(key))
                if node.status == 200 and value is not None:
                    self.send_response(200)
                    body = value
                elif node.status == 200:
                    self.send_response(404)
                    body = b'{"error": "not found"}'
                elif node.status == 307:
                    assert node.redirect_to is not None
                    self.send_response(307)
                    self.send_header("Location", f"http://127.0.0.1:{node.redirect_to.port}"
                                                 f"{self.path}")
                    body = b""
                else:
                    self.send_response(node.status)
                    body = b'{"error": "not serving reads"}'
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self) -> None:
                value = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                node.puts.append(self.path)
                if node.status == 200:
                    key = self.path.split("?")[0]
                    with node.lock:
                        node.before[key] = node.data.get(key)
                        node.data[key] = value
                    body = json.dumps({"seq": len(node.puts), "first_seq": len(node.puts),
                                       "epoch": 3}).encode()
                    self.send_response(200)
                elif node.status == 307:
                    assert node.redirect_to is not None
                    body = b""
                    self.send_response(307)
                    self.send_header("Location", f"http://127.0.0.1:{node.redirect_to.port}"
                                                 f"{self.path}")
                else:
                    body = json.dumps({"error": "no", "leader": None}).encode()
                    self.send_response(node.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_nodes() -> Iterator[tuple[FakeNode, FakeNode, FakeNode]]:
    primary = FakeNode("p", 200)
    replica = FakeNode("r", 307, redirect_to=primary)
    refusing = FakeNode("x", 503)
    yield replica, refusing, primary
    for n in (primary, replica, refusing):
        n.close()


def test_writer_finds_the_accepting_node_and_records_every_attempt(
        fake_nodes: tuple[FakeNode, FakeNode, FakeNode]) -> None:
    replica, refusing, primary = fake_nodes
    dead = Endpoint("d", "127.0.0.1", refusing.port, running=False)     # skipped: not running
    writer = Writer([replica, refusing, dead, primary], prefix="t", threads=2, pause=0.001)
    with writer:
        writer.wait_acked(50, 10, node="p")
    ops = writer.history.ops()
    keys = [op.key for op in ops]
    assert len(set(keys)) == len(keys) and all(k.startswith("t") and len(k) == 8 for k in keys)
    assert {op.node for op in ops} <= {"r", "x", "p"}
    assert all(op.status == 307 for op in ops if op.node == "r")
    assert all(op.status == 503 for op in ops if op.node == "x")
    acked = [op for op in ops if op.acked]
    assert all((op.node, op.epoch) == ("p", 3) and op.seq for op in acked)
    # Once the primary acknowledged, each thread stays with it: few attempts go elsewhere.
    assert len(ops) - len(acked) <= 6, [(op.node, op.status) for op in ops if not op.acked]
    # 307s are never followed: the replica saw the requests, the primary only its own.
    assert len(primary.puts) == len(acked)


def test_writer_records_connection_errors_as_status_0() -> None:
    closed = FakeNode("c", 200)
    closed.close()                                       # nothing listens there any more
    writer = Writer([closed], timeout=0.5, pause=0.01).start()
    wait_for(lambda: len(writer.history) >= 3, 10, "three attempts")
    history = writer.stop()
    assert all(op.status == 0 and op.note and op.epoch is None for op in history)


def test_the_subprocess_writer_saves_a_history_the_test_can_load(
        fake_nodes: tuple[FakeNode, FakeNode, FakeNode], tmp_path: Path) -> None:
    replica, _, primary = fake_nodes
    out = tmp_path / "w.json"
    subprocess.run([sys.executable, "-m", "hacluster.testing.history", "--seconds", "0.5",
                    "--out", str(out), "--prefix", "s", "--pause", "0.01",
                    f"r=127.0.0.1:{replica.port}", f"p=127.0.0.1:{primary.port}"],
                   check=True, timeout=30)
    h = History.load(out)
    assert h.acked() and all(op.node == "p" and op.key.startswith("s") for op in h.acked())
    assert len(primary.puts) == len(h.acked())


def test_the_subprocess_writer_records_register_reads_and_writes(
        fake_nodes: tuple[FakeNode, FakeNode, FakeNode], tmp_path: Path) -> None:
    replica, _, primary = fake_nodes
    out = tmp_path / "reg.json"
    subprocess.run([sys.executable, "-m", "hacluster.testing.history", "--seconds", "0.5",
                    "--out", str(out), "--prefix", "s", "--pause", "0.005", "--register", "2",
                    "--seed", "3", f"r=127.0.0.1:{replica.port}", f"p=127.0.0.1:{primary.port}"],
                   check=True, timeout=30)
    ops = History.load(out).ops()
    assert {op.key for op in ops} <= {"reg-0", "reg-1"}
    assert any(op.kind == "read" and op.answered for op in ops) and History(ops).acked()
    assert linearizable(ops) == ([], [])


def test_stale_reads_of_hot_keys_are_found_and_in_flight_ones_are_not() -> None:
    from hacluster.testing.history import stale_reads
    w1 = Op("hot-w0-1", "n1", 1.0, 1.1, 200, 1, 10, value="1")
    w2 = Op("hot-w0-1", "n1", 2.0, 2.1, 200, 1, 11, value="2")
    fresh = Op("hot-w0-1", "n1", 2.2, 2.3, 200, kind="read", value="2")
    in_flight = Op("hot-w0-1", "n1", 2.05, 2.3, 200, kind="read", value="1")
    stale = Op("hot-w0-1", "n2", 3.0, 3.1, 200, kind="read", value="1")
    absent = Op("hot-w0-1", "n2", 3.0, 3.1, 404, kind="read")
    refused = Op("hot-w0-1", "n2", 3.0, 3.1, 503, kind="read")
    assert stale_reads([w1, w2, fresh, in_flight, refused]) == []
    found = stale_reads([w1, w2, stale, absent])
    assert len(found) == 2 and all("stale read: n2" in f for f in found)
    assert "after 'hot-w0-1'" in found[0] and "with 2" in found[0]
    assert not Op("k", "n1", 0, 1, 200, kind="read").acked   # a read is no acknowledgement


def test_the_hot_workload_records_its_primary_reads() -> None:
    node = FakeNode("p", 200)
    try:
        writer = Writer([node], prefix="h", hot=2, pause=0.001).start()
        wait_for(lambda: sum(op.kind == "read" for op in writer.history) >= 6, 10, "six reads")
        ops = writer.stop().ops()
    finally:
        node.close()
    reads = [op for op in ops if op.kind == "read"]
    assert len(node.gets) == len(reads) and not any("stale" in p for p in node.gets)
    assert all(op.key.startswith("hot-h0-") and op.status == 200 and op.answered
               and op.value is not None and op.value.isdigit() and op.start < op.end
               for op in reads)
    assert check_all(ops).ok and check_all(ops).notes["reads"] == len(reads)


# --- outcomes and linearizability -----------------------------------------------------------

def test_each_op_is_classified_as_applied_refused_or_unknown() -> None:
    def put(status: int, note: str = "") -> str:
        return Op("k", "n1", 1.0, 1.1, status, note=note).outcome

    def read(status: int) -> str:
        return Op("k", "n1", 1.0, 1.1, status, kind="read").outcome

    assert put(200) == "ok"
    for status, note in ((307, "redirect"), (400, "key too long"), (401, ""),
                         (413, "too big"), (503, "not accepting writes: lease"),
                         (507, "disk full"), (0, "ConnectionRefusedError: [Errno 111]")):
        assert put(status, note) == "failed", (status, note)
    for status, note in ((0, "TimeoutError: timed out"),
                         (0, "RemoteDisconnected: closed"),
                         (503, "outcome unknown: written locally"), (500, "write failed"),
                         (502, "bad gateway"), (504, "")):
        assert put(status, note) == "unknown", (status, note)
    assert (read(200), read(404), read(503), read(307), read(0)) == ("ok", "ok", "failed",
                                                                      "failed", "failed")


def reg_put(value: str, start: float, end: float, status: int = 200, note: str = "",
            key: str = "reg-0") -> Op:
    acked = status == 200                       # seqs rise with time, as a primary's do
    return Op(key, "n1", start, end, status, 1 if acked else None,
              round(start * 100) if acked else None, note, value=value)


def reg_read(value: str | None, start: float, end: float, status: int = 200,
             key: str = "reg-0", node: str = "n1") -> Op:
    return Op(key, node, start, end, status if value is not None or status != 200 else 404,
              kind="read", value=value)


def test_linearizable_judges_register_keys_and_skips_keys_without_recorded_values() -> None:
    clean = [reg_read(None, 0.0, 0.1), reg_put("a-1", 1.0, 1.1), reg_read("a-1", 1.2, 1.3),
             reg_put("b-1", 2.0, 4.0, status=0, note="TimeoutError: timed out"),
             reg_read("b-1", 5.0, 5.1),                                 # applied late: fine
             reg_put("a-2", 6.0, 6.1, status=503, note="not accepting writes: fenced"),
             reg_read("b-1", 6.2, 6.3), reg_read("zz", 7.0, 7.1, status=503)]
    assert linearizable(clean) == ([], [])
    refused_seen = [*clean, reg_read("a-2", 8.0, 8.1, node="n2")]
    [found], undecided = linearizable(refused_seen)
    assert undecided == [] and "'reg-0'" in found and "read -> 'a-2'" in found
    assert "refused" in found and "n2, status 200, request 8.000..8.100" in found
    # A unique key written without its value kept (the plain writer) cannot be judged.
    blind = [Op("w0000001", "n1", 1.0, 1.1, 200, 1, 1), reg_read("x", 1.2, 1.3, key="w0000001")]
    assert linearizable(blind) == ([], [])


def test_check_all_reports_non_linearizable_reads_in_sync_mode_and_notes_them_in_async() -> None:
    stale = [reg_put("a-1", 1.0, 1.1), reg_put("a-2", 2.0, 2.1), reg_read("a-1", 3.0, 3.1)]
    v = check_all(stale)
    assert not v.ok and len(v.violations["nonlinearizable"]) == 1
    assert "overwritten by 'a-2'" in v.violations["nonlinearizable"][0]
    assert v.violations["split_brain"] == [] and v.notes["reads"] == 1
    async_ = check_all(stale, set(), tail_keys=set())
    assert "nonlinearizable" not in async_.violations
    assert async_.notes["nonlinearizable_after_async_loss"] == 1
    fresh = check_all([*stale[:2], reg_read("a-2", 3.0, 3.1)])
    assert fresh.ok and fresh.violations["nonlinearizable"] == []
    assert "nonlinearizable" not in check_all(stale[:2]).violations    # no reads, no check


def test_the_register_writer_makes_linearizable_histories_of_a_real_register() -> None:
    node = FakeNode("p", 200)
    try:
        writer = Writer([node], prefix="g", threads=4, register_keys=3, pause=0.001).start()
        wait_for(lambda: sum(op.answered for op in writer.history) >= 150, 20, "150 reads")
        ops = writer.stop().ops()
    finally:
        node.close()
    assert {op.key for op in ops} == {"reg-0", "reg-1", "reg-2"}
    writes = [op for op in ops if op.kind == "put"]
    reads = [op for op in ops if op.kind == "read"]
    assert writes and all(op.acked and op.value for op in writes)
    assert len({(op.key, op.value) for op in writes}) == len(writes)       # unique per key
    assert {op.value.split("-")[0] for op in writes if op.value} <= {"g0", "g1", "g2", "g3"}
    assert all(op.status in (200, 404) and (op.value is None) == (op.status == 404)
               for op in reads)
    assert any(op.value is not None for op in reads)
    verdict = check_all(ops)
    assert verdict.ok and verdict.violations["nonlinearizable"] == [], str(verdict)


def test_the_register_writer_catches_a_primary_answering_stale_reads() -> None:
    node = FakeNode("p", 200, lagging=True)
    try:
        writer = Writer([node], prefix="s", register_keys=2, pause=0.001, seed=1).start()
        wait_for(lambda: sum(op.answered for op in writer.history) >= 60, 20, "60 reads")
        ops = writer.stop().ops()
    finally:
        node.close()
    found = check_all(ops).violations["nonlinearizable"]
    assert found and all("not linearizable" in f for f in found)

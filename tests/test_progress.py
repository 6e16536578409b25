"""hacluster/tools/progress.py: a tqdm bar on a terminal (a real pty), plain lines elsewhere;
and what uses it: ``hacluster reinit`` following the node's /status (tools/catchup.py), the
node's bootstrap progress on /status, ``hacluster backup``'s download.

The plain path runs on a fake clock, so the "at most one line every interval" rule is checked
exactly; the terminal path writes to the slave side of ``os.openpty()`` and reads what a
terminal would show from the master side. The reinit and backup tests run the real CLI against
a real three-node cluster, its download capped so that it is seen half-way.
"""

from __future__ import annotations

import fcntl
import io
import os
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacluster.testing.harness import Cluster, NodeProc, wait_for
from hacluster.tools import catchup
from hacluster.tools import progress as p


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_amount_and_duration_for_people() -> None:
    assert p.amount(512, "B") == "512 B"
    assert p.amount(2_500_000, "B") == "2.5 MB"
    assert p.amount(3.2e9, "B") == "3.2 GB"
    assert p.amount(1234, "writes") == "1,234 writes"
    assert p.duration(4.25) == "4.2 s"
    assert p.duration(245) == "4 min 05 s"
    assert p.duration(7380) == "2 h 03 min"


def test_plain_line_has_amount_share_rate_and_eta() -> None:
    line = p.plain_line("reinit n2", 25_000_000, 100_000_000, 5.0, "B")
    assert line == "reinit n2: 25.0 MB of 100.0 MB (25%) in 5.0 s, 5.0 MB/s, ETA 15.0 s"
    # Unknown total: no share, no ETA.
    assert p.plain_line("soak", 30, None, 10.0, "faults") == (
        "soak: 30 faults in 10.0 s, 3.0 faults/s")
    assert p.per_second(0.2, "faults") == "0.20 faults/s"
    assert p.per_second(1234.4, "seq") == "1,234 seq/s"


def test_plain_lines_are_rate_limited_and_end_with_a_summary() -> None:
    clock, out = FakeClock(), io.StringIO()
    with p.progress(10_000_000, "backup", stream=out, interval_s=5.0, clock=clock) as bar:
        for _ in range(10):                      # ten updates in 9 s: one line at 5 s only
            clock.now += 0.9
            bar.update(1_000_000)
        clock.now += 1.0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("backup: 6.0 MB of 10.0 MB (60%)"), lines
    assert "ETA" in lines[0]
    assert lines[1] == "backup: done, 10.0 MB in 10.0 s (1.0 MB/s)"


def test_plain_set_is_absolute_and_total_can_be_learnt_late() -> None:
    clock, out = FakeClock(), io.StringIO()
    with p.progress(None, "catch-up", unit="seq", stream=out, interval_s=1.0,
                    clock=clock) as bar:
        clock.now += 2
        bar.set_total(400)
        bar.set(100)
        clock.now += 2
        bar.set(400)
    lines = out.getvalue().splitlines()
    assert lines[0] == "catch-up: 100 seq of 400 seq (25%) in 2.0 s, 50 seq/s, ETA 6.0 s"
    assert lines[-1] == "catch-up: done, 400 seq in 4.0 s (100 seq/s)"


def test_plain_final_line_says_stopped_when_the_work_failed() -> None:
    clock, out = FakeClock(), io.StringIO()
    with pytest.raises(RuntimeError), p.progress(1000, "restore", stream=out,
                                                 clock=clock) as bar:
        bar.set(400)
        clock.now += 2
        raise RuntimeError("store unreachable")
    assert out.getvalue().strip() == "restore: stopped after 400 B of 1.0 kB in 2.0 s (200 B/s)"


def test_a_closed_stream_does_not_fail_the_work() -> None:
    out = io.StringIO()
    with p.progress(10, "x", stream=out, interval_s=0.0) as bar:
        out.close()
        bar.update(5)                             # would write a line: must not raise


def _read_all(fd: int) -> bytes:
    chunks = []
    while select.select([fd], [], [], 0.5)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:                           # EIO: the slave side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(("columns", "lines"), [(0, 0), (80, 24)],
                         ids=["unsized-pty", "80-columns"])
def test_terminal_gets_a_bar_with_bytes_rate_and_eta(columns: int, lines: int) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
    tty = os.fdopen(slave, "w", encoding="utf-8")
    try:
        assert p.is_terminal(tty)
        with p.progress(8_000_000, "reinit n2", stream=tty) as bar:
            bar.update(2_000_000)
            bar.set(8_000_000)
        tty.flush()
        shown = _read_all(master).decode("utf-8", "replace")
    finally:
        tty.close()
        os.close(master)
    assert "reinit n2" in shown
    assert "\r" in shown, "a bar redraws its line in place"
    assert "100%" in shown and "8.00M/8.00M" in shown, shown
    assert "B/s" in shown, shown                 # the rate, with the bytes unit
    assert "<00:00" in shown, shown              # tqdm's elapsed<remaining (ETA) field
    # Not the plain format: that one is for files and pipes.
    assert "done," not in shown
    if columns:
        assert all(len(line) <= columns for line in shown.split("\r")), shown


def test_terminal_set_backwards_restarts_the_count() -> None:
    master, slave = os.openpty()
    tty = os.fdopen(slave, "w", encoding="utf-8")
    try:
        with p.progress(100, "download", unit="B", stream=tty) as bar:
            bar.set(60)
            bar.set(10)                           # a restarted download
            assert isinstance(bar, p.BarProgress) and bar.bar.n == 10
            bar.set(100)
            assert bar.bar.n == 100
        _read_all(master)
    finally:
        tty.close()
        os.close(master)


def test_plain_note_and_write() -> None:
    clock, out, above = FakeClock(), io.StringIO(), io.StringIO()
    with p.progress(4, "soak", unit="faults", stream=out, interval_s=1.0, clock=clock) as bar:
        bar.write("fault 1/4: kill on n1", file=above)
        clock.now += 2
        bar.note("primary n1 at seq 120")
        bar.update(1)
    assert above.getvalue() == "fault 1/4: kill on n1\n"
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(", primary n1 at seq 120") and "1 faults of 4 faults" in lines[0]
    assert lines[-1].endswith("in 2.0 s (0.50 faults/s), primary n1 at seq 120"), lines


def test_terminal_note_and_write_keep_the_bar() -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    tty = os.fdopen(slave, "w", encoding="utf-8")
    try:
        with p.progress(3, "soak", unit="faults", stream=tty) as bar:
            bar.update(1)
            bar.note("primary n2 at seq 77")
            bar.write("fault 1/3: pause on n2", file=tty)
            bar.update(2)
        shown = _read_all(master).decode("utf-8", "replace")
    finally:
        tty.close()
        os.close(master)
    assert "fault 1/3: pause on n2" in shown and "primary n2 at seq 77" in shown, shown
    assert "3/3" in shown and " faults/s" in shown, shown


# -- following a reinit from /status (hacluster.tools.catchup), without a node ---------------

def status_doc(phase: str | None, *, started: float = 50.0, done: int = 0,
               total: int | None = None, applied: int | None = None,
               primary: int | None = None, error: str | None = None) -> dict[str, object]:
    boot = None if phase is None else {
        "phase": phase, "bytes_done": done, "bytes_total": total, "started_at": started,
        "finished_at": None if phase in catchup.DOWNLOADING else started + 2.0,
        "checkpoint_seq": 100, "error": error}
    return {"applied_seq": applied,
            "replication": {"state": "bootstrapping", "primary_seq": primary,
                            "bootstrap": boot}}


def test_read_rebuild_tells_stages_and_ignores_the_previous_bootstrap() -> None:
    assert catchup.read_rebuild(status_doc(None), None).stage == "waiting"
    # The bootstrap the node showed before the reinit is not ours.
    assert catchup.read_rebuild(status_doc("caught_up", started=10.0), 10.0).stage == "waiting"
    r = catchup.read_rebuild(status_doc("downloading", done=5, total=9), 10.0)
    assert (r.stage, r.bytes_done, r.bytes_total, r.attempt) == ("download", 5, 9, 50.0)
    assert catchup.read_rebuild(status_doc("checkpoint"), None).stage == "download"
    assert catchup.read_rebuild(status_doc("failed", error="HTTP 503"), None).error == "HTTP 503"
    r = catchup.read_rebuild(status_doc("catching_up", applied=150, primary=400), None)
    assert (r.stage, r.applied_seq, r.primary_seq, r.checkpoint_seq) == (
        "catch-up", 150, 400, 100)
    assert catchup.read_rebuild(status_doc("caught_up"), None).stage == "caught-up"
    assert catchup.previous_attempt(status_doc("caught_up", started=7.5)) == 7.5
    assert catchup.previous_attempt(None) is None


def run_follow(docs: list[dict[str, object] | None], **kw: float
               ) -> tuple[str | None, list[str]]:
    clock, out = FakeClock(), io.StringIO()
    feed = iter(docs)

    def fetch() -> dict[str, object] | None:
        return next(feed, docs[-1])

    def sleep(s: float) -> None:
        clock.now += s

    stuck = catchup.follow("n2", fetch, None, out, clock=clock, sleep=sleep, **kw)
    return stuck, out.getvalue().splitlines()


def test_follow_shows_the_download_then_the_catch_up() -> None:
    stuck, lines = run_follow([
        None,                                                        # not answering yet
        status_doc(None),
        status_doc("checkpoint"),
        *[status_doc("downloading", done=d, total=10_000_000)
          for d in range(0, 10_000_001, 1_000_000)],
        status_doc("catching_up", done=10_000_000, total=10_000_000, applied=100, primary=300),
        status_doc("catching_up", done=10_000_000, total=10_000_000, applied=250, primary=320),
        status_doc("caught_up", done=10_000_000, total=10_000_000, applied=320, primary=320),
    ])
    assert stuck is None
    assert any(line.startswith("n2: checkpoint: 9.0 MB of 10.0 MB (90%)") for line in lines), lines
    assert "n2: checkpoint: done, 10.0 MB in" in "\n".join(lines)
    assert lines[-1].startswith("n2: catch-up: done, 220 seq in"), lines


def test_follow_reports_a_failed_attempt_and_goes_on() -> None:
    stuck, lines = run_follow([
        status_doc("downloading", done=1, total=10),
        status_doc("failed", done=1, total=10, error="BootstrapError: HTTP 500"),
        status_doc("downloading", started=60.0, done=4, total=10),
        status_doc("caught_up", started=60.0, done=10, total=10, applied=100, primary=100),
    ])
    assert stuck is None
    assert any("attempt failed (BootstrapError: HTTP 500)" in line for line in lines), lines


def test_follow_gives_up_when_nothing_moves() -> None:
    stuck, _ = run_follow([status_doc("downloading", done=3, total=10)], stall_s=30.0)
    assert stuck is not None and "no progress for 30 s (download)" in stuck
    stuck, _ = run_follow([None], stall_s=30.0)
    assert stuck is not None and "not answering" in stuck


# -- against a real cluster: reinit and backup show their progress -----------------------------
# The download is capped (replication.bootstrap_max_rate_mb_s) so that a few MB take a couple
# of seconds: long enough to be seen half-way on /status.

RATE_MB_S = 3.0


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hacluster", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("progress"), consensus=True,
                replication={"bootstrap_max_rate_mb_s": RATE_MB_S,
                             "bootstrap_chunk_bytes": 65536})
    c.start()
    try:
        primary = c.wait_primary()
        for b in range(30):                       # about 6 MB of incompressible values
            primary.batch([{"op": "put", "cf": "default", "key": f"k{b}-{i}",
                            "value": os.urandom(1000).hex()} for i in range(100)])
        c.wait_converged()
        yield c
    finally:
        c.stop()


def boot_of(node: NodeProc) -> dict[str, object] | None:
    try:
        doc = node.status()
    except (OSError, ValueError):
        return None
    boot = (doc.get("replication") or {}).get("bootstrap")
    return boot if isinstance(boot, dict) else None


def test_reinit_waits_through_the_download_and_the_catch_up(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    replica = next(n for n in cluster.nodes.values() if n is not primary)
    seen: list[dict[str, object]] = []
    stop = threading.Event()

    def watch() -> None:                          # /status as the CLI sees it, meanwhile
        while not stop.is_set():
            if (boot := boot_of(replica)) is not None:
                seen.append(boot)
            time.sleep(0.1)

    def write() -> None:                          # writes to catch up with afterwards
        i = 0
        while not stop.is_set():
            primary.put(f"during-{i}", b"x" * 100)
            i += 1
            time.sleep(0.01)

    threads = [threading.Thread(target=watch), threading.Thread(target=write)]
    for t in threads:
        t.start()
    try:
        done = cli("reinit", "--config", str(cluster.root / "n1.yaml"), replica.name, "--yes")
        after = replica.status()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{replica.name}: reinitialised and streaming" in done.stdout
    # Not a terminal: plain lines, the download's and the catch-up's, each with a final one.
    assert f"{replica.name}: checkpoint: done, " in done.stderr, done.stderr
    assert f"{replica.name}: catch-up: done, " in done.stderr, done.stderr
    # The node showed the download half-way, with its total, and the bytes only grew.
    ours = [b for b in seen if b["phase"] == "downloading"]
    assert ours, seen
    total = ours[-1]["bytes_total"]
    assert isinstance(total, int) and total > 2_000_000
    assert any(0 < b["bytes_done"] < total for b in ours), ours  # type: ignore[operator]
    started = {b["started_at"] for b in ours}
    assert len(started) == 1, started
    done_bytes = [b["bytes_done"] for b in seen if b["started_at"] in started]
    assert done_bytes == sorted(done_bytes)       # type: ignore[type-var]
    # When the command returned, the node had caught up and said so.
    boot = after["replication"]["bootstrap"]
    assert boot["phase"] == "caught_up" and boot["bytes_done"] == total, boot
    assert boot["started_at"] in started and boot["finished_at"] >= boot["started_at"]


def test_reinit_no_wait_returns_while_the_node_still_copies(cluster: Cluster) -> None:
    primary = cluster.wait_primary()
    replica = [n for n in cluster.nodes.values() if n is not primary][-1]
    before = boot_of(replica)
    done = cli("reinit", "--config", str(cluster.root / "n1.yaml"), replica.name, "--yes",
               "--no-wait")
    boot = boot_of(replica)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not waiting (--no-wait)" in done.stdout
    assert "checkpoint" not in done.stderr        # no progress shown
    # The download takes seconds at the capped rate: the command did not wait for it.
    assert boot is not None and boot != before
    assert boot["phase"] in ("checkpoint", "downloading"), boot
    wait_for(lambda: (b := boot_of(replica)) is not None and b["phase"] == "caught_up", 120,
             f"{replica.name} caught up")


def test_backup_shows_its_download(cluster: Cluster, tmp_path: Path) -> None:
    dest = tmp_path / "backup"
    done = cli("backup", "--config", str(cluster.root / "n1.yaml"), str(dest))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "backup done" in done.stdout
    final = [line for line in done.stderr.splitlines()
             if line.startswith("backup: checkpoint: done, ")]
    assert len(final) == 1, done.stderr
    # The bytes the progress counted are the backup's files.
    size = sum(f.stat().st_size for f in dest.iterdir() if f.is_file())
    shown = float(final[0].split("done, ")[1].split(" MB")[0])
    assert abs(shown - size / 1e6) < 0.1 + size / 1e6 * 0.05, (final, size)
    assert "bootstrap:" not in done.stderr        # the bar, not the bootstrap's log lines

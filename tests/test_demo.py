"""``hacluster demo``, the newcomer's first command, run for real: three processes, a SIGKILL
of the primary, the failover shown as it happens, convergence checked, nothing left behind."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest


def node_processes(root: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "hacluster" in cmd and " run " in cmd and str(root) in cmd:
            found.append(p)
    return found


def test_demo_shows_a_failover_live_and_cleans_up(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "hacluster", "demo", "--dir", str(root)],
                          capture_output=True, text=True, timeout=180)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    old = re.search(r"(n\d) elected primary \(epoch 1\)", out)
    assert old, out
    assert f">>> killing the primary {old.group(1)} with SIGKILL" in out
    new = re.search(r"<<< failover: (n\d) is primary \(epoch 2\); ([\d.]+) s from", out)
    assert new and new.group(1) != old.group(1), out
    assert "NO PRIMARY" in out or float(new.group(2)) < 0.5   # the gap was shown live
    assert "every node converged: same seq and same content hash" in out
    assert "acknowledged writes lost: 0" in out
    # Progress lines came while it ran, not in one dump: their timestamps rise steadily.
    stamps = [float(m) for m in re.findall(r"^\[\s*([\d.]+)s\]", out, flags=re.M)]
    assert len(stamps) > 10 and stamps == sorted(stamps)
    assert not node_processes(root)


def test_demo_keep_leaves_the_cluster_up_until_ctrl_c(tmp_path: Path) -> None:
    root = tmp_path / "kept"
    proc = subprocess.Popen([sys.executable, "-m", "hacluster", "demo", "--keep", "--dir",
                             str(root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "hacluster switchover --config" in line:
            break
    text = "".join(lines)
    assert "The cluster keeps running" in text, text
    assert "curl -s http://127.0.0.1:" in text and "export HACLUSTER_TOKEN=" in text
    assert len(node_processes(root)) == 3
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    assert not node_processes(root)


def service_processes(root: Path) -> list[psutil.Process]:
    """The example services the managed demo's nodes started (their database is under root)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if "kvservice" not in " ".join(p.info["cmdline"] or []):
            continue
        try:
            if p.environ().get("HACLUSTER_DB_PATH", "").startswith(str(root)):
                found.append(p)
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
    return found


def test_managed_demo_fails_over_the_service_and_keeps_its_keys(tmp_path: Path) -> None:
    root = tmp_path / "managed"
    done = subprocess.run([sys.executable, "-m", "hacluster", "demo", "--managed", "--dir",
                           str(root)], capture_output=True, text=True, timeout=240)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    old = re.search(r"(n\d) elected primary \(epoch 1\); its service \(pid (\d+)\) answers", out)
    assert old, out
    assert re.search(r"wrote 20 keys through n\d's service .* n\d is at seq (\d+)", out), out
    # The replicas applied the service's writes before the kill.
    assert len(re.findall(r"replica \(epoch 1\), service stopped; applied_seq \d+", out)) == 2
    assert f">>> killing {old.group(1)}'s hacluster with SIGKILL" in out
    new = re.search(r"<<< failover: (n\d) is primary \(epoch 2\); its service answers "
                    r"[\d.]+ s after the kill .*; (n\d)'s service is gone", out)
    assert new and new.group(1) != old.group(1), out
    assert f"read back through {new.group(1)}'s service: 20 of 20 keys" in out
    assert f"PUT /kv/after-failover on {new.group(1)}'s service: 200" in out
    assert "acknowledged writes lost: 0" in out
    assert not node_processes(root)
    assert not service_processes(root)
    assert not psutil.pid_exists(int(old.group(2)))


def test_managed_demo_without_the_example_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hacluster.tools import demo_managed
    missing = tmp_path / "nowhere" / "service.py"
    monkeypatch.setattr(demo_managed, "example_service", lambda: missing)   # a wheel, no repo
    assert demo_managed.run_managed_demo(False, "sync", tmp_path / "d") == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "source repository" in err, err
    assert not (tmp_path / "d").exists()


# A stand-in for `hacluster run`: argv[1] is named hacluster; "stubborn" ignores SIGTERM.
FAKE_NODE = """import signal, sys, time
if "stubborn" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
time.sleep(120)
"""


def test_removing_the_demo_directory_first_stops_nodes_started_by_hand(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hacluster.tools import demo
    root = tmp_path / "hacluster-demo-x"
    root.mkdir()
    fake = tmp_path / "bin" / "hacluster"
    fake.parent.mkdir()
    fake.write_text(FAKE_NODE)
    started = [
        subprocess.Popen([sys.executable, str(fake), "run", "--config",
                          str(root / "cluster.yaml"), "--node", "n2"], stdout=subprocess.PIPE),
        subprocess.Popen([sys.executable, str(fake), "run", "--config", "cluster.yaml",
                          "stubborn"], cwd=root, stdout=subprocess.PIPE),
        # Names the directory but is no hacluster process: left alone.
        subprocess.Popen([sys.executable, "-c", FAKE_NODE, str(root / "n1.log")],
                         stdout=subprocess.PIPE),
    ]
    try:
        for proc in started:
            assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        said: list[str] = []

        class Finished:
            def __init__(self, root: Path, mode: str, temporary: bool) -> None:
                assert temporary

            def run(self, keep: bool) -> int:
                return 0            # as after Ctrl-C on --keep

            def stop_all(self) -> None:
                pass

            def say(self, text: str) -> None:
                said.append(text)

        monkeypatch.setattr(demo, "STRAY_GRACE_S", 0.5)
        monkeypatch.setattr(demo.tempfile, "mkdtemp", lambda prefix: str(root))
        monkeypatch.setattr(demo.signal, "signal", lambda *args: None)
        assert demo.run_demo(True, "sync", None, make=Finished) == 0   # type: ignore[arg-type]
        assert said == ["stopping hacluster processes started outside the demo that use "
                        f"{root}: pid {started[0].pid}, {started[1].pid}"]
        # Both ended (psutil reaped them, so no exit status is left to read); the stubborn
        # one only by the SIGKILL.
        started[0].wait(5)
        started[1].wait(5)
        assert started[2].poll() is None
        assert not root.exists()
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


def test_keep_prints_the_write_and_read_through_the_replicas_of_the_moment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from hacluster.tools.demo import Demo
    out = io.StringIO()
    tour = Demo(tmp_path, "sync", out=out)
    monkeypatch.setattr(tour, "primary", lambda: ("n2", 2))    # n2 won the failover
    tour.show_keep()
    text = out.getvalue()
    urls = tour.urls
    assert f"curl -s {urls['n2']}/leader" in text
    assert "# write through the replica n1 (a 307 sends it to the primary n2):" in text
    assert re.search(rf"-X PUT .* {re.escape(urls['n1'])}/v1/kv/greeting", text), text
    assert "# read it back through the replica n3:" in text
    assert re.search(rf"Bearer \$HACLUSTER_TOKEN\" {re.escape(urls['n3'])}/v1/kv/greeting",
                     text), text
    assert f"{urls['n2']}/v1/kv" not in text


def test_ctrl_c_while_the_keep_lines_are_printed_is_a_clean_stop() -> None:
    """A user (or the test above) may press Ctrl-C as soon as the last line appears, before
    the print returns: that is the stop ``--keep`` waits for, not an interrupted demo (130)."""
    from hacluster.tools.demo import Demo

    def show() -> None:
        raise KeyboardInterrupt

    Demo.hold_until_interrupted(show)       # raises if Ctrl-C escaped

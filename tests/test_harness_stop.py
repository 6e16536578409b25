"""The harness's stop (``NodeProc.stop``): SIGTERM, a hang recorded, a paused process killed.

Every test's nodes are stopped this way; ``conftest.py`` fails the test during which a node
had to be killed after ignoring SIGTERM for ``STOP_TIMEOUT_S`` (a lost cancellation once held
a node's shutdown that way for 20 s). Real processes and signals; the timeout is shortened.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacluster.testing import harness
from hacluster.testing.harness import NodeProc

IGNORES_SIGTERM = ("import signal, time\n"
                   "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                   "print('ready', flush=True)\n"
                   "time.sleep(60)\n")


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NodeProc]:
    monkeypatch.setattr(harness, "STOP_TIMEOUT_S", 1.0)
    proc = NodeProc("n9", 1, tmp_path / "data", tmp_path / "n9.yaml", tmp_path / "n9.log")
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.proc.kill()
        proc.proc.wait()


def spawn(node: NodeProc, code: str) -> None:
    node.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert node.proc.stdout is not None
    assert node.proc.stdout.readline() == b"ready\n"


def test_a_process_that_ignores_sigterm_is_killed_and_recorded(
        node: NodeProc, monkeypatch: pytest.MonkeyPatch) -> None:
    hangs: list[str] = []
    monkeypatch.setattr(harness, "STOP_HANGS", hangs)
    spawn(node, IGNORES_SIGTERM)
    assert node.stop() == -signal.SIGKILL
    assert len(hangs) == 1 and "n9" in hangs[0] and "after SIGTERM" in hangs[0]


def test_a_process_that_exits_on_sigterm_is_not_recorded(
        node: NodeProc, monkeypatch: pytest.MonkeyPatch) -> None:
    hangs: list[str] = []
    monkeypatch.setattr(harness, "STOP_HANGS", hangs)
    spawn(node, "import time\nprint('ready', flush=True)\ntime.sleep(60)\n")
    assert node.stop() == -signal.SIGTERM
    assert hangs == []


def test_a_paused_process_is_killed_at_once_and_not_recorded(
        node: NodeProc, monkeypatch: pytest.MonkeyPatch) -> None:
    hangs: list[str] = []
    monkeypatch.setattr(harness, "STOP_HANGS", hangs)
    monkeypatch.setattr(harness, "STOP_TIMEOUT_S", 30.0)
    spawn(node, IGNORES_SIGTERM)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGSTOP)
    harness.wait_for(lambda: harness._paused(node.proc.pid), 5, "the process to be stopped")
    started = time.monotonic()
    assert node.stop() == -signal.SIGKILL
    assert time.monotonic() - started < 5          # not the 30 s SIGTERM wait
    assert hangs == []

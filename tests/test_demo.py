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

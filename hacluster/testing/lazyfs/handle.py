"""The handle tests use to drive LazyFS from their own process: ``LazyFS`` and its answers.

Owns ``LazyFS`` (a context manager): starting the server process (``python -m
hacluster.testing.lazyfs``) with a private control socket and waiting until its mount serves,
the control calls (``power_loss``, ``stats``), and stopping it (a clean unmount that keeps
every write; a dead server's mount detached); ``PowerLoss`` and ``Stats``, what the calls
return; and ``LazyFSError``. It must never touch the files under the mount itself, and never
leave a mount, a control socket or the server process behind once ``stop`` returned.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from hacluster.testing.lazyfs.mounts import fuse_unavailable, is_mounted, umount

log = logging.getLogger(__name__)


class LazyFSError(RuntimeError):
    pass


@dataclass(frozen=True)
class PowerLoss:
    """What a power loss threw away.

    ``bytes_dropped`` counts bytes written (by write or mmap write-back) since each file's
    last sync; ``files_affected`` the files that went back to their synced state; ``forced``
    says something still used the mount, which was then detached and its connection aborted.
    """

    bytes_dropped: int
    files_affected: int
    forced: bool


@dataclass(frozen=True)
class Stats:
    writes: int
    bytes_written: int
    fsyncs: int
    power_losses: int
    unsynced_files: int
    unsynced_bytes: int


class LazyFS:
    """A LazyFS server process mounting ``backing`` on ``mount``; a context manager."""

    def __init__(self, backing: Path, mount: Path, *, threads: int = 1,
                 verbose: bool = False) -> None:
        self.backing = Path(backing)
        self.mount = Path(mount)
        self.threads = threads
        self.verbose = verbose
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def pid(self) -> int:
        """The server process's id (killing it leaves a dead mount that ``stop`` removes)."""
        if self._proc is None:
            raise LazyFSError("LazyFS is not started")
        return self._proc.pid

    @property
    def control(self) -> Path:
        if self._dir is None:
            raise LazyFSError("LazyFS is not started")
        return self._dir / "control"

    @property
    def log_path(self) -> Path:
        if self._dir is None:
            raise LazyFSError("LazyFS is not started")
        return self._dir / "lazyfs.log"

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and return once the mount answers."""
        reason = fuse_unavailable()
        if reason is not None:
            raise LazyFSError(reason)
        self.backing.mkdir(parents=True, exist_ok=True)
        self.mount.mkdir(parents=True, exist_ok=True)
        # A short private directory: Unix socket paths are limited to 107 bytes.
        self._dir = Path(tempfile.mkdtemp(prefix="lazyfs-"))
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "hacluster.testing.lazyfs", str(self.backing),
               str(self.mount), "--control", str(self.control), "--threads",
               str(self.threads), "--exit-on-stdin-eof"]
        if self.verbose:
            cmd.append("--verbose")
        with open(self.log_path, "wb") as log_file:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log_file,
                                          stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                output = self.log_path.read_text(errors="replace")
                self._cleanup()
                raise LazyFSError(f"lazyfs exited with {self._proc.returncode}: {output}")
            try:
                self._call("ping", timeout=2.0)
                return
            except (OSError, LazyFSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise LazyFSError(f"lazyfs did not come up within {timeout}s") from None
                time.sleep(0.02)

    def _call(self, op: str, timeout: float = 120.0) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(os.fsencode(self.control))
            s.sendall(json.dumps({"op": op}).encode() + b"\n")
            with s.makefile("rb") as stream:
                line = stream.readline()
        if not line:
            raise LazyFSError(f"lazyfs closed the control socket during {op}")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok", False):
            raise LazyFSError(f"lazyfs {op} failed: {reply.get('error')}")
        return reply

    def power_loss(self) -> PowerLoss:
        """Drop every write not yet made durable; the mount comes back with durable data only.

        Kill the processes using the mount first: anything still holding it gets a torn-down
        connection (``forced``), as if its machine had died.
        """
        r = self._call("power_loss")
        return PowerLoss(r["bytes_dropped"], r["files_affected"], r["forced"])

    def stats(self) -> Stats:
        r = self._call("stats")
        return Stats(r["writes"], r["bytes_written"], r["fsyncs"], r["power_losses"],
                     r["unsynced_files"], r["unsynced_bytes"])

    def stop(self, timeout: float = 30.0) -> None:
        """Unmount cleanly (every write kept) and end the server."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                self._call("stop", timeout=timeout)
                proc.wait(timeout)
            except (OSError, LazyFSError, subprocess.TimeoutExpired):
                log.warning("lazyfs did not stop cleanly; killing it")
                proc.kill()
                proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.close()
        if is_mounted(self.mount):
            # A server that died leaves a dead mount ("transport endpoint is not connected").
            try:
                umount(self.mount, lazy=True)
            except OSError as e:
                log.warning("cannot detach %s: %s", self.mount, e)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> LazyFS:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

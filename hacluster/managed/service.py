"""The managed service's process: started, health-checked, stopped and fenced by hacluster.

Owns running the operator's service (a process that embeds RocksDB itself) as the writer on the
primary (``primary_command``) or read-only on a replica (``replica_command``, e.g. a RocksDB
secondary instance), in its own process group so that stopping it reaches its children too, with
the node's environment minus the secrets (``SECRET_ENVS``) plus the configured ``env`` plus what
the node passes (``HACLUSTER_ROLE``, ``HACLUSTER_EPOCH``, ...). ``Service`` is the process and
nothing else; ``supervisor.Supervisor`` keeps it in the state the node wants; the decisions are
``policy``'s.

It must never leave a process of a stopped service behind (the whole group is signalled, and
SIGKILLed after ``stop_timeout_s``), and ``kill_now`` (fencing: the last thing done before a
lease ends) must never block or raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from hacluster.managed.policy import (
    Role,
    ServiceError,
    ServiceSpec,
    child_env,
    describe_exit,
    signal_name,
)

log = logging.getLogger(__name__)

# A health check is a quick question: a service that cannot answer within this is not healthy.
HEALTH_URL_TIMEOUT_S = 2.0
HEALTH_COMMAND_TIMEOUT_S = 5.0


# -- the process ------------------------------------------------------------------------------

class Service:
    """One process at a time, started as primary or replica, in its own process group."""

    def __init__(self, spec: ServiceSpec, node: str, log: logging.Logger | None = None) -> None:
        self.spec = spec
        self.node = node
        self.log = log or logging.getLogger(__name__)
        self._proc: asyncio.subprocess.Process | None = None
        self._pid: int | None = None          # set while not reaped; read by kill_now
        self._exited: asyncio.Event | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()           # one start or stop at a time
        self._requested = False               # this exit was asked for (stop, kill_now)
        self._killed = False                  # kill_now sent SIGKILL
        self._spawning = False                # a start is between fork and knowing the pid
        self._kill_spawned = False            # kill_now came then: kill it once it is known
        self._started_mono = 0.0
        self._env: dict[str, str] = {}
        self.role: Role | None = None          # of the running process
        self.started_at: float | None = None   # wall clock, of the running process
        self.exit_times: list[float] = []      # monotonic times of recent unexpected exits
        self.last_exit_code: int | None = None
        self.last_exit_requested = False

    @property
    def running(self) -> bool:
        return self._pid is not None

    @property
    def pid(self) -> int | None:
        return self._pid

    async def start(self, role: Role, env: Mapping[str, str]) -> None:
        """Start the service as ``role``; ``env`` is passed on as given (on top of the rest)."""
        async with self._lock:
            if self.running:
                raise ServiceError(f"{self.node}: service already running as {self.role} "
                                   f"(pid {self._pid})")
            command = self.spec.command(role)
            if not command:
                raise ServiceError(f"{self.node}: no command to run the service as {role}")
            full_env = child_env(os.environ, self.spec.env, env)
            out: Any = None
            if self.spec.log_file is not None:
                self.spec.log_file.parent.mkdir(parents=True, exist_ok=True)
                out = open(self.spec.log_file, "ab")  # noqa: SIM115 - the child keeps its copy
            self._spawning, self._kill_spawned = True, False
            try:
                proc = await asyncio.create_subprocess_exec(
                    *command, env=full_env, cwd=self.spec.cwd, stdin=asyncio.subprocess.DEVNULL,
                    stdout=out, stderr=asyncio.subprocess.STDOUT if out is not None else None,
                    start_new_session=True)
            finally:
                self._spawning = False
                if out is not None:
                    out.close()
            self._proc, self._pid, self._env = proc, proc.pid, full_env
            self._requested = self._killed = self._kill_spawned
            if self._kill_spawned:          # fenced while it was being started
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
            self.role, self.started_at = role, time.time()
            self._started_mono = time.monotonic()
            self._exited = asyncio.Event()
            self._reaper = asyncio.get_running_loop().create_task(
                self._reap(proc, self._exited, role))
            self.log.info("%s: service started as %s: pid %d, epoch %s", self.node, role,
                          proc.pid, env.get("HACLUSTER_EPOCH", "?"))

    async def _reap(self, proc: asyncio.subprocess.Process, exited: asyncio.Event,
                    role: Role) -> None:
        code = await proc.wait()
        ran_s = time.monotonic() - self._started_mono
        self._pid = None
        # Children left behind (they may hold the DB's LOCK) go with the leader. The group id
        # cannot be reused while any of its members lives; with none left, this is ESRCH.
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        self.last_exit_code, self.last_exit_requested = code, self._requested
        self.role = self.started_at = None
        if not self._requested:
            now = time.monotonic()
            self.exit_times = [t for t in self.exit_times
                               if now - t <= self.spec.restart_window_s] + [now]
            self.log.warning("%s: service (%s, pid %d) exited unexpectedly after %.1f s: %s",
                             self.node, role, proc.pid, ran_s, describe_exit(code))
        exited.set()

    async def stop(self, reason: str, timeout_s: float | None = None) -> int | None:
        """Send ``stop_signal`` to the group, SIGKILL it after the timeout; the exit code.

        None if no process was ever started; a process that already exited gives its code.
        """
        async with self._lock:
            proc, exited = self._proc, self._exited
            if proc is None or exited is None:
                return None
            if not self.running:
                return self.last_exit_code
            timeout = self.spec.stop_timeout_s if timeout_s is None else timeout_s
            role, began = self.role, time.monotonic()
            self._requested = True
            sig = signal_name(self.spec.stop_signal)
            if not self._killed:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, self.spec.stop_signal)
            try:
                async with asyncio.timeout(timeout):
                    await exited.wait()
                how = (f"stopped by {sig} in {time.monotonic() - began:.1f} s"
                       if not self._killed else "already killed")
            except TimeoutError:
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await exited.wait()
                how = f"killed after {timeout:.3f} s (no exit on {sig})"
            self.log.info("%s: service (%s, pid %d) %s, %s: %s", self.node, role, proc.pid,
                          how, describe_exit(self.last_exit_code or 0), reason)
            return self.last_exit_code

    def kill_now(self, reason: str) -> None:
        """SIGKILL the group, now; from any thread. Never blocks, never raises."""
        try:
            pid, proc = self._pid, self._proc
            if pid is None and self._spawning:
                self._kill_spawned = True
                self.log.warning("%s: service being started: killed once started: %s",
                                 self.node, reason)
                return
            if pid is None or proc is None or proc.returncode is not None or self._killed:
                return
            self._requested = self._killed = True
            os.killpg(pid, signal.SIGKILL)
            self.log.warning("%s: service (%s, pid %d) killed: %s", self.node, self.role, pid,
                             reason)
        except Exception:   # fencing goes on whatever happens here
            with contextlib.suppress(Exception):
                self.log.exception("%s: killing the service failed", self.node)

    async def wait_exit(self) -> int:
        """The exit code of the current (or last) process, once it exited."""
        exited = self._exited
        if exited is None:
            raise ServiceError(f"{self.node}: no service process was started")
        await exited.wait()
        assert self.last_exit_code is not None
        return self.last_exit_code

    async def healthy(self) -> bool:
        """``health_url`` answers 2xx, or ``health_command`` exits 0, or (with neither) the
        process is running."""
        if not self.running:
            return False
        if self.spec.health_url:
            return await self._url_ok(self.spec.health_url)
        if self.spec.health_command:
            return await self._command_ok(self.spec.health_command)
        return True

    async def wait_healthy(self, deadline_s: float) -> bool:
        """Healthy within ``deadline_s`` seconds from now; False at once if the process exits."""
        end = time.monotonic() + deadline_s
        while True:
            if await self.healthy():
                return True
            left = end - time.monotonic()
            exited = self._exited
            if not self.running or exited is None or left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.spec.health_interval_s, left)):
                    await exited.wait()

    async def _url_ok(self, url: str) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=HEALTH_URL_TIMEOUT_S)
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.get(url, allow_redirects=False) as resp:
                return 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self.log.debug("%s: service health %s: %s", self.node, url, exc)
            return False

    async def _command_ok(self, command: tuple[str, ...]) -> bool:
        try:
            proc = await asyncio.create_subprocess_exec(
                *command, env=self._env, cwd=self.spec.cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        except OSError as exc:
            self.log.debug("%s: service health command %r: %s", self.node, command, exc)
            return False
        finished = False
        try:
            async with asyncio.timeout(HEALTH_COMMAND_TIMEOUT_S):
                code = await proc.wait()
            finished = True
            return code == 0
        except TimeoutError:
            return False
        finally:
            if not finished:    # a timeout or a cancellation: the check's group goes
                with contextlib.suppress(OSError):
                    os.killpg(proc.pid, signal.SIGKILL)

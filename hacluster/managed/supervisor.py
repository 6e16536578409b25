"""Keeping the managed service in the state the node wants.

Owns ``Supervisor``: the role wanted (primary, replica or none), restarting a service that exits
on its own (after ``policy.backoff_s``), giving up after ``max_restarts`` exits within
``restart_window_s`` — or at once when the node says the service cannot run (``give_up``: its
database's options are refused) — and telling the node (which then lets another node take
over), and the service's state for ``/status``. It must never restart a service the node
stopped, fenced or gave up on, and never block the node's fencing (``fence`` is synchronous
and never raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from hacluster.managed.policy import (
    ROLES,
    Role,
    ServiceError,
    ServiceSpec,
    backoff_s,
    describe_exit,
    reconcile,
    restart_decision,
)
from hacluster.managed.service import Service

log = logging.getLogger(__name__)


GiveUp = Callable[[str], "Awaitable[None] | None"]


class Supervisor:
    """Keeps one ``Service`` in the state the node wants (``want``), restarting it after
    unexpected exits and giving up (``on_give_up``) after too many."""

    def __init__(self, spec: ServiceSpec, node: str, on_give_up: GiveUp | None = None,
                 log: logging.Logger | None = None) -> None:
        self.service = Service(spec, node, log)
        self.spec = spec
        self.node = node
        self.log = self.service.log
        self.on_give_up = on_give_up
        self.restarts = 0
        self._wanted: Role | None = None
        self._env: dict[str, str] = {}
        self._failures: list[float] = []        # monotonic: unexpected exits, failed starts
        self._failed_role: Role | None = None   # in the backoff before restarting it
        self._given_up_role: Role | None = None
        self._given_up_at = 0.0
        self._state = "stopped"
        self._since = time.time()
        self._reason: str | None = None
        self._changed = asyncio.Event()         # wanted state changed: the loop looks again
        self._stepped = asyncio.Event()         # the loop did something: want() looks again
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callbacks: set[asyncio.Task[None]] = set()
        # Set by the node: why the service's database options were refused on the primary.
        self.options_error: str | None = None

    # -- the node's side ----------------------------------------------------------------------

    async def want(self, role: str | None, env: Mapping[str, str] | None = None) -> None:
        """The state wanted: ``"primary"``, ``"replica"`` or None (stopped).

        Returns once it is under way: the process for ``role`` started (its health is still
        being waited on), or stopped; or the role failed to start or was given up on. A change
        of ``env`` alone restarts nothing (it is used at the next start). A replica without
        ``replica_command`` runs nothing. A role given up on stays given up until ``reset()``
        or until ``restart_window_s`` after giving up.
        """
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown service role {role!r}")
        wanted: Role | None = "primary" if role == "primary" else (
            "replica" if role == "replica" and self.spec.replica_command else None)
        self._set_wanted(wanted, dict(env or {}))
        self._ensure_task()
        while True:
            self._stepped.clear()
            if self._wanted != wanted or self._settled():
                return
            await self._stepped.wait()

    def _settled(self) -> bool:
        svc, wanted = self.service, self._wanted
        if wanted is None:
            return not svc.running
        return ((svc.running and svc.role == wanted) or self.given_up
                or (self._state == "failed" and self._failed_role == wanted))

    async def stop(self, reason: str, timeout_s: float | None = None) -> int | None:
        """Want it stopped, and stop it now: ``stop_signal``, SIGKILL after ``timeout_s``
        (default ``stop_timeout_s``). Its exit code (None if none was ever started)."""
        self._set_wanted(None, self._env)
        return await self.service.stop(reason, timeout_s)

    def fence(self, reason: str) -> None:
        """SIGKILL the service now and want it stopped; synchronous, from any thread, never
        raises."""
        self.service.kill_now(reason)
        try:
            loop = self._loop
            try:
                here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                here = None
            if loop is None or here is loop:
                self._set_wanted(None, self._env)
            else:
                loop.call_soon_threadsafe(self._set_wanted, None, self._env)
        except Exception:   # the kill is what matters
            self.log.exception("%s: fencing the supervisor failed", self.node)

    def give_up(self, reason: str) -> None:
        """Give up on the wanted role now, as after too many exits: the service is stopped and
        not started in that role again within ``restart_window_s``, and ``on_give_up`` is
        told (``reason`` is its argument; the caller logs it). For a service the node found
        cannot run (its database's options); nothing if no role is wanted."""
        role = self._wanted or self.service.role
        if role is None or self.given_up:
            return
        self._give_up(role, reason)
        self._changed.set()             # the loop stops it

    def reset(self) -> None:
        """Forget the failures and a give-up: try the wanted role again."""
        self._given_up_role, self._failures = None, []
        self._changed.set()

    @property
    def running(self) -> bool:
        return self.service.running

    @property
    def pid(self) -> int | None:
        return self.service.pid

    @property
    def role(self) -> Role | None:
        return self.service.role

    @property
    def given_up(self) -> bool:
        return self._given_up_role is not None and self._wanted == self._given_up_role

    @property
    def primary_given_up(self) -> bool:
        """The service was given up on as primary less than ``restart_window_s`` ago, whatever
        is wanted now (a node in that state should not be elected again yet)."""
        return (self._given_up_role == "primary"
                and time.monotonic() - self._given_up_at < self.spec.restart_window_s)

    def status(self) -> dict[str, object]:
        """For /status: state is running, stopped, starting, failed (waiting to restart) or
        given_up; since is when it entered that state (Unix time)."""
        svc = self.service
        return {"state": self._state, "wanted": self._wanted, "pid": svc.pid, "role": svc.role,
                "restarts": self.restarts, "last_exit_code": svc.last_exit_code,
                "since": self._since, "reason": self._reason,
                "options_error": self.options_error}

    async def close(self, reason: str = "shutdown") -> None:
        """Stop the service and the supervising task."""
        self._set_wanted(None, self._env)
        await self.service.stop(reason)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- the loop -----------------------------------------------------------------------------

    def _set_wanted(self, role: Role | None, env: dict[str, str]) -> None:
        if role is not None and role == self._given_up_role and (
                time.monotonic() - self._given_up_at >= self.spec.restart_window_s):
            self._given_up_role = None      # its failures aged out: try again
            self._changed.set()
        if role != self._wanted:
            self._failures = []             # a new role starts with a clean record
        if (role, env) != (self._wanted, self._env):
            self._wanted, self._env = role, env
            self._changed.set()

    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._loop = asyncio.get_running_loop()
            self._task = self._loop.create_task(self._run())

    def _set_state(self, state: str, reason: str | None = None) -> None:
        if state != self._state:
            self._state, self._since = state, time.time()
        if reason is not None or state in ("running", "stopped"):
            self._reason = reason
        self._stepped.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._step()
                self._stepped.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("%s: service supervisor step failed", self.service.node)
                await asyncio.sleep(1.0)

    async def _step(self) -> None:
        self._changed.clear()
        svc = self.service
        action = reconcile(self._wanted, svc.role if svc.running else None, self.given_up)
        if action == "idle":
            if self.given_up:
                self._set_state("given_up", self._reason)
            else:
                self._set_state("stopped")
            await self._changed.wait()
        elif action == "stop":
            await svc.stop("given up" if self.given_up
                           else f"wanted {self._wanted or 'stopped'}")
        elif action == "start" and self._wanted is not None:
            await self._start(self._wanted, dict(self._env))
        elif action == "watch":
            self._set_state("running")
            await self._watch()

    async def _start(self, role: Role, env: dict[str, str]) -> None:
        self._set_state("starting")
        try:
            await self.service.start(role, env)
        except (OSError, ServiceError) as exc:
            await self._failed(role, f"could not start: {exc}")
            return
        self._stepped.set()
        health = asyncio.ensure_future(self.service.wait_healthy(self.spec.start_timeout_s))
        try:
            while not health.done():
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait({health, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if not health.done():
                    self._changed.clear()
                    if self._wanted != role or self.given_up:
                        return              # the loop stops it
        finally:
            health.cancel()
        if health.result():
            return
        svc = self.service
        if not svc.running:
            if svc.last_exit_requested:
                return                      # stopped or fenced meanwhile: not a failure
            await self._failed(role, f"{describe_exit(svc.last_exit_code or 0)} while starting")
            return
        reason = f"not healthy within {self.spec.start_timeout_s:g} s"
        await svc.stop(reason)
        await self._failed(role, reason)

    async def _watch(self) -> None:
        role = self.service.role or "primary"
        exit_ = asyncio.ensure_future(self.service.wait_exit())
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            await asyncio.wait({exit_, changed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exit_.cancel()
            changed.cancel()
        if exit_.done() and not exit_.cancelled() and not self.service.last_exit_requested:
            await self._failed(role, f"exited unexpectedly: {describe_exit(exit_.result())}")

    async def _failed(self, role: Role, reason: str) -> None:
        if self.given_up:
            return      # given up meanwhile (``give_up``): nothing to restart, no one to tell
        now = time.monotonic()
        window = self.spec.restart_window_s
        self._failures = [t for t in self._failures if now - t <= window] + [now]
        node = self.service.node
        if restart_decision(self._failures, now, self.spec.max_restarts, window) == "give_up":
            why = (f"service ({role}) {reason}; {len(self._failures)} failures within "
                   f"{window:g} s, giving up")
            self.log.error("%s: %s", node, why)
            self._give_up(role, why)
            return
        delay = backoff_s(len(self._failures))
        self._failed_role = role
        self._set_state("failed", f"{reason}; restarting in {delay:.1f} s")
        self.log.warning("%s: service (%s) %s; restarting in %.1f s", node, role, reason, delay)
        await asyncio.sleep(delay)
        if self._wanted == role:
            self.restarts += 1

    def _give_up(self, role: Role, why: str) -> None:
        self._given_up_role, self._given_up_at = role, time.monotonic()
        self._set_state("given_up", why)
        # Its own task: a callback that awaits this supervisor must not wait on itself.
        told = asyncio.get_running_loop().create_task(self._tell_give_up(why))
        self._callbacks.add(told)
        told.add_done_callback(self._callbacks.discard)

    async def _tell_give_up(self, why: str) -> None:
        if self.on_give_up is None:
            return
        try:
            result = self.on_give_up(why)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.log.exception("%s: the give-up callback failed", self.service.node)

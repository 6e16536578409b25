"""Operator hooks: commands run on role changes, never in the way of fencing.

Owns running ``hooks.on_promote``, ``hooks.on_demote`` and ``hooks.on_role_change`` as shell
commands with the node's name, role, epoch and primary in the environment, in the background,
with a timeout. It must never delay a role change or the write gate (the gate is closed before
a demotion hook starts; a promotion hook runs after the gate opened), and a failing, hanging or
missing command is logged, never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from hacluster.config import SECRET_ENVS, HooksConfig

log = logging.getLogger(__name__)


class Hooks:
    def __init__(self, cfg: HooksConfig, node: str) -> None:
        self.cfg = cfg
        self.node = node
        self._tasks: set[asyncio.Task[None]] = set()

    def fire(self, event: str, *, role: str, epoch: int, primary: str | None) -> None:
        """Start the hooks for ``event`` ("promote", "demote" or "follow") in the background."""
        commands = [getattr(self.cfg, f"on_{event}", None), self.cfg.on_role_change]
        # Secrets stay out of hook environments.
        env = {k: v for k, v in os.environ.items() if k not in SECRET_ENVS}
        env |= {"HACLUSTER_NODE": self.node, "HACLUSTER_ROLE": role,
               "HACLUSTER_EPOCH": str(epoch), "HACLUSTER_PRIMARY": primary or "",
               "HACLUSTER_EVENT": event}
        for command in commands:
            if command:
                task = asyncio.get_running_loop().create_task(self._run(command, env, event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, command: str, env: dict[str, str], event: str) -> None:
        try:
            proc = await asyncio.create_subprocess_shell(
                command, env=env, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            log.error("%s: %s hook %r could not start: %s", self.node, event, command, exc)
            return
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                _, err = await proc.communicate()
        except TimeoutError:
            # The whole process group: the shell's children go too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            log.error("%s: %s hook %r killed after %.1f s", self.node, event, command,
                      self.cfg.timeout_s)
            return
        if proc.returncode:
            log.error("%s: %s hook %r exited %d: %s", self.node, event, command,
                      proc.returncode, err.decode(errors="replace").strip()[-500:])
        else:
            log.info("%s: %s hook %r done", self.node, event, command)

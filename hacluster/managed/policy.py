"""What the managed service is and the supervisor's decisions, as pure functions.

Owns ``ServiceSpec`` (the commands, signals, timeouts and health check of the operator's
service) and ``service_spec`` (a node's, from the config), ``restart_decision`` (restart after
an unexpected exit, or give up after ``max_restarts`` within ``restart_window_s``),
``backoff_s``, ``reconcile`` (the next step from what is wanted and what runs) and ``child_env``
(the node's environment minus the secrets). It must never start, signal or wait for a process:
that is ``service``'s and ``supervisor``'s.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hacluster.config import SECRET_ENVS

if TYPE_CHECKING:
    from hacluster.config import ApplicationConfig

Role = Literal["primary", "replica"]
ROLES: tuple[Role, ...] = ("primary", "replica")
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
LAUNCHER = Path(__file__).resolve().parent / "launch.py"


class ServiceError(RuntimeError):
    """The service cannot be started as asked (already running, no command for the role)."""


@dataclass(frozen=True)
class ServiceSpec:
    primary_command: tuple[str, ...]
    replica_command: tuple[str, ...] | None = None    # None: replicas run no service
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 10.0
    start_timeout_s: float = 30.0                     # health must pass within it
    health_url: str | None = None                     # 2xx = healthy
    health_command: tuple[str, ...] | None = None     # exit 0 = healthy
    health_interval_s: float = 1.0
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    max_restarts: int = 3
    restart_window_s: float = 60.0
    log_file: Path | None = None                      # stdout+stderr appended; None = inherit

    def command(self, role: Role) -> tuple[str, ...] | None:
        return self.primary_command if role == "primary" else self.replica_command


def service_spec(app: ApplicationConfig, node: str, log_dir: Path) -> ServiceSpec:
    """The spec of ``node``'s service from the config: commands wrapped in ``launch`` so that
    the service dies with this process (a SIGKILLed hacluster leaves no writer behind)."""
    def wrapped(role: str) -> tuple[str, ...] | None:
        argv = app.command_for(role, node)
        if argv is None:
            return None
        # By path, not ``-m``: importing the hacluster package would add half a second to
        # every start (and so to every failover).
        return (sys.executable, "-I", str(LAUNCHER), str(os.getpid()), "--", *argv)

    primary = wrapped("primary")
    assert primary is not None
    health_url = app.health_url.replace("{node}", node) if app.health_url else None
    return ServiceSpec(
        primary_command=primary, replica_command=wrapped("replica"),
        stop_signal=int(signal.Signals[app.stop_signal]), stop_timeout_s=app.stop_timeout_s,
        start_timeout_s=app.start_timeout_s, health_url=health_url,
        health_command=app.health_command, health_interval_s=app.health_interval_s,
        env=dict(app.env), cwd=app.cwd, max_restarts=app.max_restarts,
        restart_window_s=app.restart_window_s,
        log_file=app.log_file_for(node) or log_dir / "service.log")


# -- decisions --------------------------------------------------------------------------------

def restart_decision(exit_times: Sequence[float], now: float, max_restarts: int,
                     window_s: float) -> Literal["restart", "give_up"]:
    """After an unexpected exit (its time included in ``exit_times``): restart, or give up when
    more than ``max_restarts`` exits happened within the last ``window_s`` seconds."""
    recent = sum(1 for t in exit_times if now - t <= window_s)
    return "give_up" if recent > max_restarts else "restart"


def backoff_s(recent_exits: int) -> float:
    """The pause before a restart: 0.1 s after one recent exit, doubling, at most 2 s."""
    if recent_exits <= 0:
        return 0.0
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** min(recent_exits - 1, 32))


def reconcile(wanted: str | None, running_role: str | None,
              given_up: bool) -> Literal["start", "stop", "watch", "idle"]:
    """The supervisor's next step, from the role wanted and the role running (None: none)."""
    if running_role is not None:
        return "watch" if running_role == wanted and not given_up else "stop"
    return "idle" if wanted is None or given_up else "start"


def child_env(base: Mapping[str, str], extra: Mapping[str, str],
              given: Mapping[str, str]) -> dict[str, str]:
    """The service's environment: ``base`` (the node's) minus the secrets, + config + node's."""
    return {k: v for k, v in base.items() if k not in SECRET_ENVS} | dict(extra) | dict(given)


def signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def describe_exit(code: int) -> str:
    """asyncio's return code: negative = killed by that signal."""
    return f"killed by {signal_name(-code)}" if code < 0 else f"exit code {code}"

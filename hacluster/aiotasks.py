"""Stopping asyncio tasks that a component started: cancel them all, then wait for each.

Owns the one way components end their background tasks on stop. It must never leave a task
running past the call, and never let a task's own failure at stop time stop the caller's
shutdown (the task's error was logged where it happened, or belongs to a spell that is over).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel every task (``None`` entries are skipped), then await each in turn, swallowing
    its cancellation or the error it ended with."""
    started = [t for t in tasks if t is not None]
    for task in started:
        task.cancel()
    for task in started:
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass

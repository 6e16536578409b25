"""Stopping asyncio tasks that a component started: cancel them all, then wait for each.

Owns the one way components end their background tasks on stop. It must never leave a task
running past the call, and never let a task's own failure at stop time stop the caller's
shutdown (the task's error was logged where it happened, or belongs to a spell that is over).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

# A task still running this long after a cancel is cancelled again (see cancel_and_wait).
CANCEL_AGAIN_S = 0.05


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """Cancel every task (``None`` entries are skipped), then wait for each to end, ignoring
    its cancellation or the error it ended with.

    A task that is still running CANCEL_AGAIN_S after a cancel is cancelled again: a
    cancellation can be lost on the way (Python 3.11's ``asyncio.wait_for`` returns the
    result instead when its awaitable completed in the same turn), and one lost cancel must
    not hold a node's shutdown forever. The caller's own cancellation is not swallowed.
    """
    started = [t for t in tasks if t is not None]
    for task in started:
        task.cancel()
    for task in started:
        while not task.done():
            await asyncio.wait([task], timeout=CANCEL_AGAIN_S)
            if not task.done():
                task.cancel()
        if not task.cancelled():
            task.exception()            # retrieved: no "never retrieved" warning at exit

"""Stopping tasks (``hacluster.aiotasks``): a lost cancellation must not hold a shutdown.

Python 3.11's ``asyncio.wait_for`` returns its awaitable's result, dropping a cancellation,
when the awaitable completed in the same turn of the event loop. A node's control loop slept
that way between passes: a SIGTERM that arrived while a Raft change woke the loop left the
loop running, so ``stop()`` waited for it forever (seen in a full test run: a node that took
20 s to stop, until its harness killed it). The package no longer calls ``asyncio.wait_for``;
``cancel_and_wait`` cancels again what a lost cancellation left running.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from hacluster.aiotasks import CANCEL_AGAIN_S, cancel_and_wait

PACKAGE = Path(__file__).resolve().parent.parent / "hacluster"


async def ends_within(seconds: float, tasks: list[asyncio.Task[None]]) -> bool:
    """Whether ``cancel_and_wait(tasks)`` returns within ``seconds`` (it is left running
    otherwise: the test then fails instead of hanging)."""
    stopper = asyncio.get_running_loop().create_task(cancel_and_wait(tasks))
    done, _ = await asyncio.wait([stopper], timeout=seconds)
    return stopper in done


async def test_a_task_that_swallows_a_cancellation_is_stopped() -> None:
    wake = asyncio.Event()
    passes = 0
    running = True

    async def loop_like_the_control_loop() -> None:
        nonlocal passes
        while running:
            try:
                await asyncio.wait_for(wake.wait(), 5)     # the 3.11 pattern, on purpose
            except TimeoutError:
                pass
            wake.clear()
            passes += 1

    task = asyncio.get_running_loop().create_task(loop_like_the_control_loop())
    await asyncio.sleep(0.01)
    wake.set()
    await asyncio.sleep(0)          # the event's waiter completes; the loop has not resumed
    ended = await ends_within(5, [task])
    running = False                 # lets it end if it is still going (the old code)
    wake.set()
    assert ended, f"still running after 5 s and {passes} passes"
    assert task.done()


async def test_a_task_that_always_swallows_it_once_more_still_ends() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        for _ in range(3):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
        await asyncio.sleep(10)

    task = asyncio.get_running_loop().create_task(stubborn())
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    assert await ends_within(5, [task])
    assert task.cancelled() and swallowed == 3
    assert asyncio.get_running_loop().time() - started >= 3 * CANCEL_AGAIN_S * 0.9


async def test_errors_and_none_entries_are_ignored() -> None:
    async def fails() -> None:
        raise RuntimeError("its own failure")

    failed = asyncio.get_running_loop().create_task(fails())
    await asyncio.sleep(0)
    finished = asyncio.get_running_loop().create_task(asyncio.sleep(0))
    await finished
    await cancel_and_wait([None, failed, finished])
    assert failed.done() and finished.done()


async def test_the_caller_s_own_cancellation_is_not_swallowed() -> None:
    refusing = True

    async def holds_on() -> None:
        while refusing:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass                # ends on a cancel only once told to

    stubborn = asyncio.get_running_loop().create_task(holds_on())
    await asyncio.sleep(0)
    stopper = asyncio.get_running_loop().create_task(cancel_and_wait([stubborn]))
    await asyncio.sleep(0.1)
    stopper.cancel()
    await asyncio.wait([stopper], timeout=2)
    cancelled = stopper.cancelled()
    refusing = False                # now it may end (also under the old code, to clean up)
    stubborn.cancel()
    await asyncio.wait([stubborn, stopper], timeout=2)
    assert cancelled, "cancel_and_wait swallowed its caller's cancellation"
    assert stubborn.done()


def test_the_package_never_calls_asyncio_wait_for() -> None:
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and node.attr == "wait_for"
                    and isinstance(node.value, ast.Name) and node.value.id == "asyncio"):
                calls.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not calls, ("asyncio.wait_for drops a cancellation on Python 3.11 when its "
                       f"awaitable has just completed; use asyncio.timeout: {calls}")

"""What every fuzz test shares: example counts that scale, hypothesis settings, a time limit.

``HACLUSTER_FUZZ_EXAMPLES=N`` multiplies every example count for a long hunt; ``time_limit``
turns a hang into a failure with a traceback instead of a stuck test run.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

from hypothesis import HealthCheck, settings

SCALE = max(1, int(os.environ.get("HACLUSTER_FUZZ_EXAMPLES", "1")))


def fuzz_settings(examples: int) -> Any:
    return settings(max_examples=examples * SCALE, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Turn a hang into a failure (with a traceback) instead of a stuck test run."""
    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

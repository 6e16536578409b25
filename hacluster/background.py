"""The scheduling policy of the node's background threads: Raft's tick thread and the WAL sync.

Owns ``yield_to_event_loop()``, which a background thread calls once as it starts. Such a
thread is woken by the event loop (a sync round asked for) or by its own timers and sockets
(Raft), and under the default policy each wake-up preempts whatever runs on that CPU — on a
busy primary, the event loop in the middle of its turn: a switch away and back per wake-up,
and for a Python thread a wait for the GIL the loop holds anyway. Under ``SCHED_BATCH`` a
woken thread takes an idle CPU at once, or the busy one when its task blocks or its slice
ends (milliseconds at most: far inside Raft's timeouts and a lease). The native WAL syncer
(``hacluster._walsync``) does the same from C.

It must never change a policy the operator chose for the process (a realtime policy,
``SCHED_IDLE``, set with systemd's ``CPUSchedulingPolicy=`` or ``chrt``): only a thread under
the default ``SCHED_OTHER`` is moved. It must never raise: a platform without the call, or a
refusal, leaves the thread as it was.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def yield_to_event_loop(what: str) -> bool:
    """Put the calling thread under ``SCHED_BATCH`` if it runs under ``SCHED_OTHER``; whether
    it did. ``what`` names the thread in the log line."""
    batch = getattr(os, "SCHED_BATCH", None)
    if batch is None or not hasattr(os, "sched_setscheduler"):
        return False
    try:
        # Thread 0 is the calling thread (Linux schedules threads, not processes).
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return False
        os.sched_setscheduler(0, batch, os.sched_param(0))
    except OSError as exc:
        log.debug("%s thread keeps its scheduling policy: %s", what, exc)
        return False
    log.debug("%s thread runs under SCHED_BATCH (its wake-ups do not preempt the event loop)",
              what)
    return True

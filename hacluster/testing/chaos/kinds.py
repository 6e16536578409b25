"""The chaos soak's fault kinds and fixed figures, and whether a soak can run on this host.

Owns ``KINDS`` (every fault the nemesis injects), ``POWER_KINDS`` (those that cut a disk's
power, which need LazyFS), the run's fixed sizes and budgets (tmpfs size, register keys, the
restart wait, the budget of the linearizability re-check) and ``unavailable_reason``
(namespaces, mount, FUSE). It must never inject, start or mount anything.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

from hacluster.testing.lazyfs import fuse_unavailable

KINDS = ("kill", "pause", "isolate_primary", "split", "one_way", "restart_all", "disk_full",
         "wipe_replica", "switchover", "power_primary", "power_sync_standby", "power_all",
         "power_majority_after_failover")
POWER_KINDS = tuple(k for k in KINDS if k.startswith("power_"))
TMPFS_MB = 256
REGISTER_KEYS = 8         # shared by every register writer: concurrent ops for the WGL check
RESTART_S = 20.0          # NodeProc.start waits this long for /health
# Linearizability keys check_all could not decide in its budget are tried again with this one.
RECHECK_STATES, RECHECK_SECONDS = 2_000_000, 300.0


def unavailable_reason(kinds: Iterable[str] = KINDS) -> str | None:
    """Why a soak with ``kinds`` cannot run here (power loss needs FUSE), or None."""
    from hacluster.testing.netns import namespaces_unavailable
    reason = namespaces_unavailable()
    if reason is None and os.geteuid() == 0 and shutil.which("mount") is None:
        return "mount is missing (the disk-full fault needs a tmpfs)"
    if reason is None and any(k in POWER_KINDS for k in kinds):
        reason = fuse_unavailable()
    return reason

"""Checking the running service's RocksDB options again whenever it writes a new OPTIONS file.

Owns ``OptionsWatch``: while the service runs as primary, one look at its database directory
(a ``stat``, and a listing when the directory changed or when asked to list) finds the newest
``OPTIONS-NNNNNN`` file; a name not checked before is checked with
``options.check_service_options``, and a refusal is kept (``error``) for the node to act on.
The decisions are pure functions: ``options_to_check`` (which file, if any, to check given the
last one checked and a listing) and ``must_list`` (whether a directory whose mtime is known
must be listed again).

The check at start (``node.managed.managed_preflight``) only sees a database that already
exists. A fresh service creates its database on its first start, and a service may open it
again with other options (a restart, a failover, a new column family): RocksDB writes a new
OPTIONS file each time, and this is what notices it.

It must never open the service's database, write anything in its directory, block for longer
than a listing and the read of one small file, or report a refusal for a file RocksDB deleted
under it (it keeps the two newest: a newer one is there, and is looked at next).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from pathlib import Path

from hacluster.managed.options import ManagedDbError, check_service_options

__all__ = ["SETTLE_NS", "OptionsWatch", "must_list", "options_to_check"]

_OPTIONS = re.compile(r"^OPTIONS-(\d+)$")    # never the ``.dbtmp`` RocksDB writes it as

# File systems stamp a directory's mtime from a coarse clock (a jiffy, up to 10 ms): a change
# in the same tick as the last one leaves the mtime as it was. A listing made this long after
# the mtime it saw cannot have missed such a change.
SETTLE_NS = 100_000_000


def options_to_check(last_checked: str | None, names: Iterable[str]) -> str | None:
    """The newest ``OPTIONS-NNNNNN`` among ``names`` (by number) when it is not
    ``last_checked``; None when it is, or when there is none (no database yet)."""
    best: tuple[int, str] | None = None
    for name in names:
        m = _OPTIONS.match(name)
        if m and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), name)
    if best is None or best[1] == last_checked:
        return None
    return best[1]


def must_list(seen: tuple[int, int] | None, mtime_ns: int) -> bool:
    """Whether the directory must be listed again, given ``seen`` = (its mtime then, the wall
    clock just before that listing) of the last listing, and its mtime now: never listed, a
    different mtime, or a listing too close to the mtime it saw to be trusted (``SETTLE_NS``;
    a wall clock set back counts as too close)."""
    if seen is None:
        return True
    mtime_then, listed_at = seen
    return mtime_ns != mtime_then or not 0 <= mtime_then <= listed_at - SETTLE_NS


class OptionsWatch:
    """The options of one primary spell's service: ``look`` returns the refusal, if any."""

    def __init__(self, db_dir: Path) -> None:
        self.db_dir = db_dir
        self.checked: str | None = None     # the newest OPTIONS file found acceptable
        self.error: str | None = None       # the refusal; kept: the spell is over
        self._seen: tuple[int, int] | None = None   # (dir mtime, listed at) of the last listing

    def look(self, *, list_anyway: bool = False) -> str | None:
        """Check the newest OPTIONS file if it is new; the refusal (ManagedDbError's text,
        naming the option and the file) or None. ``list_anyway``: list the directory even if
        its mtime says nothing changed. Raises OSError when the directory cannot be read."""
        if self.error is not None:
            return self.error
        try:
            mtime = os.stat(self.db_dir).st_mtime_ns
            if not list_anyway and not must_list(self._seen, mtime):
                return None
            listed_at = time.time_ns()
            names = os.listdir(self.db_dir)
        except FileNotFoundError:
            return None             # the service has not created its database yet
        self._seen = (mtime, listed_at)
        name = options_to_check(self.checked, names)
        if name is None:
            return None
        path = self.db_dir / name
        try:
            check_service_options(self.db_dir, path)
        except ManagedDbError as exc:
            if not path.exists():
                self._seen = None   # deleted meanwhile: a newer one is there, look again
                return None
            self.error = str(exc)
            return self.error
        self.checked = name
        return None

"""The epoch history as the archive needs it: from Raft, and as recorded in the archive.

Owns ``live_history`` (the node's epoch records from the replicated state; none in static
mode), ``write_history`` (each primary records the history it sees as
``history/e<epoch>.json`` when it starts archiving, so a restore without any cluster still knows
which archived ranges survived) and ``read_history`` (every recorded view, merged: records of
one epoch never change). It must never invent a record.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from hacluster.backup.layout import HISTORY_PREFIX, history_name
from hacluster.backup.objects import Archive
from hacluster.backup.plan import Epoch, merge_history

if TYPE_CHECKING:
    from hacluster.consensus.loop import ControlLoop


def live_history(node: Any) -> list[Epoch]:
    control: ControlLoop | None = node.control
    if control is None:
        return []
    return [Epoch(r.epoch, r.start_seq, r.primary, r.wall_time)
            for r in control.state().history]


def as_records(history: list[Epoch]) -> list[dict[str, Any]]:
    return [{"epoch": r.epoch, "start_seq": r.start_seq, "primary": r.primary,
             "wall_time": r.wall_time} for r in history]


def write_history(archive: Archive, epoch: int, node: str, history: list[Epoch]) -> None:
    record = {"epoch": epoch, "primary": node, "written_at": time.time(),
              "history": as_records(history)}
    archive.put(history_name(epoch), json.dumps(record).encode())


def read_history(archive: Archive) -> list[Epoch]:
    """Every epoch history recorded in the archive, merged."""
    views = []
    for name, _size in archive.listing(HISTORY_PREFIX):
        doc = json.loads(archive.get(name))
        views.append([Epoch(int(r["epoch"]), int(r["start_seq"]), str(r["primary"]),
                            float(r["wall_time"])) for r in doc["history"]])
    return merge_history(*views)

"""Which epoch wrote this node's data, and does it lie on the cluster's true history?

Owns ``<data_dir>/lineage.json``: the epochs this node's data came from, as a list of
(epoch, first seq) transitions — recorded before a new primary's first write and when a replica
applies the first batch of a newer epoch — and the pure check against the epoch history in Raft:
a node whose last batch was written in epoch e, while the history says another epoch owns that
seq, has a divergent tail (writes no current primary has). It must never guess: data of unknown
lineage is reported as such, and the file is replaced atomically (write, fsync, rename).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hacluster.consensus.epochs import conflict
from hacluster.consensus.state import EpochRecord
from hacluster.fsutil import fsync_parent

MAX_TRANSITIONS = 100


@dataclass(frozen=True, slots=True)
class Divergence:
    epoch: int          # the epoch that wrote this node's divergent batches
    first_seq: int      # the first seq the true history gave to a later epoch
    last_seq: int       # this node's last seq


class Lineage:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "lineage.json"
        self.transitions: list[tuple[int, int]] = []
        if self.path.exists():
            self.transitions = [(int(e), int(s)) for e, s in json.loads(self.path.read_text())]

    def last_epoch(self, latest_seq: int) -> int | None:
        """The epoch that wrote ``latest_seq`` (None: unknown, e.g. no transitions yet)."""
        owner = None
        for epoch, first in self.transitions:
            if first <= latest_seq:
                owner = epoch
        return owner

    def record(self, epoch: int, first_seq: int) -> None:
        """From ``first_seq`` on, batches come from ``epoch`` (durable before any such write)."""
        if self.transitions and self.transitions[-1][0] >= epoch:
            return
        # A transition at or after first_seq that never got data is superseded.
        kept = [(e, s) for e, s in self.transitions if s < first_seq]
        self.transitions = ([*kept, (epoch, first_seq)])[-MAX_TRANSITIONS:]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(self.transitions, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_parent(self.path)     # the rename too: a lineage lost at power loss lies

    def reset(self, epoch: int, first_seq: int) -> None:
        """After installing a checkpoint: the data is the primary's, up to its epoch."""
        self.transitions = []
        self.path.unlink(missing_ok=True)
        self.record(epoch, first_seq)


def find_divergence(lineage: Lineage, latest_seq: int,
                    history: Sequence[EpochRecord]) -> Divergence | None:
    """Does this node hold writes past the point where a later epoch took over?

    Unknown lineage counts as epoch 0 (only data older than every epoch record is safe), and a
    lineage older than the oldest record kept in Raft cannot be vouched for: the whole
    database is then treated as divergent (first_seq 1), so the node bootstraps.
    """
    mine = lineage.last_epoch(latest_seq) or 0
    off = conflict(mine, latest_seq, history)
    if off is None:
        return None
    return Divergence(mine, off.first_seq, latest_seq)

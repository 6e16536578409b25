"""A node taking on a new dynamic configuration while it runs (``NodePort.apply_settings``).

Owns swapping the dynamic sections (``replication``, ``consensus``, ``backup``) of the
node's config for the ones the control loop validated from Raft, re-deriving what was built
from them (the write gate's lease timing), and the lease the lock records for an epoch (the
cap on the holder's own, see ``lease.holder_lease_end``). Everything else in the node reads
``self.cfg`` when it acts, so it sees the new values from its next action on. It must never
touch a file-only section (addresses, data dir, certificates, credentials reloaded by SIGHUP),
and never lengthen the lease of an epoch already running.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from hacluster.config import ClusterConfig
from hacluster.config.dynamic import DYNAMIC_KEYS
from hacluster.consensus import settings
from hacluster.consensus.lease import LeaseTiming

if TYPE_CHECKING:
    from hacluster.consensus.loop import ControlLoop
    from hacluster.fencing import WriteGate

log = logging.getLogger("hacluster.node")

DYNAMIC_SECTIONS = tuple(sorted({key.partition(".")[0] for key in DYNAMIC_KEYS}))


class DynamicSettings:
    """Mixed into ``Node``; these are the attributes it provides."""

    name: str
    cfg: ClusterConfig
    control: ControlLoop | None
    gate: WriteGate
    lease_timing: LeaseTiming | None

    def apply_settings(self, cfg: ClusterConfig) -> None:
        """Take the dynamic sections of ``cfg`` (the file's config with the Raft overrides,
        validated); keep every other section as it is."""
        changed = {s: getattr(cfg, s) for s in DYNAMIC_SECTIONS
                   if hasattr(cfg, s) and getattr(cfg, s) != getattr(self.cfg, s, None)}
        if not changed:
            return
        self.cfg = dataclasses.replace(self.cfg, **changed)
        if self.lease_timing is not None:
            self.lease_timing = settings.lease_timing(self.cfg)
            self.gate.set_timing(self.lease_timing)

    def _lock_lease_s(self, epoch: int) -> float | None:
        """The lease the lock records for ``epoch`` (None: not known here)."""
        if self.control is None:
            return None
        lock = self.control.state().lock
        return lock.lease_s if lock.epoch == epoch and lock.lease_s > 0 else None

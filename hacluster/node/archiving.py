"""The node's glue to continuous backup: start and stop the archiver with the primary role.

Owns when an archiver runs (on the primary, when ``backup.url`` is set and the node holds its
database: managed mode is not archived), finding it from the API side (``archiver_of``), and
the ``backup`` section of ``/status``. It must never start two archivers for one node, and
never let the archiver's failure stop the primary's other parts.
"""

from __future__ import annotations

import logging
from typing import Any

from hacluster.backup.archiver import ATTR, ArchivedNode, Archiver, archiver_of

log = logging.getLogger(__name__)


def start_archiver(node: ArchivedNode) -> None:
    """Start this primary spell's archiver (when backup is on and the node holds its DB)."""
    cfg = node.cfg.backup
    if not cfg.enabled or archiver_of(node) is not None:
        return
    if node.store is None:
        log.warning("backup: %s is primary in managed mode: its WAL is not archived "
                    "(managed mode has no continuous backup yet)", node.name)
        return
    archiver = Archiver(node)
    setattr(node, ATTR, archiver)
    archiver.start()


async def stop_archiver(node: object) -> None:
    archiver = archiver_of(node)
    if archiver is not None:
        setattr(node, ATTR, None)
        await archiver.stop()


def backup_status(node: object) -> dict[str, Any] | None:
    """The ``backup`` section of ``/status``: the archiver's state on the primary."""
    cfg = getattr(node, "cfg", None)
    if cfg is None or not cfg.backup.enabled:
        return None
    archiver = archiver_of(node)
    if archiver is None:
        return {"archiving": False, "url": cfg.backup.url,
                "note": "only the primary archives"}
    return {"archiving": True, **archiver.snapshot()}

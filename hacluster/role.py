"""Who is primary, in which epoch, as one node holds it; and this build's version.

Owns ``Role`` (from the config in static mode, from the consensus loop otherwise) and
``VERSION``, which the node, the API and the CLI all show. Plain values; it must never import
the node or the API (both import it).
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass


def _version() -> str:
    try:
        return importlib.metadata.version("hacluster")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


VERSION = _version()


@dataclass(frozen=True, slots=True)
class Role:
    """Who is primary, in which epoch: from the config (static) or the consensus loop."""

    primary: str | None
    epoch: int

"""File-system durability helpers shared by every module that replaces files by rename.

Owns the one way this project makes a file or a rename durable: fsync the file, and fsync the
directory that holds the new name (a rename is in the directory, not in the file). It must
never be skipped on a path whose loss at power loss would lose or misstate data (lineage,
divergent tails, checkpoints, Raft metadata).
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path | str) -> None:
    """fsync a file or a directory (a directory's fsync makes renames in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_parent(path: Path | str) -> None:
    """fsync the directory holding ``path``: its new name survives a power loss."""
    fsync_path(Path(path).resolve().parent)

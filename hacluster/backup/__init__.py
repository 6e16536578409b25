"""Continuous backup to an object store and point-in-time restore.

The primary archives its WAL by sequence number (``archiver``) and base backups of its
database (``base``) into a bucket or directory (``objects``), every object sealed with a
checksum, compressed and optionally encrypted (``envelope``), named and laid out as
``layout`` says; ``plan`` holds the pure decisions (which archived ranges the epoch history
keeps, where archiving continues, what retention deletes, what a restore replays);
``restore`` rebuilds a database at a seq or a time; ``metrics`` and ``http`` expose it.
Nothing here may make a client write wait, and nothing archived may be a write a failover
can take back (only what is acknowledged per the replication mode is archived).
"""

from __future__ import annotations


class BackupError(Exception):
    """A backup or restore step failed; the message names the object and what is wrong."""

"""The client's errors: what a caller of ``Client`` or ``AsyncClient`` may have to handle.

Owns the exception classes only. It must never hold retry decisions (``rules`` does).
"""

from __future__ import annotations

from typing import Any


class HaclusterError(Exception):
    """Base of the client's errors."""


class RequestFailed(HaclusterError):
    """The cluster answered with an error that retrying will not fix (4xx, 5xx)."""

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body


class PreconditionFailed(RequestFailed):
    """A compare-and-set found the key last written at another seq (``seq``; 0: absent)."""

    def __init__(self, message: str, seq: int, body: Any = None) -> None:
        super().__init__(412, message, body)
        self.seq = seq


class NoLeader(HaclusterError):
    """No node could be reached as primary before the call's deadline."""


class OutcomeUnknown(HaclusterError):
    """The write may or may not have been applied (it was sent; no acknowledgement came)."""


class WatchLost(HaclusterError):
    """A watch cannot resume where it was: the changes since ``next_seq`` are no longer in
    the primary's WAL (410), or the new primary's history differs from the one watched (409).
    Read the current values and start a new watch from the seq they show."""

    def __init__(self, status: int, message: str, next_seq: int) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.next_seq = next_seq

"""Exception classes for WAL reading.

Owns: the exception hierarchy raised by ``hacluster.wal`` and its message formats.
Must never: import other ``hacluster`` modules, do I/O, or log (callers decide what
to report).

Every exception keeps its constructor arguments in ``args`` so that instances
survive pickling (e.g. when crossing a process boundary) unchanged.
"""

from __future__ import annotations

__all__ = [
    "WalCorruption",
    "WalError",
    "WalGone",
    "WalNotAtBoundary",
    "WalUnsupported",
]


class WalError(Exception):
    """A problem with the bytes of a WAL file at a known place."""

    what = "WAL error"

    def __init__(self, path: str, offset: int, detail: str) -> None:
        super().__init__(path, offset, detail)
        self.path = path
        self.offset = offset
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.what} in {self.path} at offset {self.offset}: {self.detail}"


class WalCorruption(WalError):
    """Bytes that cannot be what RocksDB wrote: bad CRC, bad length, count mismatch,
    a truncated entry inside a complete record, or a sequence gap between batches."""

    what = "corrupt WAL record"


class WalUnsupported(WalError):
    """A well-formed record or WriteBatch entry this reader refuses to interpret.

    ``tag`` is the log record type or the WriteBatch tag byte; ``kind`` says which
    ("WAL record type" or "WriteBatch entry").
    """

    def __init__(
        self, path: str, offset: int, detail: str, tag: int, kind: str = "WriteBatch entry"
    ) -> None:
        Exception.__init__(self, path, offset, detail, tag, kind)
        self.path = path
        self.offset = offset
        self.detail = detail
        self.tag = tag
        self.kind = kind

    def __str__(self) -> str:
        return f"unsupported {self.kind} in {self.path} at offset {self.offset}: {self.detail}"


class WalGone(Exception):
    """The requested sequence number can no longer be served from the retained logs.

    ``oldest_seq`` is the first sequence number still available, if known.
    """

    def __init__(self, message: str, oldest_seq: int | None = None) -> None:
        super().__init__(message, oldest_seq)
        self.message = message
        self.oldest_seq = oldest_seq

    def __str__(self) -> str:
        return self.message


class WalNotAtBoundary(WalGone):
    """The requested sequence number lies strictly inside a WriteBatch.

    A batch is applied atomically, so a replica can only resume at a batch
    boundary; ``batch_first``/``batch_last`` give the batch that contains it.
    """

    def __init__(
        self,
        message: str,
        oldest_seq: int | None = None,
        batch_first: int = 0,
        batch_last: int = 0,
    ) -> None:
        Exception.__init__(self, message, oldest_seq, batch_first, batch_last)
        self.message = message
        self.oldest_seq = oldest_seq
        self.batch_first = batch_first
        self.batch_last = batch_last

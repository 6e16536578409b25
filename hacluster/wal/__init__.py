"""RocksDB write-ahead-log reading: the record format, WriteBatch decoding, and tailing."""

from hacluster.wal.batch import (
    DELETE,
    DELETE_RANGE,
    PUT,
    SINGLE_DELETE,
    Op,
    WalBatch,
    decode_batch,
    encode_batch,
)
from hacluster.wal.errors import (
    WalCorruption,
    WalError,
    WalGone,
    WalNotAtBoundary,
    WalUnsupported,
)
from hacluster.wal.reader import WalReader, list_logs
from hacluster.wal.records import LogRecordReader, write_log_file

__all__ = [
    "DELETE",
    "DELETE_RANGE",
    "PUT",
    "SINGLE_DELETE",
    "LogRecordReader",
    "Op",
    "WalBatch",
    "WalCorruption",
    "WalError",
    "WalGone",
    "WalNotAtBoundary",
    "WalReader",
    "WalUnsupported",
    "decode_batch",
    "encode_batch",
    "list_logs",
    "write_log_file",
]

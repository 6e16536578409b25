"""RocksDB write-ahead-log reading: the record format, WriteBatch decoding, and tailing."""

"""hacluster: a consensus-backed high-availability cluster manager for RocksDB."""

__version__ = "0.1.0"

"""Managed mode: a service that embeds RocksDB itself, supervised by hacluster.

The service opens its database read-write with its own handle; hacluster never does. On the
primary it checks the service's options, tails the service's WAL files from disk, and makes
checkpoints through a RocksDB secondary instance (``hacluster.managed.checkpoint``).
"""

"""hacluster: a consensus-backed high-availability cluster manager for RocksDB.

``from hacluster import Client, AsyncClient`` gives the Python clients and their errors
(``HaclusterError``, ``RequestFailed``, ``PreconditionFailed``, ``NoLeader``,
``OutcomeUnknown``, ``WatchLost``; see ``hacluster.client``).
"""

from hacluster.client import (
    AsyncClient,
    Client,
    Event,
    HaclusterError,
    Item,
    NoLeader,
    OutcomeUnknown,
    PreconditionFailed,
    RequestFailed,
    TxnResult,
    WatchLost,
    WriteResult,
)

__all__ = ["AsyncClient", "Client", "Event", "HaclusterError", "Item", "NoLeader",
           "OutcomeUnknown", "PreconditionFailed", "RequestFailed", "TxnResult", "WatchLost",
           "WriteResult", "__version__"]
__version__ = "0.1.0"

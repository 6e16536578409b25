"""hacluster: a consensus-backed high-availability cluster manager for RocksDB.

``from hacluster import Client, AsyncClient`` gives the Python clients and their errors
(``HaclusterError``, ``RequestFailed``, ``PreconditionFailed``, ``NoLeader``,
``OutcomeUnknown``, ``WatchLost``; see ``hacluster.client``).

The clients are imported on first use (PEP 562): a node process, which never uses them, does
not pay for urllib3 and the client modules at every start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    if name in __all__:
        import hacluster.client as client

        return getattr(client, name)
    raise AttributeError(f"module 'hacluster' has no attribute {name!r}")

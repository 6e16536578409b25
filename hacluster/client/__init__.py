"""The Python clients of a hacluster cluster: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both share one implementation of the rules (``rules``: finding the primary, retrying, the
outcome-unknown rule; ``ops``: request shapes and answers; ``watching``: resuming a watch) and
differ only in their I/O (``sync``: urllib3 pools; ``aio``: an aiohttp session). This package
must never import the node: applications install it to talk to a cluster, nothing more.
"""

from hacluster.client.aio import AsyncClient
from hacluster.client.common import CA_FILE_ENV, client_token
from hacluster.client.errors import (
    HaclusterError,
    NoLeader,
    OutcomeUnknown,
    PreconditionFailed,
    RequestFailed,
    WatchLost,
)
from hacluster.client.ops import Item, TxnResult, WriteResult
from hacluster.client.rules import Answer
from hacluster.client.sync import Client
from hacluster.client.watching import Event

__all__ = ["CA_FILE_ENV", "Answer", "AsyncClient", "Client", "Event", "HaclusterError", "Item",
           "NoLeader", "OutcomeUnknown", "PreconditionFailed", "RequestFailed", "TxnResult",
           "WatchLost", "WriteResult", "client_token"]

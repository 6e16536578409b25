"""The Python clients of a hacluster cluster: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both share one implementation of the rules (``rules``: finding the primary, retrying, the
outcome-unknown rule; ``ops``: request shapes and answers; ``watching``: resuming a watch) and
differ only in their I/O (``sync``: urllib3 pools; ``aio``: an aiohttp session). This package
must never import the node: applications install it to talk to a cluster, nothing more.

Each name is imported from its module on first use (PEP 562): ``hacluster.client.errors``
alone (the node's operator commands catch those errors) does not load urllib3 or aiohttp's
client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Each public name and the module that defines it.
_MODULE_OF = {
    "AsyncClient": "aio", "CA_FILE_ENV": "common", "client_token": "common",
    "HaclusterError": "errors", "NoLeader": "errors", "OutcomeUnknown": "errors",
    "PreconditionFailed": "errors", "RequestFailed": "errors", "WatchLost": "errors",
    "Item": "ops", "TxnResult": "ops", "WriteResult": "ops", "Answer": "rules",
    "Client": "sync", "Event": "watching",
}
__all__ = ["CA_FILE_ENV", "Answer", "AsyncClient", "Client", "Event", "HaclusterError", "Item",
           "NoLeader", "OutcomeUnknown", "PreconditionFailed", "RequestFailed", "TxnResult",
           "WatchLost", "WriteResult", "client_token"]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'hacluster.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hacluster.client.{module}"), name)
    globals()[name] = value         # later lookups find it without this function
    return value

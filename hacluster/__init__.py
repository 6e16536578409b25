"""hacluster: a consensus-backed high-availability cluster manager for RocksDB.

``from hacluster import Client`` gives the Python client and its errors (``HaclusterError``,
``RequestFailed``, ``NoLeader``, ``OutcomeUnknown``; see ``hacluster.tools.client``).
"""

from hacluster.tools.client import Client, HaclusterError, NoLeader, OutcomeUnknown, RequestFailed

__all__ = ["Client", "HaclusterError", "NoLeader", "OutcomeUnknown", "RequestFailed",
           "__version__"]
__version__ = "0.1.0"

"""hacluster: a consensus-backed high-availability cluster manager for RocksDB.

``from hacluster import Client`` gives the Python client (see ``hacluster.tools.client``).
"""

from hacluster.tools.client import Client

__all__ = ["Client", "__version__"]
__version__ = "0.1.0"

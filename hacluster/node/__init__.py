"""The node process: ``Node`` (``process``) with its write path, views and upkeep.

Re-exports what other modules import from ``hacluster.node``.
"""

from hacluster.node.process import GC_GEN0_THRESHOLD, Node
from hacluster.node.systemd import notify_systemd

__all__ = ["GC_GEN0_THRESHOLD", "Node", "notify_systemd"]

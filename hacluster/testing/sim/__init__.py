"""A deterministic, seeded simulator of a whole cluster around the real pure core.

Owns nothing but the re-exports of ``world`` (the simulated cluster, its faults and its
verdict) and ``revert`` (the rule-1 fix taken out, to prove a violation can be found). It must
never be imported by product code: it exists for tests and ``bench/sim.py``.
"""

from hacluster.testing.sim.revert import stale_tail_fix_reverted
from hacluster.testing.sim.world import Config, Result, World, run_seed

__all__ = ["Config", "Result", "World", "run_seed", "stale_tail_fix_reverted"]

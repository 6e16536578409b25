"""The stale-tail fix, reverted for one experiment: proof that the simulator can find it.

Owns one context manager that swaps, for the duration of a ``with`` block, the rule-1 pieces
of the pure core for their pre-fix versions: ``eligibility.rank`` ranks by seq alone, and
``eligibility.position_refusal`` / ``state.acquire_refusal`` check only the acknowledged floor,
ignoring ``epochs.conflict``. It must never be used outside a test or a bench run (it patches
module globals of the product, process-wide), and must always restore them, also on error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import hacluster.consensus.eligibility as decide_mod
import hacluster.consensus.state as state_mod
from hacluster.consensus.eligibility import lag_allowance
from hacluster.consensus.model import Policy
from hacluster.consensus.state import Acquire, ClusterState, floor_refusal


def _rank(state: ClusterState, seq: int, last_epoch: int) -> tuple[int, int]:
    return 0, seq


def _position_refusal(state: ClusterState, seq: int, last_epoch: int, policy: Policy,
                      force: bool = False) -> str | None:
    if force:
        return None
    below = floor_refusal(state, seq, lag_allowance(policy))
    return None if below is None else f"{below}: it would lose an acknowledged write"


def _acquire_refusal(state: ClusterState, cmd: Acquire) -> str | None:
    return None if cmd.force else floor_refusal(state, cmd.start_seq - 1, cmd.lag_allowance)


@contextmanager
def stale_tail_fix_reverted() -> Iterator[None]:
    """Run the block with seq-only ranking and no lineage check in elections."""
    saved = (decide_mod.rank, decide_mod.position_refusal, state_mod.acquire_refusal)
    decide_mod.rank = _rank
    decide_mod.position_refusal = _position_refusal
    state_mod.acquire_refusal = _acquire_refusal
    try:
        yield
    finally:
        decide_mod.rank, decide_mod.position_refusal, state_mod.acquire_refusal = saved

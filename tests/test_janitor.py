"""The checkpoint janitor belongs to the primary role: one while primary, none otherwise.

An in-process Node over a real RocksDB store, promoted and demoted again and again through its
own ``become_primary`` / ``become_replica``; the janitors are counted among the tasks the
event loop really has.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hacluster.config import load_config
from hacluster.node import Node
from hacluster.role import Role
from hacluster.testing.harness import Cluster


def janitors() -> int:
    return sum(1 for t in asyncio.all_tasks()
               if not t.done() and getattr(t.get_coro(), "__qualname__", "") == "Upkeep._janitor")


async def test_promotions_and_demotions_leave_at_most_one_janitor(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)                # static config: n1 is primary in epoch 1
    cfg = load_config(cluster.nodes["n1"].config)
    cfg.node("n1").data_dir.mkdir(parents=True)
    node = Node(cfg, "n1", Role("n1", 1))
    node._start_primary(node.open_store())
    node.gate.open(1)
    try:
        assert janitors() == 1
        for epoch in range(2, 12):
            await node.become_replica(None, epoch)
            assert not node.is_primary
            assert janitors() == 0, f"a janitor outlived the demotion in epoch {epoch}"
            await node.become_primary(epoch, time.monotonic())
            assert node.is_primary and node.checkpoints is not None
            assert janitors() == 1, f"{janitors()} janitors after promotion {epoch}"
    finally:
        await node.stop()
    assert janitors() == 0

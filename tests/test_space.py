"""When to refuse writes for lack of space, and the reserve file: the decision table, and the
guard on a real (small) directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from hacluster.space import SpaceAction, SpaceGuard, space_action

FLOOR, RESERVE = 64, 32


@pytest.mark.parametrize(("free", "present", "low", "hard", "expected"), [
    (500, True, False, False, (SpaceAction.NONE, False)),          # plenty of room
    (500, False, False, False, (SpaceAction.RESTORE, False)),      # start: make the reserve
    (63, True, False, False, (SpaceAction.RELEASE, True)),         # below the floor
    (63, False, False, False, (SpaceAction.NONE, True)),           # ... with no reserve left
    (500, True, False, True, (SpaceAction.RELEASE, True)),         # RocksDB's own ENOSPC
    (90, False, True, False, (SpaceAction.NONE, True)),            # back over the floor but
                                                                   # not over floor + reserve
    (97, False, True, False, (SpaceAction.RESTORE, False)),        # room for both: resume
    (500, False, True, True, (SpaceAction.NONE, True)),            # hard error until reopened
])
def test_space_action(free: float, present: bool, low: bool, hard: bool,
                expected: tuple[SpaceAction, bool]) -> None:
    assert space_action(free, present, low, hard, FLOOR, RESERVE) == expected


def test_no_reserve_configured_means_only_the_floor() -> None:
    assert space_action(10, False, False, False, 0, 0) == (SpaceAction.NONE, False)
    assert space_action(0.5, False, False, False, 0, 0) == (SpaceAction.NONE, True)
    assert space_action(2, False, True, False, 0, 0) == (SpaceAction.NONE, False)


def test_guard_makes_and_releases_its_reserve(tmp_path: Path) -> None:
    guard = SpaceGuard(tmp_path, 1, 2, "n1")
    assert guard.tend() is None
    assert guard.reserve.stat().st_size == 2 << 20
    why = guard.tend("RocksDB ran out of space: test")
    assert why == "RocksDB ran out of space: test" and not guard.reserve.exists()
    assert guard.tend() is None and guard.reserve.exists()     # the disk here has room

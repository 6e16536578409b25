"""Suite-wide rules: tests that need root must not skip silently where CI runs as root.

CI runs as root (network namespaces, tmpfs and FUSE mounts, system users). A test of those
modules that skips there would hide a core path, so under ``CI=true`` such a skip fails the
run instead, naming its reason; elsewhere it stays a skip, which ``pytest -rs`` lists with its
reason.
"""

from __future__ import annotations

import compileall
import os
from collections.abc import Generator
from pathlib import Path

import pytest

import hacluster

# Modules whose tests need root (namespaces, mounts, a system user) and nothing CI lacks.
NEEDS_ROOT = {
    "test_partition", "test_disk_full", "test_chaos", "test_lazyfs", "test_raft_durability",
    "test_power_loss", "test_consensus_raft", "test_ansible",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_root: must not be skipped under CI=true")
    # The suite starts hundreds of processes that import the package (nodes, the command
    # line). Where PYTHONDONTWRITEBYTECODE is set (it is in this machine's environment) none
    # of them writes bytecode, so each compiled every module again: ~0.12 s of CPU per start.
    # Compiled once here, they read it (the variable only stops writing).
    compileall.compile_dir(Path(hacluster.__file__).parent, quiet=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in NEEDS_ROOT:
            item.add_marker(pytest.mark.needs_root)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()   # type: ignore[attr-defined]
    if (report.skipped and os.environ.get("CI") == "true"
            and item.get_closest_marker("needs_root") is not None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} was skipped under CI=true, where it must run: "
                           f"{reason}")

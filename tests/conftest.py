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
from hacluster.testing import harness

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


@pytest.fixture(autouse=True)
def _nodes_stop_on_sigterm() -> Generator[None, None, None]:
    """A node the test stopped must have exited on SIGTERM, not been killed after
    harness.STOP_TIMEOUT_S: a hang on stop is a bug (a rolling restart would stall on it), and
    it costs the suite the whole wait."""
    before = len(harness.STOP_HANGS)
    yield
    hangs = harness.STOP_HANGS[before:]
    if hangs:
        pytest.fail("a node did not stop on SIGTERM: " + "; ".join(hangs), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Module- and session-scoped clusters stop after the last test's check above.
    if harness.STOP_HANGS and exitstatus == 0:
        print("\nnodes that did not stop on SIGTERM:\n  " + "\n  ".join(harness.STOP_HANGS))
        session.exitstatus = 1

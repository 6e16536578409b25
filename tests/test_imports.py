"""What a process imports: a node never loads the clients; applications still get every name.

``hacluster`` and ``hacluster.client`` import their public names on first use (PEP 562). A
node process (``python -m hacluster run``) and the operator commands' parser must not pay for
urllib3, aiohttp's client helpers of ours, or tqdm at every start; ``from hacluster import
Client`` must work as before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import ModuleType

import pytest

import hacluster
import hacluster.client

# Loaded only by the clients (and tqdm by a progress bar on a terminal).
CLIENT_ONLY = ("urllib3", "tqdm", "hacluster.client.sync", "hacluster.client.aio",
               "hacluster.client.rules", "hacluster.client.ops")


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_a_node_process_does_not_load_the_clients() -> None:
    # What `python -m hacluster run` imports before it reads its config.
    loaded = modules_after("import hacluster.tools.cli\nimport hacluster.node.process")
    assert "hacluster.node.process" in loaded
    assert not loaded & set(CLIENT_ONLY), sorted(loaded & set(CLIENT_ONLY))


def test_the_client_errors_alone_do_not_load_the_clients() -> None:
    loaded = modules_after("from hacluster.client.errors import OutcomeUnknown")
    assert not loaded & set(CLIENT_ONLY), sorted(loaded & set(CLIENT_ONLY))


def test_using_a_client_loads_it() -> None:
    loaded = modules_after("from hacluster import Client")
    assert {"urllib3", "hacluster.client.sync"} <= loaded


@pytest.mark.parametrize("package", [hacluster, hacluster.client])
def test_every_exported_name_resolves(package: ModuleType) -> None:
    assert package.__all__
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    missing = "Nope"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        getattr(package, missing)


def test_the_exported_names_are_the_modules_own() -> None:
    from hacluster import AsyncClient, Client, OutcomeUnknown
    from hacluster.client import aio, errors, sync

    assert Client is sync.Client and AsyncClient is aio.AsyncClient
    assert OutcomeUnknown is errors.OutcomeUnknown is hacluster.client.OutcomeUnknown
    assert hacluster.__version__

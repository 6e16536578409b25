"""``--log-format json``: node, role, epoch and seq on every line.

The filter and provider with stand-ins (a provider that raises, a line from another thread),
then real node processes started with ``--log-format json``: every line of their stderr is a
JSON object with the four fields, and role and epoch change on the lines after a failover.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hacluster import logfields
from hacluster.logfields import Fields, NodeFields
from hacluster.testing.harness import Cluster, NodeProc, wait_for
from hacluster.tools.cli import JsonFormatter


@pytest.fixture
def registry() -> Iterator[None]:
    yield
    logfields.register(None)


def record(msg: str = "hello") -> logging.LogRecord:
    return logging.LogRecord("hacluster.test", logging.INFO, __file__, 1, msg, None, None)


def formatted(filt: NodeFields, rec: logging.LogRecord) -> dict[str, Any]:
    assert filt.filter(rec) is True
    doc: dict[str, Any] = json.loads(JsonFormatter().format(rec))
    return doc


def test_fields_before_a_node_registers_name_only_the_node(registry: None) -> None:
    logfields.register(None)
    doc = formatted(NodeFields("n7"), record())
    assert doc["msg"] == "hello"
    assert {k: doc[k] for k in logfields.FIELDS} == {"node": "n7", "role": None, "epoch": None,
                                                     "seq": None}


def test_provider_fields_and_the_last_good_ones_when_it_raises(registry: None) -> None:
    state: dict[str, Any] = {"fail": False}

    def provide(on_loop: bool) -> Fields:
        if state["fail"]:
            raise RuntimeError("database closed")
        return Fields("n1", "primary", 4, 120 if on_loop else -1)

    logfields.register(provide, "n1")
    filt = NodeFields()
    doc = formatted(filt, record())
    assert (doc["node"], doc["role"], doc["epoch"], doc["seq"]) == ("n1", "primary", 4, 120)
    state["fail"] = True
    doc = formatted(filt, record("again"))        # no exception, the last fields known
    assert (doc["node"], doc["role"], doc["epoch"], doc["seq"]) == ("n1", "primary", 4, 120)
    assert doc["msg"] == "again"


def test_a_line_from_another_thread_is_told_it_is_off_the_loop(registry: None) -> None:
    seen: list[bool] = []

    def provide(on_loop: bool) -> Fields:
        seen.append(on_loop)
        return Fields("n1", "replica", 2, None)

    logfields.register(provide, "n1")
    filt = NodeFields()
    filt.filter(record())
    worker = threading.Thread(target=lambda: filt.filter(record()))
    worker.start()
    worker.join()
    assert seen == [True, False]


# -- real node processes ---------------------------------------------------------------------

@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("jsonlogs"), consensus=True)
    yield c
    c.stop()


def json_lines(node: NodeProc) -> list[dict[str, Any]]:
    """Every line the node wrote (stdout and stderr share the log file), each one parsed as
    JSON: a line that is not JSON fails the test, naming it."""
    docs = []
    for n, line in enumerate(node.log().splitlines(), 1):
        try:
            doc = json.loads(line)
        except ValueError:
            pytest.fail(f"{node.name}'s log line {n} is not JSON: {line!r}")
        assert isinstance(doc, dict), line
        for key in ("ts", "level", "logger", "msg", *logfields.FIELDS):
            assert key in doc, f"{node.name}'s log line {n} lacks {key!r}: {line}"
        assert doc["node"] == node.name, line
        docs.append(doc)
    return docs


def test_every_line_of_a_json_logging_node_carries_its_role_epoch_and_seq(
        cluster: Cluster) -> None:
    for node in cluster.nodes.values():
        node.start("--log-format", "json")
    first = cluster.wait_primary()
    assert first.put("k", b"v").status == 200
    cluster.wait_converged()
    epoch = first.status()["epoch"]

    def serving(doc: dict[str, Any]) -> bool:
        return " serving on " in doc["msg"]

    for node in cluster.nodes.values():
        docs = json_lines(node)
        assert any(serving(d) for d in docs), node.name
        after = docs[[serving(d) for d in docs].index(True):]
        for doc in after:
            assert doc["role"] in ("primary", "replica"), doc
            assert isinstance(doc["epoch"], int), doc
            assert doc["seq"] is None or isinstance(doc["seq"], int), doc
        assert any(isinstance(d["seq"], int) for d in after), node.name
    # The line announcing the role is the first logged in it.
    became = [d for d in json_lines(first) if d["msg"].startswith(f"{first.name} is primary:")]
    assert became and became[-1]["role"] == "primary" and became[-1]["epoch"] == epoch

    first.kill()
    rest = [n for n in cluster.nodes.values() if n is not first]
    second = cluster.wait_primary(among=rest)
    assert second.put("k2", b"v").status == 200

    def new_epoch_logged() -> bool:
        docs = json_lines(second)
        return any(d["role"] == "primary" and (d["epoch"] or 0) > epoch for d in docs)

    wait_for(new_epoch_logged, 20, f"{second.name} to log a line as primary of a new epoch")
    docs = json_lines(second)
    assert any(d["role"] == "replica" and d["epoch"] == epoch for d in docs), \
        f"{second.name} logged nothing as a replica of epoch {epoch}"
    other = next(n for n in rest if n is not second)
    new = second.status()["epoch"]
    wait_for(lambda: any(d["role"] == "replica" and d["epoch"] == new
                         for d in json_lines(other)), 20,
             f"{other.name} to log a line as a replica of epoch {new}")

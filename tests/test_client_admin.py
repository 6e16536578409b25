"""Admin requests whose answer is lost: both clients, real sockets, a server that reads each
admin POST and hangs up without answering (as a primary stepping down as it answers can).

A switchover, failover or backup sent twice is not the first one retried: the client raises
OutcomeUnknown after one POST; only requests the caller calls idempotent (pause, resume)
move on to the next node.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hacluster.client import AsyncClient, Client, HaclusterError, OutcomeUnknown
from hacluster.tools import config_cli, ctl


class HangUpServer:
    """Answers ``GET /leader`` naming itself; reads any POST whole, counts it, and closes the
    connection without a word."""

    def __init__(self, log: list[str], state: dict[str, str | None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.posts = log              # every server's POSTs, in the order they came
        # Shared by the servers: who they name as leader, and who once a POST came.
        self.state = state
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, rest = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = next((int(v) for k, _, v in (line.partition(": ") for line in lines)
                               if k.lower() == "content-length"), 0)
                while len(rest) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    rest += chunk
                body_in, data = rest[:length], rest[length:]
                if method == "POST":
                    self.posts.append(path)
                    if self.state["after_post"]:
                        self.state["leader"] = self.state["after_post"]
                    return              # hang up: the request was sent, no answer came
                if method == "PATCH":
                    self.posts.append(f"PATCH {path}")
                    self._apply(json.loads(body_in)["changes"])
                    return
                body = json.dumps(self.state["config"] if path == "/v1/admin/config" else
                                  {"leader": self.state["leader"], "url": self.url,
                                   "epoch": 3}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    def _apply(self, changes: dict[str, object]) -> None:
        """A config change the server takes (``apply_patch``) or not, before hanging up;
        ``also`` is another change made right after it by someone else."""
        config = self.state["config"]
        for change in ([changes] if self.state["apply_patch"] else []) + (
                [self.state["also"]] if self.state["also"] else []):
            config["version"] += 1
            for key, value in change.items():
                if value is None:
                    config["overrides"].pop(key, None)
                else:
                    config["overrides"][key] = value

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[list[HangUpServer]]:
    log: list[str] = []
    state: dict[str, Any] = {"leader": "x", "after_post": None, "apply_patch": False,
                             "also": None, "config": {"version": 4, "overrides": {}}}
    pair = [HangUpServer(log, state), HangUpServer(log, state)]
    yield pair
    for s in pair:
        s.close()


def posts(servers: list[HangUpServer]) -> list[str]:
    return servers[0].posts


def test_a_switchover_whose_answer_is_lost_is_outcome_unknown_and_sent_once(
        servers: list[HangUpServer]) -> None:
    with Client([s.url for s in servers], "t", timeout=2.0, failover_timeout=3.0) as client:
        with pytest.raises(OutcomeUnknown):
            client.admin("switchover", {}, on_primary=True)
        assert posts(servers) == ["/v1/admin/switchover"]
        # To any node (a failover): not sent on to the next node either.
        with pytest.raises(OutcomeUnknown):
            client.admin("failover", {"to": "n2", "force": False})
        assert posts(servers) == ["/v1/admin/switchover", "/v1/admin/failover"]


def test_an_idempotent_admin_request_moves_on_to_the_next_node(
        servers: list[HangUpServer]) -> None:
    with Client([s.url for s in servers], "t", timeout=2.0, failover_timeout=3.0) as client:
        with pytest.raises(HaclusterError) as caught:
            client.admin("pause", idempotent=True)
        assert not isinstance(caught.value, OutcomeUnknown)
        assert posts(servers) == ["/v1/admin/pause", "/v1/admin/pause"]


def test_a_caller_that_opted_into_retries_gets_them(servers: list[HangUpServer]) -> None:
    with Client([s.url for s in servers], "t", timeout=2.0, failover_timeout=3.0,
                retry_unknown=True) as client:
        with pytest.raises(HaclusterError) as caught:
            client.admin("failover", {"to": "n2", "force": False})
        assert not isinstance(caught.value, OutcomeUnknown)
        assert len(posts(servers)) == 2


def test_the_async_client_sends_a_lost_switchover_once(servers: list[HangUpServer]) -> None:
    async def main() -> None:
        async with AsyncClient([s.url for s in servers], "t", timeout=2.0,
                               failover_timeout=3.0) as client:
            with pytest.raises(OutcomeUnknown):
                await client.admin("switchover", {}, on_primary=True)
            assert posts(servers) == ["/v1/admin/switchover"]
            with pytest.raises(OutcomeUnknown):
                await client.admin("failover", {"to": "n2", "force": False})
            assert len(posts(servers)) == 2
            with pytest.raises(HaclusterError) as caught:
                await client.admin("resume", idempotent=True)
            assert not isinstance(caught.value, OutcomeUnknown)
            assert posts(servers)[2:] == ["/v1/admin/resume", "/v1/admin/resume"]

    asyncio.run(main())


def test_hacluster_switchover_judges_a_lost_answer_by_who_leads_after(
        servers: list[HangUpServer], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(ctl, "HANDOVER_WAIT_S", 1.0)
    with Client([s.url for s in servers], "t", timeout=2.0, failover_timeout=3.0) as client:
        # Nobody else leads afterwards: failed, with the outcome named unknown, sent once.
        assert ctl.switchover(client, None) == 1
        assert "outcome unknown" in capsys.readouterr().err
        assert posts(servers) == ["/v1/admin/switchover"]
        # The handover did happen (the leader answer names another node): done, sent once.
        servers[0].state["after_post"] = "y"
        assert ctl.switchover(client, None) == 0
        assert "switchover done: y is primary" in capsys.readouterr().out
        assert posts(servers) == ["/v1/admin/switchover"] * 2


def test_a_config_change_whose_answer_is_lost_is_outcome_unknown_and_sent_once(
        servers: list[HangUpServer]) -> None:
    with (Client([s.url for s in servers], "t", timeout=2.0, failover_timeout=3.0) as client,
          pytest.raises(OutcomeUnknown)):
        client.change_cluster_config({"replication.sync_timeout_s": 4}, 4)
    assert posts(servers) == ["PATCH /v1/admin/config"]

    async def main() -> None:
        async with AsyncClient([s.url for s in servers], "t", timeout=2.0,
                               failover_timeout=3.0) as client:
            with pytest.raises(OutcomeUnknown):
                await client.change_cluster_config({"replication.sync_timeout_s": 4})

    asyncio.run(main())
    assert posts(servers) == ["PATCH /v1/admin/config"] * 2


@pytest.mark.parametrize(("applied", "also", "code", "says"), [
    (True, None, 0, "(the answer was lost; read back: applied"),
    (False, None, 1, "not applied: the answer was lost"),
    (True, {"failover.max_lag": 9}, 1, "outcome unknown"),
    (False, {"replication.sync_timeout_s": 7}, 1, "outcome unknown"),
])
def test_hacluster_config_set_judges_a_lost_answer_by_reading_the_config_back(
        servers: list[HangUpServer], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch, applied: bool, also: dict[str, Any] | None,
        code: int, says: str) -> None:
    monkeypatch.setattr(config_cli, "SETTLE_S", 0.5)
    servers[0].state.update(apply_patch=applied, also=also)
    with Client([s.url for s in servers], "t", timeout=2.0, failover_timeout=3.0) as client:
        assert config_cli.change(client, {"replication.sync_timeout_s": 4}, None) == code
    out = capsys.readouterr()
    assert says in (out.out if code == 0 else out.err)
    assert posts(servers) == ["PATCH /v1/admin/config"]     # never sent a second time

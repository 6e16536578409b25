"""The client's rules without sockets: each call is driven step by step with scripted answers
(as ``Client`` and ``AsyncClient`` drive them with real I/O), on a fake clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from hacluster.client.errors import NoLeader, OutcomeUnknown, WatchLost
from hacluster.client.rules import (
    Abandon,
    Answer,
    Await,
    Call,
    Failure,
    Nodes,
    Pending,
    Result,
    Send,
    Settings,
    Sleep,
    backoff,
    on_any,
    on_primary,
)
from hacluster.client.watching import LineSplitter, WatchCursor

A, B, C = "http://a:1", "http://b:1", "http://c:1"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def leader_answer(url: str) -> Answer:
    return Answer(200, json.dumps({"leader": "x", "url": url, "epoch": 2}).encode(), {}, url)


def drive(call: Call, script: Callable[[Any], Result], clock: Clock
          ) -> tuple[Answer | BaseException, list[Any]]:
    """Run ``call``; ``script`` answers each Send (and Await). Returns the outcome and every
    step."""
    steps: list[Any] = []
    try:
        step = next(call)
        while True:
            steps.append(step)
            if isinstance(step, Sleep):
                clock.now += step.seconds
                got: Result = None
            elif isinstance(step, Abandon):
                got = Failure(step.url, True, "given up")
            else:
                got = script(step)
            step = call.send(got)
    except StopIteration as stop:
        return stop.value, steps
    except (NoLeader, OutcomeUnknown) as exc:
        return exc, steps


def put_call(nodes: Nodes, clock: Clock, **settings: Any) -> Call:
    return on_primary(nodes, Settings(**settings), "PUT", "/v1/kv/k", b"v", {}, write=True,
                      deadline=clock.now + 5)


def test_a_write_sent_without_an_answer_is_outcome_unknown_and_not_retried() -> None:
    clock = Clock()
    nodes = Nodes([A, B], clock, lambda: 0.5)
    nodes.leader_url = A
    sent: list[str] = []

    def script(step: Send) -> Result:
        sent.append(f"{step.method} {step.url}")
        return Failure(step.url, True, "read timeout")

    outcome, _ = drive(put_call(nodes, clock), script, clock)
    assert isinstance(outcome, OutcomeUnknown) and sent == [f"PUT {A}"]
    # Opted in: the same write is sent again once a primary is found.
    nodes.leader_url = A
    answers = iter([Failure(A, True, "reset"), leader_answer(B),
                    Answer(200, b"{}", {}, B)])
    outcome, steps = drive(put_call(nodes, clock, retry_unknown=True),
                           lambda s: next(answers), clock)
    assert isinstance(outcome, Answer) and outcome.status == 200
    assert [s.url for s in steps if isinstance(s, Send)] == [A, B, B]


def test_a_write_never_sent_is_retried_on_the_node_that_leads() -> None:
    clock = Clock()
    nodes = Nodes([A, B, C], clock, lambda: 0.5)
    nodes.leader_url = A

    def script(step: Send) -> Result:
        if step.url == A:
            return Failure(A, False, "connection refused")
        if step.path == "/leader":
            return leader_answer(C)
        return Answer(200, b"{}", {}, step.url)

    outcome, steps = drive(put_call(nodes, clock), script, clock)
    assert isinstance(outcome, Answer) and outcome.url == C
    # The failed node is asked last when looking for the leader.
    leader_asks = [s.url for s in steps if isinstance(s, Send) and s.path == "/leader"]
    assert leader_asks == [B] and nodes.order()[-1] == A     # B named C


def test_a_redirect_is_followed_at_once_and_unknown_503_is_not_retried() -> None:
    clock = Clock()
    nodes = Nodes([A, B], clock, lambda: 0.5)
    nodes.leader_url = A
    answers = iter([Answer(307, b"", {"location": f"{B}/v1/kv/k"}, A),
                    Answer(503, json.dumps({"error": "not confirmed", "outcome": "unknown"})
                           .encode(), {}, B)])
    outcome, steps = drive(put_call(nodes, clock), lambda s: next(answers), clock)
    assert isinstance(outcome, OutcomeUnknown) and "not confirmed" in str(outcome)
    assert not any(isinstance(s, Sleep) for s in steps)


def test_no_primary_until_the_deadline_is_no_leader_after_growing_jittered_waits() -> None:
    clock = Clock()
    nodes = Nodes([A, B], clock, lambda: 0.0)
    outcome, steps = drive(put_call(nodes, clock),
                           lambda s: Answer(503, b'{"error": "no leader"}', {}, s.url), clock)
    assert isinstance(outcome, NoLeader)
    sleeps = [s.seconds for s in steps if isinstance(s, Sleep)]
    assert sleeps[:5] == [0.025, 0.05, 0.1, 0.2, 0.4]     # rng 0: the low end, d/2
    assert max(sleeps) <= 0.5 and clock.now <= 100 + 5 + 1e-9
    # Each attempt's timeouts stay within the deadline.
    assert all(s.timeout <= 2.0 and s.connect_timeout <= 0.5
               for s in steps if isinstance(s, Send))


@pytest.mark.parametrize("attempt", range(12))
def test_backoff_is_capped_and_jittered(attempt: int) -> None:
    low = backoff(attempt, 0.05, 1.0, lambda: 0.0)
    high = backoff(attempt, 0.05, 1.0, lambda: 0.999999)
    d = min(1.0, 0.05 * 2 ** attempt)
    assert low == pytest.approx(d / 2) and high == pytest.approx(d, rel=1e-5)


def test_a_read_on_any_node_moves_past_nodes_that_fail() -> None:
    clock = Clock()
    nodes = Nodes([A, B], clock, lambda: 0.5)
    call = on_any(nodes, Settings(), "GET", "/cluster", None, {}, url=None,
                  deadline=clock.now + 5)
    outcome, _ = drive(call, lambda s: Failure(A, False, "refused") if s.url == A
                       else Answer(200, b"{}", {}, B), clock)
    assert isinstance(outcome, Answer) and outcome.url == B


def test_lines_are_split_whatever_the_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"a"') == []
    assert splitter.feed(b': 1}\n{"b": 2}\n{"c"') == [b'{"a": 1}', b'{"b": 2}']
    assert splitter.feed(b": 3}\n") == [b'{"c": 3}']


def test_a_watch_cursor_hands_out_each_change_once_across_reconnects() -> None:
    cursor = WatchCursor("p/", "default", 5)
    assert "since_seq=5" in cursor.path() and "epoch" not in cursor.path()
    line = json.dumps({"seq": 6, "epoch": 2, "events": [
        {"type": "put", "key": "p/a", "value": "1"},
        {"type": "delete_range", "start_b64": "cC8=", "end": "p0"}]}).encode()
    events = cursor.read(line)
    assert events is not None and [(e.type, e.key, e.value, e.end, e.seq) for e in events] == [
        ("put", b"p/a", b"1", None, 6), ("delete_range", b"p/", None, b"p0", 6)]
    assert "since_seq=7" in cursor.path() and "epoch=2" in cursor.path()
    # After a reconnect the server may send seq 6 again: it is not handed out twice.
    assert cursor.read(line) == []
    assert cursor.read(b'{"progress": 20, "epoch": 3}') == []
    assert "since_seq=21" in cursor.path() and "epoch=3" in cursor.path()
    assert cursor.read(b'{"error": "n1 is no longer the primary", "status": 503}') is None
    with pytest.raises(WatchLost) as lost:
        cursor.read(b'{"error": "gone", "status": 410}')
    assert lost.value.next_seq == 21
    gone = Answer(410, b'{"error": "seq 21 is no longer in the WAL"}', {}, A)
    with pytest.raises(WatchLost):
        cursor.opened(gone)
    assert cursor.opened(Answer(503, b"{}", {}, A)) is False


def test_a_watch_from_now_learns_its_position_from_the_stream_header() -> None:
    cursor = WatchCursor("", "default", None)
    assert "since_seq" not in cursor.path()
    cursor.started({"x-hacluster-since-seq": "41"})
    assert "since_seq=41" in cursor.path()
    cursor.started({"x-hacluster-since-seq": "99"})        # known already: kept
    assert "since_seq=41" in cursor.path()


def leader_doc(url: str, epoch: int) -> Answer:
    return Answer(200, json.dumps({"leader": "x", "url": url, "epoch": epoch}).encode(), {},
                  url)


def test_a_request_the_primary_does_not_answer_is_given_up_once_the_others_name_another(
        ) -> None:
    clock = Clock()
    nodes = Nodes([A, B, C], clock, lambda: 0.5)
    nodes.leader_url, nodes.leader_epoch = A, 4
    # B still names A in epoch 4, then C names B in epoch 5: A's lease ended in their view.
    answers = iter([Pending(A), leader_doc(A, 4), leader_doc(A, 4), Pending(A),
                    leader_doc(A, 4), leader_doc(B, 5)])
    outcome, steps = drive(put_call(nodes, clock), lambda s: next(answers), clock)
    assert isinstance(outcome, OutcomeUnknown) and "given up" in str(outcome)
    kinds = [type(s).__name__ + (f" {s.url}{s.path}" if isinstance(s, Send) else "")
             for s in steps]
    assert kinds == [f"Send {A}/v1/kv/k", f"Send {B}/leader", f"Send {C}/leader", "Await",
                     f"Send {B}/leader", f"Send {C}/leader", "Abandon"]
    assert steps[0].probe_after == 0.3 and steps[0].timeout == 5.0      # the call's deadline


def test_a_slow_primary_the_others_still_follow_is_waited_for() -> None:
    clock = Clock()
    nodes = Nodes([A, B], clock, lambda: 0.5)
    nodes.leader_url, nodes.leader_epoch = A, 4
    answers = iter([Pending(A), leader_doc(A, 4), Pending(A), leader_doc(A, 4),
                    Answer(200, b'{"seq": 8}', {}, A)])
    outcome, steps = drive(put_call(nodes, clock), lambda s: next(answers), clock)
    assert isinstance(outcome, Answer) and outcome.status == 200
    assert not any(isinstance(s, Abandon) for s in steps)
    assert sum(isinstance(s, Await) for s in steps) == 2


def test_no_leader_known_to_the_others_gives_the_request_up_and_retry_unknown_resends() -> None:
    clock = Clock()
    nodes = Nodes([A, B], clock, lambda: 0.5)
    nodes.leader_url, nodes.leader_epoch = A, 4
    answers = iter([Pending(A), Answer(503, b'{"error": "no leader"}', {}, B),
                    leader_doc(B, 5), Answer(200, b"{}", {}, B)])
    outcome, steps = drive(put_call(nodes, clock, retry_unknown=True),
                           lambda s: next(answers), clock)
    assert isinstance(outcome, Answer) and outcome.url == B
    assert any(isinstance(s, Abandon) for s in steps)
    assert nodes.leader_epoch == 5

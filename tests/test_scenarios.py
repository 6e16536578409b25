"""Scenario files (tests/scenarios/*.txt): each scripts a failure step by step against the
simulator and holds the trace it must produce, like etcd raft's testdata. A difference fails
with the block, what was expected and what came; regenerate after a deliberate change with
``HACLUSTER_REWRITE_SCENARIOS=1 pytest tests/test_scenarios.py`` and review the diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from hacluster.testing.sim.scenario import Block, Runner, ScenarioError, parse, run_file

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.txt"))


def test_there_is_a_scenario_for_every_rule() -> None:
    names = {p.name for p in SCENARIOS}
    for rule in (1, 2, 3, 5, 6, 7):
        assert any(n.startswith(f"rule_{rule}_") for n in names), f"no scenario for rule {rule}"


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    outcome = run_file(path)
    assert not outcome.differences, "\n\n".join(outcome.differences)
    # Every scenario ends judged, and the judgement is clean.
    last = outcome.blocks[-1]
    assert last.command == "check", f"{path}: the last command must be 'check'"
    assert not any("VIOLATION" in line or line == "no primary" for line in last.expected), \
        last.expected


def test_a_difference_is_reported_with_its_line() -> None:
    text = "cluster nodes=3 seed=1\n----\nwrong\n"
    blocks = parse(text, "x.txt")
    out = Runner("x.txt").run(blocks[0])
    assert out != blocks[0].expected


def test_malformed_files_name_the_file_and_line() -> None:
    with pytest.raises(ScenarioError, match=r"x.txt:2: a command must be followed by '----'"):
        parse("# c\nrun 1\nno dashes\n", "x.txt")
    runner = Runner("x.txt")
    with pytest.raises(ScenarioError, match=r"x\.txt:1: the first command must be 'cluster'"):
        runner.run(Block(1, "run 1", [], []))
    runner.run(Block(1, "cluster seed=1", [], []))
    with pytest.raises(ScenarioError, match=r"x\.txt:3: unknown command 'explode'"):
        runner.run(Block(3, "explode n1", [], []))
    with pytest.raises(ScenarioError, match=r"x\.txt:4: 'crash n9'"):
        runner.run(Block(4, "crash n9", [], []))

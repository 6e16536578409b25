"""bench/chaos.py's last step: the JSON report always, the timeline picture only with matplotlib.

A soak needs root and network namespaces; its end (``write_outputs``) is run here on a small
result made by hand. Without matplotlib (the ``plot`` extra) it must still write the report and
say how to get the picture; with it (when installed), it draws the picture too.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from hacluster.testing.chaos import ChaosResult, Fault

BENCH = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_chaos", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result() -> ChaosResult:
    return ChaosResult(seed=7, nodes=3, mode="sync",
                       faults=[Fault("kill", ["n1"], start=1.0, healed=2.0, recovered=2.5)],
                       started=0.0, ended=10.0, verdicts={"lost_acked": 0}, availability=0.9,
                       converged=True, errors_over_time=[(1.0, 3), (2.0, 1)],
                       epochs_over_time=[(0.0, 1, "n1"), (2.5, 2, "n2")])


def test_without_matplotlib_the_report_is_written_and_the_fix_is_named(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    chaos = bench()
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # as if not installed
    report, png = tmp_path / "report.json", tmp_path / "timeline.png"
    said = chaos.write_outputs(result(), report, png)
    doc = json.loads(report.read_text())
    assert doc["summary"]["faults"] == 1 and doc["faults"][0]["kind"] == "kill"
    assert not png.exists()
    assert "not drawn" in said and str(report) in said
    err = capsys.readouterr().err
    assert "matplotlib is not installed" in err and "pip install matplotlib" in err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="matplotlib is not installed (pip install -e '.[plot]')")
def test_with_matplotlib_the_picture_is_drawn_too(tmp_path: Path) -> None:
    report, png = tmp_path / "report.json", tmp_path / "timeline.png"
    said = bench().write_outputs(result(), report, png)
    assert report.exists() and png.read_bytes().startswith(b"\x89PNG")
    assert str(png) in said


def test_every_red_checker_is_a_named_missed_goal() -> None:
    chaos = bench()
    green = result()
    green.converged = True
    summary = green.summary()
    assert [key for key, _, ok in chaos.goals(summary) if not ok] == []
    red = summary | {"lost_acked": 2, "converged": False, "epoch_reuse": 1}
    assert [key for key, _, ok in chaos.goals(red) if not ok] == [
        "converged", "lost_acked", "epoch_reuse"]
    # The goals are ChaosResult.ok's checkers: each one alone turns ok red.
    for key, _, _ in chaos.goals(summary):
        broken = result()
        if key == "converged":
            broken.converged = False
        else:
            broken.verdicts = {**broken.verdicts, key: 1}
        assert not broken.ok, key

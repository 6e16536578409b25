"""The watchdog: armed before a primary accepts writes, fed while it does, disarmed otherwise.

A stand-in device (a plain file) records what the node writes to it: a NUL per feed and the
magic ``V`` of a deliberate close. The unit tests drive ``Watchdog`` directly; the process tests
run real nodes with ``watchdog`` configured and read their stand-in files.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hacluster.config import ConfigError, WatchdogConfig, load_config
from hacluster.testing.harness import Cluster, NodeProc, wait_for
from hacluster.watchdog import Watchdog, WatchdogError


def test_arm_feed_and_magic_close_on_a_stand_in_device(tmp_path: Path) -> None:
    dev = tmp_path / "watchdog"
    dev.touch()
    wd = Watchdog(WatchdogConfig(mode="automatic", device=dev), "n1")
    assert wd.arm() and wd.armed
    wd.feed()
    wd.feed()
    assert dev.read_bytes() == b"\0\0\0"          # one feed on arming, then two
    wd.disarm("test")
    assert dev.read_bytes() == b"\0\0\0V" and not wd.armed
    wd.feed()                                       # disarmed: nothing more is written
    wd.disarm("again")
    assert dev.read_bytes() == b"\0\0\0V"
    assert wd.snapshot()["feeds"] == 3


def test_automatic_mode_carries_on_without_a_device(tmp_path: Path) -> None:
    wd = Watchdog(WatchdogConfig(mode="automatic", device=tmp_path / "missing"), "n1")
    assert wd.usable()
    assert wd.arm() is False and not wd.armed
    assert "cannot open" in str(wd.snapshot()["error"])


def test_required_mode_refuses_without_a_device(tmp_path: Path) -> None:
    wd = Watchdog(WatchdogConfig(mode="required", device=tmp_path / "missing"), "n1")
    assert not wd.usable()
    with pytest.raises(WatchdogError, match="watchdog required but cannot open"):
        wd.arm()
    (tmp_path / "missing").touch()
    assert wd.usable() and wd.arm()
    wd.disarm("test")


def test_off_never_touches_the_device(tmp_path: Path) -> None:
    dev = tmp_path / "watchdog"
    dev.touch()
    wd = Watchdog(WatchdogConfig(mode="off", device=dev), "n1")
    assert not wd.enabled and wd.usable()
    assert wd.arm() is False
    wd.feed()
    wd.disarm("test")
    assert dev.read_bytes() == b""


def write_config(path: Path, doc: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_config_validates_the_watchdog_section(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, consensus=True)
    doc = cluster.config_doc()
    doc["watchdog"] = {"mode": "required", "device": "/dev/wd1", "timeout_s": 3}
    cfg = load_config(write_config(tmp_path / "ok.yaml", doc))
    assert cfg.watchdog == WatchdogConfig("required", Path("/dev/wd1"), 3)
    doc["watchdog"] = {"mode": False}          # what YAML makes of a bare `mode: off`
    assert load_config(write_config(tmp_path / "off.yaml", doc)).watchdog.mode == "off"
    doc["watchdog"] = {"mode": True}
    with pytest.raises(ConfigError, match=r"watchdog.mode: must be off, automatic or required"):
        load_config(write_config(tmp_path / "bad.yaml", doc))
    doc["watchdog"] = {"mode": "sometimes"}
    with pytest.raises(ConfigError, match=r"bad.yaml: watchdog.mode: must be off, automatic"):
        load_config(write_config(tmp_path / "bad.yaml", doc))
    doc["watchdog"] = {"mode": "automatic", "timeout_s": 0}
    with pytest.raises(ConfigError, match=r"watchdog.timeout_s: must be at least 1"):
        load_config(write_config(tmp_path / "bad.yaml", doc))
    static = Cluster(tmp_path / "static").config_doc()
    static["watchdog"] = {"mode": "automatic"}
    with pytest.raises(ConfigError, match=r"watchdog.mode: automatic needs consensus"):
        load_config(write_config(tmp_path / "static.yaml", static))


def configure(cluster: Cluster, watchdogs: dict[str, dict[str, object]],
              tags: dict[str, list[str]] | None = None) -> None:
    for name, wd in watchdogs.items():
        doc = cluster.config_doc(tags=tags)
        doc["watchdog"] = wd
        write_config(cluster.root / f"{name}.yaml", doc)


def grows(path: Path) -> bool:
    before = path.stat().st_size if path.exists() else 0
    wait_for(lambda: path.exists() and path.stat().st_size > before + 3, 5,
             f"{path.name} to be fed")
    return True


@pytest.fixture
def standins(tmp_path: Path) -> Iterator[tuple[Cluster, dict[str, Path]]]:
    cluster = Cluster(tmp_path, consensus=True)
    devices = {name: tmp_path / f"wd-{name}" for name in cluster.nodes}
    for dev in devices.values():
        dev.touch()
    configure(cluster, {n: {"mode": "automatic", "device": str(d)} for n, d in devices.items()})
    cluster.start()
    yield cluster, devices
    cluster.stop()


def test_only_the_writable_primary_feeds_its_watchdog(
        standins: tuple[Cluster, dict[str, Path]]) -> None:
    cluster, devices = standins
    old = cluster.wait_primary()
    assert old.put("k", b"v").status == 200
    cluster.wait_converged()
    assert grows(devices[old.name])
    status = old.status()["watchdog"]
    assert status["armed"] and status["feeds"] > 0 and status["mode"] == "automatic"
    for replica in cluster.replicas:
        assert devices[replica.name].read_bytes() == b""
        assert replica.status()["watchdog"]["armed"] is False
    # Pause: the primary keeps serving but the watchdog is disarmed (magic close).
    assert old.post("/v1/admin/pause").status == 200
    wait_for(lambda: devices[old.name].read_bytes().endswith(b"V"), 5, "the magic close")
    assert old.put("during-pause", b"v").status == 200
    assert old.post("/v1/admin/resume").status == 200
    assert grows(devices[old.name])
    # Switchover: the old primary disarms, the new one arms before it accepts writes.
    target = cluster.replicas[0]
    assert old.post("/v1/admin/switchover", {"to": target.name}).status == 200
    assert cluster.wait_primary() is target
    wait_for(lambda: devices[old.name].read_bytes().endswith(b"V"), 5, "the old one disarmed")
    assert grows(devices[target.name])
    assert f"{old.name}: watchdog disarmed" in old.log()


def test_required_watchdog_that_cannot_be_opened_keeps_a_node_from_primary(
        tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, consensus=True)
    n1, n2, n3 = (cluster.nodes[n] for n in ("n1", "n2", "n3"))
    missing = str(tmp_path / "no-such-dir" / "watchdog")
    # n3 may never be primary; n1 would be the first choice on a tie, but its device is gone.
    tags = {"n3": ["nofailover"]}
    configure(cluster, {"n1": {"mode": "required", "device": missing},
                        "n2": {"mode": "automatic", "device": missing},
                        "n3": {"mode": "off"}}, tags=tags)
    cluster.start()
    try:
        primary = cluster.wait_primary()
        assert primary is n2, primary.name
        assert "watchdog not armed (automatic mode)" in n2.log()
        # n1 logs its refusal when it first looks at the device: maybe after n2 won.
        wait_for(lambda: "watchdog required but" in n1.log(), 10, "n1's watchdog refusal")
        wait_for(lambda: any(m["name"] == "n1" and not m["healthy"]
                             for m in n2.status()["consensus"]["members"]), 5,
                 "n1 to report itself unhealthy")
        assert n2.put("k", b"v").status == 200
        # With n2 gone nobody qualifies: n1 refuses for want of its watchdog, n3 is tagged.
        n2.signal(signal.SIGKILL)
        n2.proc.wait(10)  # type: ignore[union-attr]
        survivors: list[NodeProc] = [n1, n3]
        # It judges itself by what it sees now, and says why.
        wait_for(lambda: "not a candidate (watchdog required but" in str(
            n1.status()["consensus"]["decision"]), 10, "n1 to decline")
        assert cluster.writable_primary(survivors) is None
    finally:
        cluster.stop()

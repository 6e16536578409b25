"""Dynamic configuration without sockets: the schema, the state machine, the lease cap, the
editable form. (The cluster test is tests/test_dynamic_config_cluster.py.)"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from hacluster.config import ConfigError, load_config
from hacluster.config.dynamic import DYNAMIC_KEYS, effective, parse_value, values
from hacluster.consensus import settings
from hacluster.consensus.lease import LeaseTiming, holder_lease_end, observer_lease_end
from hacluster.consensus.raft import decode_command, encode_command
from hacluster.consensus.state import (
    MAX_HISTORY,
    ClusterState,
    CommandError,
    SetSettings,
    apply_command,
)
from hacluster.fencing import WriteGate
from hacluster.tools.config_cli import diff, editable

CONFIG = """
cluster: {name: t, raft_password: secret-password-123, token: tok-abcdefghijklmnop}
tls: off
nodes:
  - {name: n1, api: "127.0.0.1:7001", raft: "127.0.0.1:7101", data_dir: /tmp/x/n1}
  - {name: n2, api: "127.0.0.1:7002", raft: "127.0.0.1:7102", data_dir: /tmp/x/n2}
  - {name: n3, api: "127.0.0.1:7003", raft: "127.0.0.1:7103", data_dir: /tmp/x/n3}
"""


@pytest.fixture
def cfg(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    return load_config(path)


def change(state: ClusterState, expected: int, **kv: object) -> tuple[ClusterState, bool]:
    pairs = tuple((k.replace("__", "."), v) for k, v in kv.items())
    return apply_command(state, SetSettings(expected, pairs, "test", 1.0))


# -- the schema ------------------------------------------------------------------------------

def test_overrides_lie_over_the_file_and_validate_as_the_file_does(cfg) -> None:  # type: ignore[no-untyped-def]
    new = effective(cfg, {"replication.mode": "async", "replication.sync_replicas": 2,
                          "consensus.lease_s": 1.2})
    assert (new.replication.mode, new.replication.sync_replicas, new.consensus.lease_s) == \
        ("async", 2, 1.2)
    assert new.nodes == cfg.nodes and new.replication.heartbeat_interval == \
        cfg.replication.heartbeat_interval
    assert values(new)["replication.mode"] == "async"
    assert effective(cfg, {}) is cfg


@pytest.mark.parametrize(("overrides", "named", "why"), [
    ({"replication.mode": "fast"}, "replication.mode", "must be sync or async"),
    ({"consensus.renew_interval_s": 0.7}, "consensus.renew_interval_s", "shorter than lease_s"),
    ({"consensus.lease_s": 0.1}, "consensus.renew_interval_s", "shorter than lease_s"),
    ({"replication.sync_replicas": 3}, "replication.sync_replicas", "needs at least 4 nodes"),
    ({"replication.sync_replicas": 1.5}, "replication.sync_replicas", "expected an integer"),
    ({"consensus.lease_s": -1}, "consensus.lease_s", "at least 0.1"),
    ({"replication.mode": True}, "replication.mode", "got a boolean"),
])
def test_a_bad_value_is_refused_naming_the_key(cfg, overrides, named, why) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as exc:
        effective(cfg, overrides)
    assert named in str(exc.value) and why in str(exc.value), exc.value
    assert "dynamic configuration" in str(exc.value)


def test_only_dynamic_keys_are_accepted_and_a_near_miss_is_named() -> None:
    with pytest.raises(ConfigError, match="not a dynamic setting"):
        parse_value("nodes", "x")
    with pytest.raises(ConfigError, match=r"did you mean 'replication\.mode'"):
        parse_value("replication.mdoe", "async")
    assert parse_value("replication.sync_replicas", "2") == 2
    assert parse_value("consensus.lease_s", "0.9") == 0.9
    assert parse_value("replication.mode", "async") == "async"
    with pytest.raises(ConfigError, match="short string, a number"):
        parse_value("replication.mode", "[1, 2]")


def test_a_lease_a_raft_election_outlasts_is_unsafe(cfg) -> None:  # type: ignore[no-untyped-def]
    short = effective(cfg, {"consensus.lease_s": 0.3})
    why = settings.unsafe_change(cfg, short)
    assert why is not None and "consensus.lease_s" in why and "election" in why
    assert settings.unsafe_change(cfg, effective(cfg, {"consensus.lease_s": 1.5})) is None
    # Not touching the lease timings: not judged (a file that breaks it blocks nothing else).
    assert settings.unsafe_change(short, effective(short, {"replication.mode": "async"})) is None


# -- the state machine -------------------------------------------------------------------------

def test_a_change_is_compare_and_set_on_the_version() -> None:
    s0 = ClusterState()
    s1, ok = change(s0, 0, replication__mode="async")
    assert ok and s1.settings == (("replication.mode", "async"),) and s1.settings_version == 1
    same, ok = change(s1, 0, replication__sync_replicas=2)      # read at version 0: stale
    assert not ok and same is s1
    s2, ok = change(s1, 1, replication__sync_replicas=2, replication__mode=None)
    assert ok and s2.settings == (("replication.sync_replicas", 2),)
    assert [c.version for c in s2.settings_history] == [1, 2]
    assert s2.settings_history[-1].changes == (("replication.sync_replicas", 2),
                                               ("replication.mode", None))
    # Other fields are kept, and other commands keep the settings.
    assert s2.lock == s0.lock and s2.members == s0.members


def test_the_history_of_changes_is_bounded() -> None:
    state = ClusterState()
    for i in range(MAX_HISTORY + 5):
        state, ok = change(state, i, replication__sync_timeout_s=1.0 + i)
        assert ok
    assert len(state.settings_history) == MAX_HISTORY
    assert state.settings_history[-1].version == MAX_HISTORY + 5


@pytest.mark.parametrize("pairs", [
    (("nodes", 1),),
    (("replication.mode", [1]),),
    (("replication.mode", "x" * 65),),
    (("replication.mode", float("nan")),),
    (("replication.mode", "a"), ("replication.mode", "b")),
    (),
    (("replication.mode",),),
])
def test_the_log_holds_only_known_keys_and_scalars(pairs: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(CommandError):
        SetSettings(0, pairs, "test", 1.0)


def test_the_command_survives_the_raft_log_encoding() -> None:
    cmd = SetSettings(3, (("replication.mode", "async"), ("consensus.lease_s", None)), "n1", 5.0)
    raw = encode_command(cmd)
    assert decode_command(pickle.loads(pickle.dumps(raw))) == cmd
    with pytest.raises(CommandError):
        decode_command(("settings", 0, (("replication.mdoe", "async"),), "n1", 5.0))


def test_a_state_dumped_before_dynamic_settings_loads_with_none() -> None:
    state = ClusterState()
    old = list(state.__getstate__())[:8]          # the fields an older version dumped
    revived = ClusterState.__new__(ClusterState)
    revived.__setstate__(old)  # type: ignore[attr-defined]
    assert revived.settings == () and revived.settings_version == 0
    assert revived.settings_history == ()


# -- the lease: lengthened only at the next epoch ----------------------------------------------

def test_the_holder_never_counts_more_than_the_lock_records() -> None:
    long = LeaseTiming(lease_s=2.0, renew_interval_s=0.1)
    assert holder_lease_end(10.0, long, 0.6) == pytest.approx(10.0 + 0.6 * 0.95)
    assert holder_lease_end(10.0, long, None) == pytest.approx(10.0 + 2.0 * 0.95)
    short = LeaseTiming(lease_s=0.4, renew_interval_s=0.1)
    assert holder_lease_end(10.0, short, 0.6) == pytest.approx(10.0 + 0.4 * 0.95)
    # Whatever either side has applied, the holder's end comes before any observer's.
    for holder_t in (long, short):
        for observer_t in (long, short):
            assert holder_lease_end(10.0, holder_t, 0.6) < observer_lease_end(10.0, observer_t,
                                                                               0.6)


def test_the_gate_keeps_the_locks_lease_when_the_timing_grows() -> None:
    now = [100.0]
    gate = WriteGate(LeaseTiming(lease_s=0.6, renew_interval_s=0.1), clock=lambda: now[0])
    gate.open(1, 100.0, lock_lease_s=0.6)
    gate.set_timing(LeaseTiming(lease_s=5.0, renew_interval_s=0.1))
    now[0] = 100.0 + 0.6 * 0.95 + 0.001
    assert gate.refusal() is not None and "lease expired" in str(gate.refusal())
    gate.extend(now[0])
    assert gate.lease_left() == pytest.approx(0.6 * 0.95)
    # The next epoch's lock records the longer lease.
    gate.open(2, now[0], lock_lease_s=5.0)
    assert gate.lease_left() == pytest.approx(5.0 * 0.95)
    # A shorter lease takes effect at once.
    gate.set_timing(LeaseTiming(lease_s=0.4, renew_interval_s=0.1))
    assert gate.lease_left() == pytest.approx(0.4 * 0.95)


# -- the editable form ---------------------------------------------------------------------

def test_an_edit_becomes_overrides_and_a_deleted_line_goes_back_to_the_file(cfg) -> None:  # type: ignore[no-untyped-def]
    now = effective(cfg, {"replication.sync_replicas": 2})
    doc = {"version": 4, "values": values(now), "file": values(cfg),
           "overrides": {"replication.sync_replicas": 2}}
    text = editable(doc)
    assert diff(doc, text) == {}
    assert "replication.sync_replicas: 2    # dynamic; the file says 1" in text
    edited = text.replace("replication.mode: sync", "replication.mode: async")
    edited = "\n".join(line for line in edited.splitlines()
                       if not line.startswith("replication.sync_replicas"))
    assert diff(doc, edited) == {"replication.mode": "async", "replication.sync_replicas": None}
    with pytest.raises(ConfigError, match=r"did you mean 'consensus\.lease_s'"):
        diff(doc, text + "consensus.lease: 3\n")
    assert set(values(cfg)) <= set(DYNAMIC_KEYS)

"""The ``application`` section (managed mode): defaults, commands, and a located message for
every mistake."""

from __future__ import annotations

import copy
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from hacluster.config import ConfigError, load_config

BASE: dict[str, Any] = {
    "cluster": {"name": "demo", "token": "file-token-0123456789",
                "raft_password": "pw-0123456789abcdef"},
    "tls": "off",
    "nodes": [
        {"name": n, "api": f"127.0.0.1:870{i}", "raft": f"127.0.0.1:880{i}",
         "data_dir": f"data/{n}"} for i, n in enumerate(("n1", "n2", "n3"), 1)
    ],
    "application": {"db_path": "svc/{node}/db", "primary_command": "myservice --port 8008"},
}


def load_with(tmp_path: Path, **changes: Any) -> Any:
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            data["application"].pop(key, None)
        else:
            data["application"][key] = value
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path, env={})


def error_of(tmp_path: Path, **changes: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_with(tmp_path, **changes)
    return str(info.value)


def test_defaults_and_substitutions(tmp_path: Path) -> None:
    cfg = load_with(tmp_path)
    app = cfg.application
    assert cfg.managed
    assert app.primary_command == ("myservice", "--port", "8008")     # split like a shell
    assert app.replica_command is None
    assert app.stop_signal == "SIGTERM" and app.stop_timeout_s == 10.0
    assert app.max_restarts == 3 and app.restart_window_s == 60.0
    assert app.db_path_for("n2") == tmp_path / "svc" / "n2" / "db"     # relative to the file
    assert app.command_for("primary", "n2") == ("myservice", "--port", "8008")
    assert app.command_for("replica", "n2") is None
    cfg = load_with(tmp_path, primary_command=["svc", "--name={node}"], stop_signal="int",
                    replica_command="svc --read-only", env={"A": 1})
    assert cfg.application.command_for("primary", "n3") == ("svc", "--name=n3")
    assert cfg.application.command_for("replica", "n3") == ("svc", "--read-only")
    assert cfg.application.stop_signal == "SIGINT"
    assert signal.Signals[cfg.application.stop_signal] == signal.SIGINT
    assert cfg.application.env == (("A", "1"),)


def test_without_the_section_the_node_manages_its_own_database(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    del data["application"]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path, env={})
    assert cfg.application is None and not cfg.managed


@pytest.mark.parametrize("changes, message", [
    ({"primary_command": None}, "application.primary_command: required key is missing"),
    ({"primary_command": []}, "application.primary_command: must name a program to run"),
    ({"primary_command": "a 'b"}, "application.primary_command: cannot be split"),
    ({"primary_command": ["a", 3]}, "application.primary_command[1]: expected a string"),
    ({"db_path": None}, "application.db_path: required key is missing"),
    ({"stop_signal": "SIGKILL"}, "application.stop_signal: 'SIGKILL' is not a signal"),
    ({"stop_signal": "SIGNOPE"}, "application.stop_signal: 'SIGNOPE' is not a signal"),
    ({"stop_timeout_s": 0}, "application.stop_timeout_s: must be at least 0.1"),
    ({"health_url": "ftp://x/health"}, "application.health_url: must be an http(s) URL"),
    ({"health_url": "http://x/h", "health_command": "true"},
     "application.health_command: give health_url or health_command, not both"),
    ({"env": {"HACLUSTER_ROLE": "x"}}, "application.env.HACLUSTER_ROLE: HACLUSTER_* names"),
    ({"env": {"A": [1]}}, "application.env.A: expected a string"),
    ({"max_restarts": -1}, "application.max_restarts: must be at least 0"),
    ({"poll_interval_ms": 0}, "application.poll_interval_ms: must be at least 1"),
    ({"colour": "blue"}, "application.colour: unknown key"),
])
def test_mistakes_name_the_key(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    assert message in error_of(tmp_path, **changes)


def test_managed_mode_needs_consensus(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    for node in data["nodes"]:
        del node["raft"]
    data["cluster"]["primary"] = "n1"
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="application: managed mode needs consensus"):
        load_config(path, env={})


def test_nodes_on_one_host_need_their_own_database(tmp_path: Path) -> None:
    message = error_of(tmp_path, db_path="/var/lib/svc/db")
    assert "application.db_path" in message and "{node}" in message


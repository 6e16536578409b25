"""The retention and cap keys: defaults, values read, and located errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from hacluster.config import ConfigError
from tests.test_config import doc, load, write


def test_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, doc()))
    assert (cfg.storage.divergent_keep_days, cfg.storage.divergent_max_mb) == (30, 1024)
    assert cfg.replication.max_checkpoints == 4


def test_values_are_read(tmp_path: Path) -> None:
    data = doc()
    data["storage"] = {"divergent_keep_days": 7, "divergent_max_mb": 50}
    data["replication"] = {"max_checkpoints": 2}
    cfg = load(write(tmp_path, data))
    assert (cfg.storage.divergent_keep_days, cfg.storage.divergent_max_mb) == (7, 50)
    assert cfg.replication.max_checkpoints == 2


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("storage", "divergent_keep_days", 0, "must be at least 1 and at most 36500, got 0"),
    ("storage", "divergent_keep_days", "a week", "expected an integer, got str"),
    ("storage", "divergent_max_mb", 0, "must be at least 1"),
    ("storage", "divergent_max_mb", 1.5, "expected an integer, got float"),
    ("replication", "max_checkpoints", 0, "must be at least 1 and at most 1024, got 0"),
    ("replication", "max_checkpoints", True, "expected an integer, got a boolean"),
])
def test_bad_values_name_the_file_and_the_key(tmp_path: Path, section: str, key: str,
                                               value: object, message: str) -> None:
    data = doc()
    data[section] = {key: value}
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: {section}.{key}: ")
    assert message in str(err.value)

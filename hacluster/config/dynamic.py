"""Dynamic configuration: the settings that live in Raft and change without a restart.

Owns the list of keys that must agree across nodes and may change while the cluster runs
(``DYNAMIC_KEYS``: replication mode, synchronous set size and timeout, failover lag bound,
lease and renewal timings, member staleness, the backup schedule), parsing a value an operator
typed (``parse_value``), and ``effective``: the file's config with the Raft overrides laid
over it, validated by the very section parsers that validate the file, then by the rules
across sections, so a change is refused with the key and the reason exactly as a bad file
would be. Per-node settings (addresses, data dir, certificates, secrets) are never here.

It must never read the file or the network, and never accept a key it does not list: the
state machine stores what this module allowed, and every node applies it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from hacluster.config.model import ClusterConfig, ConfigError
from hacluster.config.reader import _Reader, brief
from hacluster.config.sections import _consensus, _replication

SOURCE = Path("dynamic configuration")

# key -> what it means, for `hacluster config show` and the docs. Every key here is also a
# field of its section's dataclass; its bounds are the section parser's.
DYNAMIC_KEYS: dict[str, str] = {
    "replication.mode": "sync or async: whether a write waits for the synchronous set",
    "replication.sync_replicas": "how many replicas confirm each write in sync mode",
    "replication.sync_timeout_s": "how long a write waits for the synchronous set",
    "consensus.maximum_lag_on_failover": "how far behind (seqs) an async candidate may be",
    "consensus.lease_s": "how long one renewal lets the primary write (next epoch if longer)",
    "consensus.renew_interval_s": "how often the primary renews its lease",
    "consensus.member_stale_s": "a member whose report is older is not a candidate",
    "backup.archive_interval_s": "the longest the live WAL tail waits before it is archived",
    "backup.base_backup_interval_s": "how often a base backup is taken (0: on demand only)",
    "backup.keep_last": "base backups kept, newest first",
    "backup.keep_days": "base backups younger than this are kept",
}

MAX_TEXT = 64            # a dynamic value is a scalar: a mode name, a number


def _sections() -> dict[str, Callable[[_Reader], Any]]:
    parsers: dict[str, Callable[[_Reader], Any]] = {
        "replication": _replication, "consensus": _consensus}
    # The backup section is optional in the package (older trees lack it): look it up.
    from hacluster.config import sections
    backup = getattr(sections, "_backup", None)
    if backup is not None:
        parsers["backup"] = backup
    return parsers


def check_key(key: Any) -> str:
    """``key`` if it is dynamic; ConfigError naming it (and the near miss) otherwise."""
    if isinstance(key, str) and key in DYNAMIC_KEYS:
        return key
    from hacluster.config.reader import _near
    near = _near(key, list(DYNAMIC_KEYS)) if isinstance(key, str) else None
    hint = f" (did you mean {near!r}?)" if near else ""
    raise ConfigError(f"{SOURCE}: {brief(key)}: not a dynamic setting{hint}; dynamic "
                      f"settings are {', '.join(DYNAMIC_KEYS)} (the rest stays in the file "
                      "and needs a restart)")


def check_value(key: str, value: Any) -> Any:
    """A value the state machine may hold: a short string, a finite number, a bool, or None
    (None removes the override, so the file's value applies again)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, str) and len(value) <= MAX_TEXT:
        return value
    raise ConfigError(f"{SOURCE}: {key}: a dynamic value is a short string, a number or a "
                      f"boolean, got {brief(value)}")


def parse_value(key: str, text: str) -> Any:
    """An operator's typed value (``hacluster config set KEY VALUE``), read as YAML reads it
    in the file: ``2`` an integer, ``0.5`` a number, ``async`` a string."""
    check_key(key)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{SOURCE}: {key}: cannot read {brief(text)}: {exc}") from None
    return check_value(key, value)


def _plain(value: Any) -> Any:
    """A section field as its YAML form (what the section parser reads back)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | frozenset):
        return list(value)
    return value


def effective(base: ClusterConfig, overrides: Mapping[str, Any]) -> ClusterConfig:
    """``base`` (the file's config) with ``overrides`` laid over it, validated as a file is.

    Raises ConfigError naming the key and the reason, like ``load_config``.
    """
    by_section: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = check_key(key).partition(".")
        if value is not None:
            by_section.setdefault(section, {})[name] = check_value(key, value)
    parsers = _sections()
    changed: dict[str, Any] = {}
    for section, values in by_section.items():
        current = getattr(base, section, None)
        if current is None or section not in parsers:
            raise ConfigError(f"{SOURCE}: {section}: this cluster's config has no {section} "
                              "section, so its settings cannot be set dynamically")
        data = {f.name: _plain(getattr(current, f.name)) for f in dataclasses.fields(current)}
        data.update(values)
        parsed = parsers[section](_Reader(SOURCE, data, section))
        changed[section] = parsed
    cfg = dataclasses.replace(base, **changed) if changed else base
    _check_across(cfg)
    return cfg


def _check_across(cfg: ClusterConfig) -> None:
    """The rules across sections that ``load_config`` applies, for the dynamic keys."""
    r = cfg.replication
    if r.mode == "sync" and not cfg.uses_consensus:
        raise ConfigError(f"{SOURCE}: replication.mode: sync needs consensus")
    if r.mode == "sync" and r.sync_replicas > len(cfg.nodes) - 1:
        raise ConfigError(f"{SOURCE}: replication.sync_replicas: {r.sync_replicas} needs at "
                          f"least {r.sync_replicas + 1} nodes (this cluster has "
                          f"{len(cfg.nodes)})")


def values(cfg: ClusterConfig) -> dict[str, Any]:
    """Every dynamic key's value in ``cfg`` (keys of a section the config lacks are left out)."""
    out: dict[str, Any] = {}
    for key in DYNAMIC_KEYS:
        section, _, name = key.partition(".")
        current = getattr(cfg, section, None)
        if current is not None and hasattr(current, name):
            out[key] = _plain(getattr(current, name))
    return out


def merge(current: Iterable[tuple[str, Any]],
          changes: Iterable[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
    """The overrides after ``changes`` (None removes a key), sorted: the state's form."""
    merged = dict(current)
    for key, value in changes:
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return tuple(sorted(merged.items()))

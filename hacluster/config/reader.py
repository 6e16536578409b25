"""Reading one key of a config mapping, so that every error names the file and the key.

Owns ``_Reader`` (typed ``get``, bounded ``integer`` and ``number``, nested ``child`` sections,
``finish`` that refuses unknown keys), ``brief`` (a bounded repr for error messages, also used
for request bodies), ``parse_address`` and the checks for names and for strings that become
paths or commands. It must never know which keys a section has or what their defaults are (that
is ``sections`` and ``model``), and never read a file or the environment.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hacluster.config.model import Address, ConfigError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# Integers without a natural bound still have to fit the int64/uint64 fields of RocksDB
# options and of the replication frames.
_INT_MAX = (1 << 63) - 1
# A "\ud800"-style escape gives a str that cannot be encoded: no path, header or command.
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Reader:
    """Walks a mapping, remembering the dotted key path so every error can name it."""

    def __init__(self, source: Path, data: Mapping[str, Any], path: str) -> None:
        self.source = source
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.seen.add(name)
        if name not in self.data or self.data[name] is None:
            if default is ...:
                return self._missing(name)
            return default
        value = self.data[name]
        # bool is an int in Python; a YAML `true` must not pass as a port or a size.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(self.key(name), f"expected {_kind_name(kind)}, got a boolean")
        if float in (kind if isinstance(kind, tuple) else (kind,)) and isinstance(value, int):
            try:
                value = float(value)
            except OverflowError:
                raise self.fail(self.key(name), f"number out of range, got {brief(value)}") \
                    from None
        if not isinstance(value, kind):
            raise self.fail(
                self.key(name), f"expected {_kind_name(kind)}, got {type(value).__name__}"
            )
        return value

    def _missing(self, name: str) -> Any:
        # A key of this mapping not read yet that is close to the missing one is most likely
        # its misspelling (``datadir`` for ``data_dir``): name it.
        others = [k for k in self.data if isinstance(k, str) and k not in self.seen]
        near = _near(name, others)
        hint = f" (found {near!r}: did you mean {name!r}?)" if near else ""
        raise self.fail(self.key(name), f"required key is missing{hint}")

    def number(
        self, name: str, default: float, *, minimum: float, maximum: float | None = None
    ) -> float:
        value = float(self.get(name, float, default))
        self._bounds(name, value, minimum, maximum)
        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = int(self.get(name, int, default))
        self._bounds(name, value, minimum, maximum)
        if value > _INT_MAX:
            raise self.fail(self.key(name), f"must be at most {_INT_MAX}, got {brief(value)}")
        return value

    def _bounds(self, name: str, value: float, minimum: float, maximum: float | None) -> None:
        if value != value:  # NaN compares false with everything, so it would pass the bounds
            raise self.fail(self.key(name), "must be a number, got NaN")
        if isinstance(value, float) and math.isinf(value):
            raise self.fail(self.key(name), f"must be a finite number, got {value}")
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise self.fail(self.key(name),
                            f"must be at least {minimum}{upper}, got {brief(value)}")

    def child(self, name: str, required: bool = False) -> _Reader:
        value = self.get(name, dict, ... if required else {})
        return _Reader(self.source, value, self.key(name))

    def finish(self) -> None:
        unknown = sorted(k if isinstance(k, str) and len(k) <= 100 else brief(k)
                         for k in set(self.data) - self.seen)
        if unknown:
            first = unknown[0]
            near = _near(first, sorted(self.seen)) if first in self.data else None
            hint = f" (did you mean {near!r}?)" if near else ""
            raise self.fail(self.key(str(first)), f"unknown key{hint}")


def _near(name: str, candidates: list[str]) -> str | None:
    """The candidate closest to ``name`` if it is close enough to be a misspelling of it."""
    # Bounded: a hostile file may hold thousands of keys, each up to any length.
    fits = [c for c in candidates[:1000] if len(c) <= 100 and c != name]
    if len(name) > 100 or not fits:
        return None
    matches = difflib.get_close_matches(name, fits, n=1, cutoff=0.8)
    return matches[0] if matches else None


def brief(value: object, limit: int = 60) -> str:
    """A short repr of a value from a config file or a request body, for an error message.

    Bounded in length and in cost whatever the value: an integer too long for ``str`` to
    convert, a megabyte string, or a deep, self-referencing or alias-expanded container (YAML
    anchors, CBOR shared references) that a plain ``repr`` would walk in full.
    """
    return _brief(value, limit, 2)


def _brief(value: object, limit: int, depth: int) -> str:
    if value is None or isinstance(value, bool | float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 128 else f"<{value.bit_length()}-bit integer>"
    if isinstance(value, str | bytes | bytearray):
        shown = repr(value[:limit])
        return f"{shown}..." if len(value) > limit else shown
    if isinstance(value, list | tuple | dict | set | frozenset):
        if depth <= 0:
            return f"<{type(value).__name__} of {len(value)}>"
        parts: list[str] = []
        items = value.items() if isinstance(value, dict) else value
        for i, item in enumerate(items):
            if i == 4:
                parts.append("...")
                break
            if isinstance(value, dict):
                parts.append(f"{_brief(item[0], 20, depth - 1)}: {_brief(item[1], 20, depth - 1)}")
            else:
                parts.append(_brief(item, 20, depth - 1))
        inner = ", ".join(parts)
        if isinstance(value, list):
            return f"[{inner}]"
        if isinstance(value, tuple):
            return f"({inner})"
        return f"{{{inner}}}"
    return f"<{type(value).__name__}>"

def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
             float: "a number", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def parse_address(text: str, source: Path, key: str) -> Address:
    """``host:port`` with a literal IP address (IPv6 in brackets) or a host name."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]+)|([^:\[\]\s]+):([0-9]+)", text.strip())
    if not match:
        raise ConfigError(f"{source}: {key}: expected host:port, got {brief(text)}")
    host = match.group(1) or match.group(3)
    digits = match.group(2) or match.group(4)
    # Thousands of digits would make int() refuse (and be no port anyway).
    port = int(digits) if len(digits) <= 6 else 0
    if not 1 <= port <= 65535:
        shown = digits if len(digits) <= 20 else f"{digits[:20]}..."
        raise ConfigError(f"{source}: {key}: port must be 1-65535, got {shown}")
    if match.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(f"{source}: {key}: bad IPv6 address {brief(host)}") from None
    elif re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(f"{source}: {key}: bad IPv4 address {brief(host)}") from None
    elif not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host):
        raise ConfigError(f"{source}: {key}: bad host name {brief(host)}")
    return Address(host, port)


def _text(reader: _Reader, name: str, default: Any = ...) -> Any:
    """A string that becomes a path or a command: the OS cannot take a NUL in either."""
    value = reader.get(name, str, default)
    if isinstance(value, str) and "\0" in value:
        raise reader.fail(reader.key(name), "must not contain a NUL character")
    return value


def _path(reader: _Reader, name: str, value: str | None = None) -> Path:
    """A path key (or ``value`` read for it): ``~`` expanded, a relative path resolved against
    the config file's directory, so a config works from any working directory."""
    path = Path(os.path.expanduser(_text(reader, name) if value is None else value))
    return path if path.is_absolute() else (reader.source.parent / path).resolve()


def _name(reader: _Reader, key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise reader.fail(
            key, "must be a name of letters, digits, '_', '.', '-' (1-63 chars), "
            f"got {brief(value)}"
        )
    return value

"""Where a secret comes from: the environment, a file named in the config, a systemd
credential, or (for the demo) the config file itself — in that order.

Owns ``read_secret`` and its errors: a secret file that is missing, unreadable, empty, too
large or holds control characters fails with the key and the file named (never the content).
Trailing newlines are stripped (``echo secret > file`` is the usual way to write one). It must
never log a secret or put one in an error message.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hacluster.config.model import CREDENTIALS_ENV
from hacluster.config.reader import _SURROGATE, _path, _Reader, _text

MAX_SECRET_BYTES = 4096


def _check(value: str, where: str, r: _Reader) -> str:
    if _SURROGATE.search(value):
        raise r.fail(where, "is not valid UTF-8")
    if any(c < " " or c == "\x7f" for c in value):
        raise r.fail(where, "must not contain control characters (it is sent in an HTTP header)")
    return value


def _from_file(path: Path, where: str, r: _Reader) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise r.fail(where, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_SECRET_BYTES:
        raise r.fail(where, f"{path} is larger than {MAX_SECRET_BYTES} bytes: not a secret file")
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise r.fail(where, f"{path} is not UTF-8 text") from None
    if not text:
        raise r.fail(where, f"{path} is empty")
    return _check(text, f"{where} ({path})", r)


def read_secret(r: _Reader, name: str, *, env: Mapping[str, str], env_name: str,
                credential: str, min_length: int = 16) -> str | None:
    """The secret ``name`` of section ``r``: ``$env_name``, else the file at ``<name>_file``,
    else ``$CREDENTIALS_DIRECTORY/<credential>``, else the inline ``<name>``; None if none."""
    inline = r.get(name, str, "")
    file_key = f"{name}_file"
    file_value = _text(r, file_key) if r.get(file_key, str, None) is not None else None
    value: str | None
    if env.get(env_name):
        where, value = f"${env_name}", _check(env[env_name], f"${env_name}", r)
    elif file_value is not None:
        path = _path(r, file_key, file_value)
        where, value = r.key(file_key), _from_file(path, r.key(file_key), r)
    elif env.get(CREDENTIALS_ENV) and (Path(env[CREDENTIALS_ENV]) / credential).exists():
        path = Path(env[CREDENTIALS_ENV]) / credential
        where, value = f"${CREDENTIALS_ENV}/{credential}", _from_file(path, r.key(name), r)
    elif inline:
        where, value = r.key(name), _check(inline, r.key(name), r)
    else:
        return None
    if len(value) < min_length:
        raise r.fail(where, f"must be at least {min_length} characters")
    return value

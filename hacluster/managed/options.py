"""Refusing a service database hacluster cannot replicate, or one another process has open.

Owns: reading the service's newest ``OPTIONS-NNNNNN`` file and refusing the options that make
its WAL unshippable or unreplayable (``check_service_options``), checking that a path is a
RocksDB database (``check_db_path``), and finding who holds RocksDB's ``LOCK`` file
(``lock_holder``, ``refuse_if_in_use``).
Must never: open the service's database through RocksDB, write, create or truncate anything in
its directory, or probe the ``LOCK`` of a database this same process has open (POSIX locks are
per process: closing any descriptor of the file drops the process's lock on it).

Every ``ManagedDbError`` names the file and the option (or the path) it is about, and what to
set instead where there is a fix.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from hacluster.store import latest_options_file

__all__ = [
    "ManagedDbError",
    "ServiceOptions",
    "check_db_path",
    "check_service_options",
    "lock_holder",
    "parse_options_file",
    "refuse_if_in_use",
]

BYTEWISE = "leveldb.BytewiseComparator"


class ManagedDbError(Exception):
    """The service's database cannot be managed as it is (bad options, missing, in use)."""


@dataclass
class ServiceOptions:
    """The parts of an OPTIONS file the checks need: ``[DBOptions]`` and each CF's options."""

    path: Path
    db: dict[str, str] = field(default_factory=dict)
    column_families: dict[str, dict[str, str]] = field(default_factory=dict)


_SECTION = re.compile(r'^\[\s*([A-Za-z][A-Za-z0-9_/]*)\s*(?:"((?:[^"\\]|\\.)*)")?\s*\]$')


def _strip_comment(line: str) -> str:
    """RocksDB's rule: everything from the first ``#`` not escaped as ``\\#`` is a comment."""
    out = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line) and line[i + 1] == "#":
            out.append("#")
            i += 2
            continue
        if ch == "#":
            break
        out.append(ch)
        i += 1
    return "".join(out).strip()


def parse_options_file(path: Path) -> ServiceOptions:
    """Parse a RocksDB OPTIONS file (INI-like: ``[Section "name"]`` then ``key=value`` lines).

    Sections other than ``[DBOptions]`` and ``[CFOptions "name"]`` (``[Version]``,
    ``[TableOptions/BlockBasedTable "name"]``) are read past. Raises ManagedDbError for a line
    that is neither a section, a ``key=value`` pair, a comment nor blank.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ManagedDbError(f"{path}: cannot read the OPTIONS file: {exc}") from exc
    result = ServiceOptions(path)
    current: dict[str, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw)
        if not line:
            continue
        m = _SECTION.match(line)
        if m:
            kind, name = m.group(1), m.group(2)
            if kind == "DBOptions":
                current = result.db
            elif kind == "CFOptions":
                cf = (name or "").replace('\\"', '"').replace("\\\\", "\\")
                current = result.column_families.setdefault(cf, {})
            else:
                current = None      # [Version], [TableOptions/...]: nothing checked there
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ManagedDbError(f"{path}: line {number} is not 'key=value' nor a section: "
                                 f"{raw.strip()!r}")
        if current is not None:
            current[key.strip()] = value.strip()
    if not result.db and not result.column_families:
        raise ManagedDbError(f"{path}: no [DBOptions] or [CFOptions] section: not a RocksDB "
                             "OPTIONS file")
    return result


def _object_id(value: str) -> str:
    """A customizable object's name: ``X`` as written, or the ``id`` of ``{id=X;...}``."""
    value = value.strip()
    if value.startswith("{") and value.endswith("}"):
        for part in value[1:-1].split(";"):
            key, _, v = part.partition("=")
            if key.strip() == "id":
                return v.strip()
        return value
    return value


def _int(opts: ServiceOptions, key: str) -> int:
    value = opts.db.get(key, "0")
    try:
        return int(value)
    except ValueError:
        raise ManagedDbError(f"{opts.path}: {key}={value!r} is not a number") from None


def check_service_options(db_path: Path, options_file: Path | None = None) -> None:
    """Refuse a service database whose options make its WAL unshippable or unreplayable.

    Reads ``options_file``, by default the newest ``OPTIONS-NNNNNN`` file (RocksDB rewrites it
    at every open, and at every SetOptions / column-family change, so it describes the
    service's last open).
    """
    path = options_file or latest_options_file(db_path)
    if path is None:
        raise ManagedDbError(f"{db_path}: no OPTIONS file: not a RocksDB database, or one "
                             "never opened")
    opts = parse_options_file(path)
    where = f"{path}: [DBOptions]"
    recycle = _int(opts, "recycle_log_file_num")
    if recycle != 0:
        raise ManagedDbError(
            f"{where} recycle_log_file_num={recycle}: WAL recycling must be off (a recycled log "
            "is overwritten in place and cannot be shipped); set recycle_log_file_num=0")
    compression = opts.db.get("wal_compression", "kNoCompression")
    if compression not in ("", "kNoCompression"):
        raise ManagedDbError(
            f"{where} wal_compression={compression}: WAL compression must be off (hacluster "
            "cannot decode compressed WAL records); set wal_compression=kNoCompression")
    if _int(opts, "WAL_ttl_seconds") == 0 and _int(opts, "WAL_size_limit_MB") == 0:
        raise ManagedDbError(
            f"{where} WAL_ttl_seconds=0 and WAL_size_limit_MB=0: obsolete WAL files are "
            "deleted instead of archived, so a lagging replica cannot be served; set "
            "WAL_ttl_seconds (e.g. 3600) and/or WAL_size_limit_MB (e.g. 1024) so they are kept "
            "in archive/")
    if opts.db.get("manual_wal_flush", "false").lower() == "true":
        raise ManagedDbError(
            f"{where} manual_wal_flush=true: WAL records may sit in the service's memory until "
            "it calls FlushWAL, so they cannot be shipped when written; set "
            "manual_wal_flush=false")
    if opts.db.get("allow_2pc", "false").lower() == "true":
        raise ManagedDbError(
            f"{where} allow_2pc=true: two-phase-commit markers (prepare/commit) in the WAL "
            "cannot be replayed by hacluster; set allow_2pc=false (no TransactionDB "
            "write-prepared policies)")
    for cf, cf_opts in opts.column_families.items():
        comparator = _object_id(cf_opts.get("comparator", BYTEWISE))
        if comparator != BYTEWISE:
            raise ManagedDbError(
                f'{path}: [CFOptions "{cf}"] comparator={comparator}: column family {cf!r} '
                f"must use {BYTEWISE} (replicas apply WAL records through rocksdict, which "
                "cannot reproduce another key order)")
        merge = _object_id(cf_opts.get("merge_operator", "nullptr"))
        if merge not in ("", "nullptr"):
            raise ManagedDbError(
                f'{path}: [CFOptions "{cf}"] merge_operator={merge}: column family {cf!r} '
                "must not have a merge operator (replicas apply WAL records through rocksdict, "
                "which cannot replay merges); set merge_operator=nullptr")


def check_db_path(db_path: Path, *, must_exist: bool) -> None:
    """Refuse a path that is not (or cannot become) the service's RocksDB database.

    ``must_exist=False``: a missing path, or an empty directory, is accepted (the service will
    create its database there).
    """
    if not db_path.exists():
        if must_exist:
            raise ManagedDbError(f"{db_path}: the service's database does not exist")
        return
    if not db_path.is_dir():
        raise ManagedDbError(f"{db_path}: not a directory (a RocksDB database is a directory)")
    if (db_path / "CURRENT").is_file():
        return
    if not must_exist and not any(db_path.iterdir()):
        return
    raise ManagedDbError(f"{db_path}: no CURRENT file: not a RocksDB database")


# -- the LOCK file ---------------------------------------------------------------------------

_FLOCK = struct.Struct("hhqqi")   # struct flock on 64-bit Linux (l_pid at offset 24)


def _proc_locks_holders(st: os.stat_result) -> tuple[list[int], list[int]]:
    """PIDs of POSIX locks in /proc/locks on this inode: those matching device and inode, and
    those matching the inode only (overlay file systems can report another device)."""
    exact: list[int] = []
    inode_only: list[int] = []
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return exact, inode_only
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    for line in text.splitlines():
        fields = line.split()
        # "1: POSIX  ADVISORY  WRITE 1234 fe:00:2672564 0 EOF"; waiters are "1: -> POSIX ...".
        if len(fields) < 6 or fields[1] == "->" or fields[1] != "POSIX":
            continue
        try:
            pid = int(fields[4])
            dev_major, dev_minor, ino = fields[5].split(":")
            if int(ino) != st.st_ino:
                continue
            if int(dev_major, 16) == major and int(dev_minor, 16) == minor:
                exact.append(pid)
            else:
                inode_only.append(pid)
        except ValueError:
            continue
    return exact, inode_only


def _getlk_pid(fd: int) -> int | None:
    """The pid F_GETLK reports for a conflicting write lock (None: none, or not available)."""
    try:
        out = fcntl.fcntl(fd, fcntl.F_GETLK, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
    except OSError:
        return None
    l_type, _, _, _, l_pid = _FLOCK.unpack(out[:_FLOCK.size])
    return l_pid if l_type != fcntl.F_UNLCK and l_pid > 0 else None


def _holder_pid(st: os.stat_result, fd: int | None) -> int | None:
    exact, inode_only = _proc_locks_holders(st)
    others = [p for p in exact if p != os.getpid()]
    if others:
        return others[0]
    if len(set(inode_only)) == 1:
        return inode_only[0]
    if fd is not None:
        return _getlk_pid(fd)
    return None


def lock_holder(db_path: Path) -> int | None:
    """The pid of another process holding RocksDB's ``<db>/LOCK``; -1 if it is held but the
    pid cannot be found; None if nobody holds it (or there is no LOCK file).

    RocksDB takes a POSIX (fcntl) write lock on ``LOCK``. This opens the file read-write (never
    creating or truncating it), tries a non-blocking write lock, and releases it at once if it
    got it. POSIX locks belong to the process and closing any descriptor of the file drops all
    of them: never call this on a database this same process has open (it would release that
    process's own lock). Call it before starting the service: while the probe holds the lock
    (microseconds) the service could not open its database. If /proc/locks shows this process
    holding the lock, ManagedDbError is raised without probing.
    """
    lock = db_path / "LOCK"
    try:
        st = os.stat(lock)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ManagedDbError(f"{lock}: cannot stat the LOCK file: {exc}") from exc
    exact, _ = _proc_locks_holders(st)
    if os.getpid() in exact:
        raise ManagedDbError(f"{lock}: this process holds the lock (it has the database open); "
                             "lock_holder must only be called before opening it")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None
    except PermissionError:
        # Cannot probe: report what /proc/locks says, if anything.
        return _holder_pid(st, None)
    except OSError as exc:
        raise ManagedDbError(f"{lock}: cannot open the LOCK file: {exc}") from exc
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise ManagedDbError(f"{lock}: cannot probe the lock: {exc}") from exc
            pid = _holder_pid(os.fstat(fd), fd)
            return -1 if pid is None else pid
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _cmdline(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace").strip()
    return text or None


def refuse_if_in_use(db_path: Path) -> None:
    """ManagedDbError naming the path and the process if another process holds its LOCK."""
    pid = lock_holder(db_path)
    if pid is None:
        return
    if pid < 0:
        raise ManagedDbError(f"{db_path}: the database is open in another process (its LOCK "
                             "file is held; the pid could not be found)")
    cmd = _cmdline(pid)
    what = f"process {pid}" + (f" ({cmd})" if cmd else "")
    raise ManagedDbError(f"{db_path}: the database is open in {what}: its LOCK file is held; "
                         "stop that process first")

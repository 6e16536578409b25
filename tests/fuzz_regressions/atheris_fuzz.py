"""Optional coverage-guided fuzzing of the parsers with atheris (libFuzzer for Python).

Not part of the test suite and not a dependency: ``pip install atheris``, then e.g.

    python tests/fuzz_regressions/atheris_fuzz.py batch -max_total_time=600
    python tests/fuzz_regressions/atheris_fuzz.py config -runs=200000 /tmp/corpus

Each target checks the same contract as the hypothesis tests in ``tests/test_fuzz_*.py``:
only the module's documented error type escapes, and (``batch``) the C accelerator and the
Python decoder agree. A crash input found here belongs in ``tests/fuzz_regressions/<target>/``
and in a deterministic test.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import atheris

with atheris.instrument_imports():
    from hacluster.config import ConfigError, LimitsConfig, load_config
    from hacluster.replication.frames import FrameDecoder, FrameError
    from hacluster.wal import batch as wb
    from hacluster.wal.errors import WalError
    from hacluster.wal.records import LogRecordReader
    from hacluster.writes import CBOR_TYPE, BadRequest, parse_batch

SCRATCH = Path(tempfile.mkdtemp(prefix="atheris-"))


class _Handles:
    def __getitem__(self, cf: int) -> int:
        return cf


def _calls(fn: Any, payload: bytes) -> tuple[Any, list[tuple[Any, ...]]]:
    calls: list[tuple[Any, ...]] = []
    try:
        result = fn(payload, lambda k, v, h: calls.append(("p", k, v, h)),
                    lambda k, h: calls.append(("d", k, h)),
                    lambda b, e, h: calls.append(("r", b, e, h)), _Handles())
    except WalError as exc:
        return type(exc), calls
    return result, calls


def batch(data: bytes) -> None:
    py, py_calls = _calls(wb._replay_batch_py, data)
    if wb._c_replay is None:
        return
    c, c_calls = _calls(wb._c_replay.replay, data)
    if isinstance(py, type):
        assert c is None, (data.hex(), py, c)
        assert wb._c_replay.validate(data) is None
    else:
        assert c == py == wb._c_replay.validate(data), data.hex()
        assert c_calls == py_calls


def records(data: bytes) -> None:
    path = SCRATCH / "000001.log"
    path.write_bytes(data)
    with LogRecordReader(path) as rr:
        try:
            for _ in range(len(data) + 2):
                if not rr.read_records(max_records=3):
                    break
            else:
                raise AssertionError("no progress")
        except WalError as exc:
            assert exc.path == str(path) and 0 <= exc.offset < len(data)


def frames(data: bytes) -> None:
    dec = FrameDecoder(1 << 16)
    try:
        dec.feed(data[: len(data) // 2])
        dec.feed(data[len(data) // 2:])
    except FrameError:
        pass


def writes(data: bytes) -> None:
    for content_type in (CBOR_TYPE, "application/json"):
        try:
            parse_batch(data, content_type, LimitsConfig(max_batch_ops=50), ("default", "users"))
        except BadRequest:
            pass


def config(data: bytes) -> None:
    path = SCRATCH / "cluster.yaml"
    path.write_bytes(data)
    try:
        load_config(path, env={})
    except ConfigError:
        pass


TARGETS = {"batch": batch, "records": records, "frames": frames, "writes": writes,
           "config": config}

if __name__ == "__main__":
    # Pass corpus directories after the libFuzzer flags; the first one is written to, so use
    # a scratch copy of tests/fuzz_regressions/<target>/ rather than the directory itself.
    name = sys.argv.pop(1) if len(sys.argv) > 1 and sys.argv[1] in TARGETS else "batch"
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()

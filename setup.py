"""Build hook for the optional C accelerator; all metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # optional: where it cannot be compiled, hacluster uses the pure-Python decoder.
        Extension("hacluster.wal._replay", ["hacluster/wal/_replay.c"], optional=True,
                  extra_compile_args=["-O2", "-Wall", "-Wextra"]),
        # optional: without it, group commit runs RocksDB's FlushWAL in a Python thread.
        Extension("hacluster._walsync", ["hacluster/_walsync.c"], optional=True,
                  extra_compile_args=["-O2", "-Wall", "-Wextra"]),
    ],
)

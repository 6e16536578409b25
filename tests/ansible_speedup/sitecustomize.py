"""Test-only: compiled Ansible modules, cached across module runs (tests/test_ansible.py).

Every task runs an Ansible module in a new Python process that imports Ansible's
``module_utils`` from a zip (AnsiballZ). Python 3.11's ``zipimport`` keeps no bytecode and
compiles each imported source on every run — twice, as ``get_filename`` compiles too: a third
of the CPU of each task here (py-spy), and the end-to-end test runs about 2,500 task
instances on two cores. ``test_ansible.ansible_env`` puts this directory on ``PYTHONPATH``
and names a cache directory in ``HACLUSTER_TEST_ZIPCODE_CACHE``; the code object compiled
from a source is then stored there under a hash of the source and its path inside the zip,
and loaded on later runs. The code executed is the same; only the compiling is saved.
Without the variable this does nothing.
"""

import hashlib
import marshal
import os
import zipimport

_CACHE = os.environ.get("HACLUSTER_TEST_ZIPCODE_CACHE")

if _CACHE and hasattr(zipimport, "_compile_source"):
    _compile = zipimport._compile_source

    def _compile_source(pathname: str, source: bytes):  # type: ignore[no-untyped-def]
        inner = pathname.split(".zip" + os.sep, 1)[-1]   # the zip itself is a new temp file
        path = os.path.join(_CACHE, hashlib.sha256(inner.encode() + b"\0" + source).hexdigest())
        try:
            with open(path, "rb") as f:
                return marshal.load(f)
        except (OSError, EOFError, ValueError, TypeError):
            pass
        code = _compile(pathname, source)
        try:
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "wb") as f:
                marshal.dump(code, f)
            os.replace(tmp, path)
        except OSError:
            pass                     # a cache that cannot be written only costs the compile
        return code

    zipimport._compile_source = _compile_source

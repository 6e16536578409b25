"""Starting a managed service so that it cannot outlive the hacluster process that started it.

Run by path (``python -I .../launch.py <parent pid> -- <command...>``: importing the hacluster
package would slow every start), it asks Linux to
SIGKILL this process when its parent dies (``PR_SET_PDEATHSIG``, kept across ``execve``), checks
the parent is still the one that started it (it may have died before the request was made),
then replaces itself with the service's command. Without it a SIGKILLed or crashed hacluster
would leave its service running as a writer that no lease governs any more. It must never run
anything but the given command, and never outlive a parent that is already gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: launch.py <parent pid> -- <command...>",
              file=sys.stderr)
        return 2
    parent = int(argv[0])
    command = argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        print(f"hacluster launch: prctl(PR_SET_PDEATHSIG) failed: "
              f"{os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    if os.getppid() != parent:
        return 1      # the parent died before the request took effect: never start orphaned
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"hacluster launch: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0          # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

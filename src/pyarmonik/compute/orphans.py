"""Children that die with their parent, so a killed agent leaves no worker behind.

Not with a `preexec_fn`: Python code between fork and exec in a process with threads (gRPC
has several) runs the interpreter's at-fork handlers in a copy of a process whose other
threads may hold locks; CI saw such children segfault. The child instead execs a tiny
launcher that asks the kernel for SIGKILL on the parent's death, then execs the command.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# argv: parent pid, niceness increment, command... . PR_SET_PDEATHSIG is 1; a parent
# already gone by then would never send the signal, hence the check after asking.
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)\n"
    "os.nice(int(sys.argv[2]))\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


def dying_with_parent(command: Sequence[str], nice: int = 0) -> list[str]:
    """`command`, run so that on Linux it gets SIGKILL when this process dies; `nice` is
    added to its niceness (a lower scheduling priority than ours when positive)."""
    if not sys.platform.startswith("linux"):
        return ["nice", "-n", str(nice), *command] if nice else list(command)
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), str(nice), *command]

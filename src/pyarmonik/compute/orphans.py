"""Children that die with their parent, so a killed agent leaves no worker behind."""

from __future__ import annotations

import ctypes
import signal
import sys

PR_SET_PDEATHSIG = 1

# Looked up now, in the parent: between fork and exec the child of a process with threads
# may only do async-signal-safe things, and loading a library (dlopen, malloc) is not one of
# them (a thread holding the allocator's lock at fork time makes the child crash or hang).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """A `preexec_fn`: on Linux, the child gets SIGKILL when its parent dies."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)

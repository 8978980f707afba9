"""Giving memory back to the system after large requests.

A request of tens of MiB (inline data, a huge id) leaves the process tens of MiB larger for
good: glibc keeps freed heap memory for reuse, and the request's objects caught in reference
cycles (exceptions and their frames) wait for Python's rare full collection. A control plane
serves many clients for months, so it watches its resident size and, when it grew by more than
`GROWTH` since it last looked, collects cycles and returns free heap pages.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os

log = logging.getLogger(__name__)

GROWTH = 32 * 1024 * 1024
CHECK_EVERY = 2.0
# Allocations above this size get their own mapping, returned to the system when freed
# (glibc raises its default 128 KiB threshold on its own as large blocks are freed).
MMAP_THRESHOLD = 1024 * 1024
_M_MMAP_THRESHOLD = -3


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only (musl has neither function)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def resident_bytes() -> int:
    """Resident set size of this process (Linux), 0 when unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def release() -> None:
    """Collect reference cycles and give free heap memory back to the system."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


async def keep_memory_low(check_every: float = CHECK_EVERY) -> None:
    """Run for the life of the process: `release` whenever the resident size grew by more
    than GROWTH since the last look (a read of /proc per `check_every` seconds otherwise)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    baseline = resident_bytes()
    while True:
        await asyncio.sleep(check_every)
        size = resident_bytes()
        if size > baseline + GROWTH:
            release()
            baseline = resident_bytes()
            log.debug("released memory: %d MiB -> %d MiB", size >> 20, baseline >> 20)
        else:
            baseline = min(baseline, size) if size else baseline

"""Process tuning of the daemon: malloc, and the open files.

None of it is needed for correctness; each piece is here for a cost a user sees, as
measured (`benchmarks/RESULTS.md`, section 14, one run on a 2-core machine, 1,000
projects of 50 products): two malloc arenas and a trim each minute hold RSS at 169 MiB
instead of 221 (Python 3.11; 165 instead of 220 on 3.13). Tuning the garbage collector
(thresholds, a frozen start-up heap, a timed full collection) and a 1 ms GIL switch
interval were measured beside it and dropped: scrape latency did not move (p50 / p99
within noise), and the CPU they saved was about 1 % of a core at ten keys at full
budget. Only the daemon calls it (never `--once`, `--check-config` or a test's server).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
import sys

from apscheduler.schedulers.background import BackgroundScheduler


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one (as Go programs do), so that
    held connections don't starve the process of descriptors; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
    return soft


#: Seconds between two `malloc_trim`s, which give back what a large plain-text scrape or
#: a refresh left free.
TRIM_SECONDS = 60


def tune(scheduler: BackgroundScheduler) -> None:
    """Hold glibc to two malloc arenas and trim the heap at once and each minute.

    glibc gives each thread that allocates under contention an arena of its own (up to
    eight per core), and freed memory stays spread over them: two arenas hold the same
    heap in about a quarter less RSS (see the module docstring). The image sets
    MALLOC_ARENA_MAX itself (glibc reads it before any thread starts): mallopt is for
    runs outside it, and never overrides what the operator set.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt") and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(M_ARENA_MAX, 2)
    # Once now: a warm start has just read every stored answer (bodies decompressed,
    # parsed, rendered) and left that much free; without it, RSS stays a minute above
    # where it settles (benchmarks/RESULTS.md, section 16).
    _trim()
    scheduler.add_job(_trim, "interval", seconds=TRIM_SECONDS, id="trim", coalesce=True)


#: glibc's mallopt parameter for the most arenas (malloc.h).
M_ARENA_MAX = -8


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, where there is one (not musl, not macOS): for mallopt and malloc_trim;
    looked up once, not at every minute's trim."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def _trim() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)

"""Process tuning of the daemon: the garbage collector, the GIL switch interval, malloc, open files.

None of it is needed for correctness; each piece is here for a measured cost (see
`benchmarks/RESULTS.md`). Only `cli.py` calls it, and only for the daemon (never for
`--once`, `--check-config` or a test's server).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
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


#: Seconds between full garbage collections, which free what reference cycles leave.
FULL_COLLECTION_SECONDS = 60


def tune(scheduler: BackgroundScheduler) -> None:
    """Set CPython up for a daemon whose heap is mostly the store, replaced poll by poll.

    The store is a million small objects at a large account and holds no reference
    cycles. By default CPython scans the whole heap each time a quarter of it is new,
    which at a busy account is every few seconds, stopping every thread (scrapes too)
    for a tenth of a second; so young objects are collected less often, what start-up
    built is frozen out of every scan, and a full collection runs on a timer instead.
    Poll threads are CPU-bound: at the default 5 ms switch interval the HTTP thread
    waits up to 5 ms each of the dozen times a scrape needs the interpreter.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1_000_000)
    sys.setswitchinterval(0.001)
    # glibc gives each thread that allocates under contention an arena of its own (up
    # to eight per core), and freed memory stays spread over them: two arenas hold the
    # same heap in about 15 % less RSS; trimming after each full collection gives back
    # what a large plain-text scrape or a refresh left free.
    # The image sets MALLOC_ARENA_MAX itself (glibc reads it before any thread starts):
    # mallopt is for runs outside it, and never overrides what the operator set.
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt") and "MALLOC_ARENA_MAX" not in os.environ:
        libc.mallopt(M_ARENA_MAX, 2)
    scheduler.add_job(
        _collect_and_trim, "interval", seconds=FULL_COLLECTION_SECONDS, id="gc", coalesce=True
    )


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


def _collect_and_trim() -> None:
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)

"""`python -m benchmarks.tuned PIECES ARGS...`: the daemon with some of its runtime tuning only.

`exporter.runtime.tune` is all or nothing (`--runtime.tuning on|off`). To tell what each
of its pieces is worth, the tuning section runs the daemon through this module, which
puts `apply(PIECES)` in place of `runtime.tune` and then runs the exporter's own
`cli.main` with the remaining arguments. PIECES is a comma-separated subset of:

  gc      start-up's objects frozen, young collections less often (the thresholds), a
          full collection every `FULL_COLLECTION_SECONDS` instead of by count
  switch  the GIL switch interval
  malloc  glibc held to two arenas (`mallopt`), `malloc_trim` every minute

All three together are `runtime.tune`, piece for piece: `tests/test_benchmarks.py`
holds them to it, so that a change there is seen here.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable, Collection
from typing import Any

PIECES = ("gc", "switch", "malloc")
#: What `runtime.tune` sets (tests/test_benchmarks.py checks them against it).
GC_THRESHOLDS = (50_000, 50, 1_000_000)
SWITCH_INTERVAL = 0.001


def apply(pieces: Collection[str], scheduler: Any, libc: Any = None) -> None:
    """`runtime.tune`, only the `pieces` named; `libc` stands in for glibc in tests."""
    from exporter import runtime

    unknown = set(pieces) - set(PIECES)
    if unknown:
        raise SystemExit(f"unknown pieces: {', '.join(sorted(unknown))} (of {PIECES})")
    libc = libc if libc is not None else runtime._libc()
    jobs: list[Callable[[], object]] = []
    if "gc" in pieces:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        jobs.append(gc.collect)
    if "switch" in pieces:
        sys.setswitchinterval(SWITCH_INTERVAL)
    if "malloc" in pieces and libc is not None:
        if hasattr(libc, "mallopt") and "MALLOC_ARENA_MAX" not in os.environ:
            libc.mallopt(runtime.M_ARENA_MAX, 2)
        jobs.append(lambda: libc.malloc_trim(0))
    if jobs:

        def housekeeping() -> None:
            for job in jobs:
                job()

        scheduler.add_job(
            housekeeping,
            "interval",
            seconds=runtime.FULL_COLLECTION_SECONDS,
            id="gc",
            coalesce=True,
        )


def main(argv: list[str]) -> int:
    from exporter import cli, runtime

    pieces = {p for p in argv[0].split(",") if p and p != "none"}
    runtime.tune = lambda scheduler: apply(pieces, scheduler)
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

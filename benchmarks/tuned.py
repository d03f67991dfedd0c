"""`python -m benchmarks.tuned PIECES ARGS...`: the daemon with some of its runtime tuning only.

`exporter.runtime.tune` is all or nothing (`--runtime.tuning on|off`). To tell what each
of its pieces is worth, the tuning section runs the daemon through this module, which
puts `apply(PIECES)` in place of `runtime.tune` and then runs the exporter's own
`cli.main` with the remaining arguments. PIECES is a comma-separated subset of:

  malloc  glibc held to two arenas (`mallopt`), `malloc_trim` at start and every minute

which together are `runtime.tune`, piece for piece: `tests/test_benchmarks.py` holds them
to it, so that a change there is seen here. (The garbage collector's tuning and a 1 ms
switch interval were pieces too, until section 14 measured them worth nothing a user
sees and they were dropped from `runtime.tune`.) PIECES "shipped" leaves `runtime.tune`
as it is (on or off by the exporter's own flag). With BENCH_GC_STATS set, every garbage
collection is timed and the figures kept in that file.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

PIECES = ("malloc",)
NAMES = {"malloc": "malloc"}  # as tables say


def apply(pieces: Collection[str], scheduler: Any, libc: Any = None) -> None:
    """`runtime.tune`, only the `pieces` named; `libc` stands in for glibc in tests."""
    from exporter import runtime

    unknown = set(pieces) - set(PIECES)
    if unknown:
        raise SystemExit(f"unknown pieces: {', '.join(sorted(unknown))} (of {PIECES})")
    libc = libc if libc is not None else runtime._libc()
    if "malloc" in pieces and libc is not None:
        if hasattr(libc, "mallopt") and "MALLOC_ARENA_MAX" not in os.environ:
            libc.mallopt(runtime.M_ARENA_MAX, 2)
        libc.malloc_trim(0)  # once at start, then each minute
        scheduler.add_job(
            lambda: libc.malloc_trim(0),
            "interval",
            seconds=runtime.TRIM_SECONDS,
            id="trim",
            coalesce=True,
        )


class Collections:
    """Every garbage collection of this process, timed (`gc.callbacks`): per generation
    how many and how long in all, and the longest, with when it started."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        #: (monotonic start, generation, seconds) of each collection of 1 ms or more
        self.long: list[tuple[float, int, float]] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.monotonic()
            return
        elapsed = time.monotonic() - self._started
        generation = info["generation"]
        self.count[generation] += 1
        self.seconds[generation] += elapsed
        if elapsed >= 0.001 and len(self.long) < 100_000:
            self.long.append((self._started, generation, elapsed))

    def dump(self, path: Path) -> None:
        """Written every half second, replaced whole (the harness reads it any time)."""
        while True:
            state = {"count": self.count, "seconds": self.seconds, "long": self.long}
            part = path.with_suffix(".part")
            part.write_text(json.dumps(state))
            part.replace(path)
            time.sleep(0.5)


def main(argv: list[str]) -> int:
    """PIECES (or "shipped": runtime.tune itself, when the flag says on), then the
    exporter's arguments. BENCH_GC_STATS=PATH: every collection timed, kept in PATH."""
    from exporter import cli, runtime

    if argv[0] != "shipped":
        pieces = {p for p in argv[0].split(",") if p and p != "none"}
        runtime.tune = lambda scheduler: apply(pieces, scheduler)
    if os.environ.get("BENCH_GC_STATS"):
        collections = Collections()
        gc.callbacks.append(collections)
        path = Path(os.environ["BENCH_GC_STATS"])
        threading.Thread(target=collections.dump, args=(path,), daemon=True).start()
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

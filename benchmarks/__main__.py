"""`python -m benchmarks`: the exporter measured in the state it lives in.

The daemon runs as `python -m exporter`, polling a fast fake Latitude API whose every
answer changes the data (so polls land while scrapes arrive, as in production), and is
measured from outside: scrape latency side by side with a minimal server of the same
bytes (the floor) in the same run, refresh time with and without scrapers, CPU per
polled project, RSS settled and at its peak, freshness, start-up, the real refresh
period against the exported one, the request budget as the API counts it, teams, the
hostile answers, slow clients and trickles of the hardening work, and what the runtime
tuning is worth. Each section is a module of `benchmarks/sections/`.

`--compare PATH` runs every section that only needs the command line against the code
at PATH too (a worktree of an earlier commit: `git worktree add /tmp/old REV`), so one
run reports before and after. `--quick` shortens every phase; `--smoke` runs toy sizes
in seconds (it proves the script works and asserts nothing about speed). Prints each
table and writes the report to `--out` (benchmarks/out/RESULTS.md, which git ignores;
the tracked benchmarks/RESULTS.md changes only when named).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.harness import AFTER, ROOT, Bench, Code
from benchmarks.modes import MODES
from benchmarks.report import Report
from benchmarks.sections import SECTIONS


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="shorter phases")
    size.add_argument("--smoke", action="store_true", help="toy sizes, seconds: proves it runs")
    parser.add_argument(
        "--compare", type=Path, help="also measure the code at this path (an older worktree)"
    )
    parser.add_argument(
        "--only", action="append", choices=list(SECTIONS), help="run only this section (repeatable)"
    )
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        help="also run the tuning section's daemon under this interpreter (repeatable; it "
        "needs the exporter's dependencies, e.g. a venv's python)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "benchmarks" / "out" / "RESULTS.md",
        help="where the report goes (default: benchmarks/out/RESULTS.md)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    options = parse(argv)
    mode = MODES["smoke" if options.smoke else "quick" if options.quick else "full"]
    codes = [AFTER]
    if options.compare:  # an old build: it cannot bind port 0 and say which port it got
        codes.insert(0, Code("before", options.compare.resolve(), reports_port=False))
    chosen = [name for name in SECTIONS if not options.only or name in options.only]
    started = datetime.now(UTC)
    report = Report()
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch, ExitStack() as stack:
        bench = Bench(mode, Path(scratch), stack, (sys.executable, *options.python))
        for name in chosen:
            print(f"\n=== {name} ===", flush=True)
            began = time.monotonic()
            section = SECTIONS[name]
            with ExitStack() as section_stack:  # the section's workloads end with it
                bench.stack = section_stack
                figures = section.measure(bench, codes)
            report.add(section.report(figures, mode))
            print(f"({name}: {time.monotonic() - began:.0f} s)", flush=True)
    command = "python -m benchmarks" + ("" if mode.name == "full" else f" --{mode.name}")
    command += "".join(f" --only {name}" for name in options.only or ())
    command += "".join(f" --python {python}" for python in options.python)
    versions = ", ".join(f"{c.label} = `{c.commit}`" for c in codes)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(report.markdown(command, versions, started))
    print(f"\nwrote {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

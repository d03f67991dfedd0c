"""Section 10: each hostile answer read once by the client, in a child under a memory limit."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from benchmarks.harness import Bench, Code
from benchmarks.modes import Mode
from benchmarks.report import Findings, Table, sec

LIMIT_MIB = 700
TRICKLE = "trickle, 1 byte per 50 ms (timeout 1 s)"


@dataclass(frozen=True, slots=True)
class Probe:
    answer: str
    code: str
    outcome: str  # "read", "refused (reason)", "crashed: ...", "still reading after 60 s"
    peak: str  # MiB, as the child said
    seconds: str


def measure(bench: Bench, codes: Sequence[Code]) -> list[Probe]:
    from exporter.simulation import DemoAccount
    from testing.fakeapi import HOSTILE, FakeApi, Fault, probe_script

    probes = []
    with FakeApi(DemoAccount(token="bench-0")) as api:
        cases: list[tuple[str, Callable[[], Fault]]] = [
            (name, HOSTILE[name][0]) for name in bench.mode.hostile
        ]
        cases.append((TRICKLE, lambda: Fault("trickle", delay=0.05)))
        for name, fault in cases:
            for code in codes:
                api.inject(fault(), project="proj_demo_web")  # for this one request
                timeout = 1.0 if name == TRICKLE else 30.0
                script = probe_script(api.url, "bench-0", timeout=timeout)
                probes.append(Probe(name, code.label, *_probe(code, script)))
                api.clear_faults()
    return probes


def _probe(code: Code, script: str) -> tuple[str, str, str]:
    limit = LIMIT_MIB * 1024 * 1024

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    started = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=code.root,
            preexec_fn=limit_memory,
            env={**os.environ, "PYTHONPATH": str(code.root), "MALLOC_ARENA_MAX": "2"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "still reading after 60 s", "—", sec(time.monotonic() - started, 1)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        return f"crashed: {last[:60]}", "—", sec(time.monotonic() - started, 1)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    outcome = "read" if "READ" in lines else f"refused ({lines.get('REFUSED', '?')})"
    return outcome, lines.get("PEAK", "—"), lines.get("SECONDS", "—")


def report(probes: list[Probe], mode: Mode) -> Findings:
    codes = list(dict.fromkeys(p.code for p in probes))
    rows: dict[str, list[str]] = {}
    for p in probes:
        rows.setdefault(p.answer, [p.answer]).extend([p.outcome, p.peak, p.seconds])
    header = ["answer"]
    for code in codes:
        header += [f"{code}: outcome", f"{code}: peak MiB", f"{code}: s"]
    table = Table(
        "10. Hostile answers",
        f"One request with the client, in a child limited to {LIMIT_MIB} MiB of address space "
        "(a blow-up ends as MemoryError instead of taking the machine), the peak RSS "
        "(VmHWM) and how long it took; a child still reading after 60 s is killed.",
        header,
        list(rows.values()),
    )
    return Findings([table])

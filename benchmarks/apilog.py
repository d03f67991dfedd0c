"""What the fake API of `benchmarks.workloads api` served when: refreshes, periods, requests."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

from benchmarks.scraping import fetch


@dataclass
class ApiLog:
    requests: dict[str, list[float]]  # per key, the monotonic time of every request
    pages: dict[str, list[float]]  # per key, of every /projects page
    served: list[tuple[str, int, float]]  # (project, sequence number, time) of each answer

    @classmethod
    def of(cls, api: str) -> ApiLog:
        _, body, _ = fetch(api + "/__bench__/log", timeout=120)
        data = json.loads(body)
        return cls(data["requests"], data["pages"], [tuple(s) for s in data["served"]])

    def refreshes(
        self, team: int = 0, start: float = 0.0, end: float = float("inf")
    ) -> list[tuple[float, float]]:
        """(first, last) answer time of every complete refresh of `team` within
        [start, end]: a refresh ends where a project is asked for again."""
        prefix = f"proj_b{team:02d}_"
        cycles: list[tuple[float, float]] = []
        seen: set[str] = set()
        first = last = None
        for project, _, at in self.served:
            if not project.startswith(prefix):
                continue
            if project in seen and first is not None and last is not None:
                cycles.append((first, last))
                seen, first = set(), None
            if first is None:
                first = at
            seen.add(project)
            last = at
        return [c for c in cycles if c[0] >= start and c[1] <= end]

    def answers(self, start: float, end: float) -> int:
        return sum(1 for _, _, at in self.served if start <= at <= end)

    def periods(self, project: str) -> list[float]:
        """Seconds between successive answers for `project`: its real refresh period."""
        times = [at for p, _, at in self.served if p == project]
        return [b - a for a, b in itertools.pairwise(times)]


def spans(cycles: list[tuple[float, float]]) -> list[float]:
    return [end - start for start, end in cycles]

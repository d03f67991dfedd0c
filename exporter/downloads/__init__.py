"""The finance files over HTTP: showback (CSV, JSON) and FOCUS 1.2 (CSV), for the
current billing period or a closed one, every team's or one team's, streamed from the
kept answers (the state store), never held whole.

`Downloads.serve` reads a request's path and query (`?period=current|previous|
YYYY-MM-DD`, `?team=`) and answers a `File` (its rows made as they are sent) or a
`Refusal` (a status and a one-line reason). Which rows each file holds and how is in
`showback.py` and `focus.py`; how a kept answer becomes its lines, in `lines.py`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from itertools import chain
from urllib.parse import parse_qs

from exporter.downloads.focus import csv_file as focus_csv
from exporter.downloads.lines import ProjectLines, readable
from exporter.downloads.opencost import DEFAULT_FIELD, INSTANCE_IDS
from exporter.downloads.opencost import csv_file as opencost_csv
from exporter.downloads.showback import csv_file as showback_csv
from exporter.downloads.showback import json_file as showback_json
from exporter.state import Period, State, StateUnavailable

log = logging.getLogger(__name__)

#: Each download's path: (file kind, media type, extension, the rows as bytes).
FILES: dict[str, tuple[str, str, str, Callable[[Iterable[ProjectLines]], Iterator[bytes]]]] = {
    "/showback.csv": ("showback", "text/csv; charset=utf-8", "csv", showback_csv),
    "/showback.json": ("showback", "application/json", "json", showback_json),
    "/focus.csv": ("focus-1.2", "text/csv; charset=utf-8", "csv", focus_csv),
    "/opencost/pricing.csv": ("opencost-pricing", "text/csv; charset=utf-8", "csv", opencost_csv),
}
#: What OpenCost's `InstanceIDField` may name: a dotted field of a Kubernetes object.
_FIELD = re.compile(r"[A-Za-z0-9_.\-/]{1,128}")


@dataclass(frozen=True, slots=True)
class File:
    """A download, its rows made as its chunks are taken.

    Parameters:
        media_type: its Content-Type.
        filename: what `Content-Disposition` names it: kind, team and period.
        chunks: its bytes.
    """

    media_type: str
    filename: str
    chunks: Iterator[bytes]


@dataclass(frozen=True, slots=True)
class Refusal:
    """No file: the status (400, 404, 503) and a one-line reason."""

    status: int
    reason: str


class Downloads:
    """The finance files of the kept answers.

    Parameters:
        state: where the answers are kept (`State.answers`): without one, every
            download is a 503 that says so.
        on_skipped: told how many kept answers a download left out because they no
            longer read (the store counts them), once the download ends.
    """

    def __init__(self, state: State, on_skipped: Callable[[int], None] | None = None) -> None:
        self._state = state
        self._on_skipped = on_skipped

    def serve(self, path: str, query: str) -> File | Refusal | None:
        """The download at `path` (None: not one)."""
        kind = FILES.get(path)
        if kind is None:
            return None
        name, media_type, extension, render = kind
        asked = parse_qs(query, keep_blank_values=True)
        team = (asked.get("team") or [""])[-1]
        try:
            period = _period((asked.get("period") or [""])[-1])
            if name == "opencost-pricing":
                render = _pricing(asked, period)
        except ValueError as exc:
            return Refusal(400, str(exc))
        try:
            refusal = self._unknown(period)
            if refusal is not None:
                return refusal
            answers = self._state.answers(period)
        except StateUnavailable as exc:
            return Refusal(503, f"downloads read the kept answers: {exc}")
        skipped: list[str] = []
        projects = (
            p for p in readable(answers, skipped) if not team or team in (p.team, p.team_name)
        )
        first = next(projects, None)
        label = _label(period, first)
        rows = chain([first] if first is not None else [], projects)
        return File(
            media_type,
            f"latitudesh-{name}_{_safe(team or 'all-teams')}_{label}.{extension}",
            _logged(render(rows), skipped, path, self._on_skipped),
        )

    def _unknown(self, period: Period) -> Refusal | None:
        """A 404 for a closed period that is not kept."""
        if not period.closed:
            return None
        days = self._state.closed_days()
        if period.day is None:
            return None if days else Refusal(404, "no closed period is kept yet")
        if period.day in days:
            return None
        kept = ", ".join(d.isoformat() for d in days[:13]) or "none yet"
        return Refusal(404, f"no closed period starts on {period.day.isoformat()} (kept: {kept})")


def _pricing(
    asked: dict[str, list[str]], period: Period
) -> Callable[[Iterable[ProjectLines]], Iterator[bytes]]:
    """The OpenCost file's options (`?instance_id=`, `?instance_id_field=`): prices
    of what runs now, so of the current period only."""
    if period.closed:
        raise ValueError("period: the pricing file is of what runs now (the current period)")
    instance_id = (asked.get("instance_id") or ["hostname"])[-1]
    if instance_id not in INSTANCE_IDS:
        raise ValueError(f"instance_id: expected one of {', '.join(INSTANCE_IDS)}")
    field = (asked.get("instance_id_field") or [DEFAULT_FIELD])[-1]
    if not _FIELD.fullmatch(field):
        raise ValueError("instance_id_field: a field name such as metadata.name")

    def render(projects: Iterable[ProjectLines]) -> Iterator[bytes]:
        return opencost_csv(projects, instance_id=instance_id, instance_id_field=field)

    return render


def _period(value: str) -> Period:
    """`?period=`: current (or nothing), previous, or a closed period's start day."""
    if value in ("", "current"):
        return Period()
    if value == "previous":
        return Period(closed=True)
    try:
        return Period(closed=True, day=date.fromisoformat(value))
    except ValueError:
        raise ValueError(
            f"period: expected current, previous or a day as YYYY-MM-DD, not {value[:40]!r}"
        ) from None


def _label(period: Period, first: ProjectLines | None) -> str:
    """The period as a file name says it: the day it started."""
    if period.day is not None:
        return period.day.isoformat()
    if first is not None and first.period_start is not None:
        return datetime.fromtimestamp(first.period_start, UTC).date().isoformat()
    return "previous" if period.closed else "current"


def _safe(text: str) -> str:
    """`text` as a file name may hold it."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:64] or "team"


def _logged(
    chunks: Iterator[bytes],
    skipped: list[str],
    path: str,
    on_skipped: Callable[[int], None] | None,
) -> Iterator[bytes]:
    yield from chunks
    if skipped:
        if on_skipped is not None:
            on_skipped(len(skipped))
        log.warning(
            "kept answers that no longer read were left out of a download",
            extra={"path": path, "projects": len(skipped), "first": skipped[0]},
        )

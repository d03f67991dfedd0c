"""/metrics: each project's lines formatted once when its poll lands, joined per scrape.

At a large account the exposition is the whole cost of a scrape (a thousand projects of
fifty products is 70 MB of text), and polls land nearly all the time, so rendering
the world at each scrape after a poll would make every scrape as slow as the render.
Instead, when the store says a project changed, its lines are formatted for every
family at once and compressed right away; a scrape only joins those ready fragments
under the family headers. Text and OpenMetrics share the sample lines (only headers
differ), and only the compressed form is kept: Prometheus asks for gzip, and the rare
client that wants plain text gets it decompressed on the way out.

How fragments join: each (project, family) fragment is a complete gzip member whose
deflate data ends in a full flush and then an empty final block. Concatenated members
are one valid gzip stream (RFC 1952 §2.2, read by every Prometheus), and the deflate
data of all of them, without their final blocks, is one continuous deflate stream,
which is how plain text is produced with a single decompressor.

The bytes are held identical to what prometheus_client renders for the same store
(`tests/test_exposition.py` compares them both ways), label sorting and escaping
included.
"""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.utils import floatToGoString

from exporter.collector import PROJECT_FAMILIES, Family, Rows
from exporter.snapshot import ProjectStatus

OPENMETRICS = "application/openmetrics-text"
#: A gzip member header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
#: An empty final block with fixed codes: ends a member's deflate data.
_FINAL_BLOCK = b"\x03\x00"
_TRAILER = struct.Struct("<II")
#: zlib level 1: a tenth of the size for a fraction of the CPU of the default level.
LEVEL = 1

Fragment = bytes | None


def escape(value: str) -> str:
    """A label value as prometheus_client escapes it (backslash, newline, quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class _Compressor:
    """One deflate stream, flushed in full after each fragment so that no fragment
    refers back to another: every fragment is a gzip member of its own, and no
    compressor has to be set up per fragment (that cost more than compressing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)

    def member(self, text: bytes) -> bytes:
        with self._lock:
            body = self._deflate.compress(text) + self._deflate.flush(zlib.Z_FULL_FLUSH)
        trailer = _TRAILER.pack(zlib.crc32(text), len(text) & 0xFFFFFFFF)
        return b"".join((_GZIP_HEADER, body, _FINAL_BLOCK, trailer))


def _plain_length(member: bytes) -> int:
    return int.from_bytes(member[-4:], "little")


def _deflate_data(member: bytes) -> bytes:
    return member[len(_GZIP_HEADER): -len(_FINAL_BLOCK) - _TRAILER.size]


@dataclass(frozen=True, slots=True)
class _Header:
    text: bytes
    openmetrics: bytes


def _header(family: Family[Any, Any]) -> _Header:
    text_help = family.help.replace("\\", r"\\").replace("\n", r"\n")
    om_help = text_help.replace('"', r"\"")
    return _Header(
        text=f"# HELP {family.name} {text_help}\n# TYPE {family.name} {family.type}\n".encode(),
        openmetrics=(f"# HELP {family.family_name} {om_help}\n"
                     f"# TYPE {family.family_name} {family.type}\n").encode(),
    )


HEADERS: tuple[_Header, ...] = tuple(_header(f) for f in PROJECT_FAMILIES)
_SORTED_LABELS = tuple(tuple(sorted(f.labels)) for f in PROJECT_FAMILIES)


def render_project(status: ProjectStatus) -> tuple[str, ...]:
    """The sample lines of one project, one string per family of `PROJECT_FAMILIES`.

    Rows and their escaped labels are read once per kind of row (a product's labels
    serve five families), which is what keeps a poll's rendering cheap.
    """
    rows_of: dict[int, list[tuple[Any, dict[str, str]]]] = {}
    label_text: dict[tuple[int, tuple[str, ...]], list[str]] = {}
    out: list[str] = []
    for family, names in zip(PROJECT_FAMILIES, _SORTED_LABELS, strict=True):
        kind: Rows[ProjectStatus, Any] = family.rows
        rows = rows_of.get(id(kind))
        if rows is None:
            rows = [(row, {k: escape(v) for k, v in kind.labels(status, row).items()})
                    for row in kind.of(status)]
            rows_of[id(kind)] = rows
        texts = label_text.get((id(kind), names))
        if texts is None:
            texts = [",".join([f'{name}="{labels[name]}"' for name in names])
                     for _, labels in rows]
            label_text[(id(kind), names)] = texts
        value = family.value
        name = family.name
        lines = []
        for (row, _), text in zip(rows, texts, strict=True):
            number = value(row)
            if number is not None:
                lines.append(f"{name}{{{text}}} {floatToGoString(number)}\n")
        out.append("".join(lines))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Body:
    """One answer to a scrape: its type, whether gzipped, its length and its bytes."""

    content_type: str
    gzipped: bool
    length: int
    chunks: Iterable[bytes]


class Exposition:
    """The compact cache of every project's fragments, kept current by the store.

    `project_changed` runs in the poller's thread when a poll lands (that is where the
    formatting and compression cost is paid, once); `render` runs per scrape and only
    joins bytes. `tail` holds what is rendered per scrape by prometheus_client: each
    API key's own counters, the build info, the process metrics.
    """

    def __init__(self, tail: CollectorRegistry) -> None:
        self._tail = tail
        self._compressor = _Compressor()
        self._lock = threading.Lock()
        #: project id → (the status it was rendered from, its fragments per family)
        self._fragments: dict[str, tuple[ProjectStatus, tuple[Fragment, ...]]] = {}
        self._version = 0
        self._joined: dict[bool, tuple[int, bytes]] = {}
        self._headers = {
            om: tuple(self._compressor.member(h.openmetrics if om else h.text) for h in HEADERS)
            for om in (False, True)
        }

    # --- StoreListener ------------------------------------------------------------

    def project_changed(self, status: ProjectStatus) -> None:
        fragments = self._compress(render_project(status))
        with self._lock:
            if status.project_id in self._fragments:
                self._fragments[status.project_id] = (status, fragments)
                self._version += 1

    def projects_changed(self, projects: Sequence[ProjectStatus]) -> None:
        with self._lock:
            known = dict(self._fragments)
        fresh = {}
        for status in projects:
            seen = known.get(status.project_id)
            # Statuses are immutable and replaced on change: the same object, same lines.
            fresh[status.project_id] = seen if seen is not None and seen[0] is status else (
                status, self._compress(render_project(status)))
        with self._lock:
            self._fragments = fresh
            self._version += 1

    def _compress(self, texts: tuple[str, ...]) -> tuple[Fragment, ...]:
        return tuple(self._compressor.member(t.encode()) if t else None for t in texts)

    # --- scrapes ------------------------------------------------------------------

    def render(self, accept: str = "", accept_encoding: str = "") -> Body:
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith(OPENMETRICS)
        tail = encoder(self._tail)
        if gzip_accepted(accept_encoding):
            joined = self._joined_members(openmetrics)
            tail_member = self._compressor.member(tail)
            return Body(content_type, True, len(joined) + len(tail_member),
                        (joined, tail_member))
        with self._lock:
            columns = [fragments for _, fragments in self._fragments.values()]
        headers = HEADERS
        length = len(tail) + sum(
            len(h.openmetrics if openmetrics else h.text) for h in headers
        ) + sum(_plain_length(f) for column in columns for f in column if f is not None)
        return Body(content_type, False, length,
                    self._plain(columns, openmetrics, tail))

    def _joined_members(self, openmetrics: bool) -> bytes:
        """Every family's header and fragments as one gzip stream, cached until a
        project changes: scrapers between two polls share one join."""
        with self._lock:
            cached = self._joined.get(openmetrics)
            if cached is not None and cached[0] == self._version:
                return cached[1]
            version = self._version
            columns = [fragments for _, fragments in self._fragments.values()]
        parts: list[bytes] = []
        for index, header in enumerate(self._headers[openmetrics]):
            parts.append(header)
            parts.extend(f for column in columns if (f := column[index]) is not None)
        joined = b"".join(parts)
        with self._lock:
            if version == self._version:
                self._joined = {om: hit for om, hit in self._joined.items() if hit[0] == version}
                self._joined[openmetrics] = (version, joined)
        return joined

    @staticmethod
    def _plain(columns: list[tuple[Fragment, ...]], openmetrics: bool,
               tail: bytes) -> Iterator[bytes]:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        for index, header in enumerate(HEADERS):
            yield header.openmetrics if openmetrics else header.text
            for column in columns:
                fragment = column[index]
                if fragment is not None:
                    yield inflate.decompress(_deflate_data(fragment))
        yield tail

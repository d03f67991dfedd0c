"""/metrics: each project's lines formatted once when its poll lands, joined per scrape.

At a large account the exposition is the whole cost of a scrape (a thousand projects of
fifty products is 100 MB of text), and polls land nearly all the time, so rendering
the world at each scrape after a poll would make every scrape as slow as the render.
Instead, when the store says a project changed, its lines are formatted for every
family at once and compressed right away; a scrape only joins those ready fragments
under the family headers. Text and OpenMetrics share the sample lines (only headers
differ), and only the compressed form is kept: Prometheus asks for gzip, and the rare
client that wants plain text gets it decompressed on the way out.

How fragments join: every fragment is raw deflate data from one shared stream, ending
in a full flush, so no fragment refers back to another and any sequence of them is a
valid deflate stream. A scrape's body is ONE gzip member: a header, the fragments of
every family in order, the per-scrape tail compressed to the final block, and a trailer
whose CRC-32 is combined from the fragments' own (they are kept with each fragment, and
per family column while no fragment of the column changes). One member, because many
clients read only the first of several (httpx, curl, browsers) and would silently see
a truncated exposition. Plain text is the same deflate data through one decompressor.

The bytes are held identical to what prometheus_client renders for the same store
(`tests/test_exposition.py` compares them both ways), label sorting and escaping
included.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from exporter.collector import PROJECT_FAMILIES, Family, Rows
from exporter.snapshot import ProjectStatus

OPENMETRICS = "application/openmetrics-text"
#: A gzip member header: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_TRAILER = struct.Struct("<II")
#: zlib level 1: a tenth of the size for a fraction of the CPU of the default level.
LEVEL = 1
_ZEROS = bytes(1 << 16)


def _shift(crc: int, length: int) -> int:
    """`crc` continued over `length` zero bytes."""
    view = memoryview(_ZEROS)
    while length > 0:
        step = min(length, len(_ZEROS))
        crc = zlib.crc32(view[:step], crc)
        length -= step
    return crc


def crc32_combine_python(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of A+B from those of A and B (B `length2` bytes long).

    CRC-32 is affine: continuing A's register over B's bytes equals continuing it over
    as many zeros, XOR B's own CRC, XOR the CRC of those zeros from nothing. Costs a
    pass over `length2` zeros in C: the fallback where zlib's O(log n) one can't load.
    """
    return _shift(crc1, length2) ^ _shift(0, length2) ^ crc2


def _native_combine() -> Callable[[int, int, int], int] | None:
    """zlib's own crc32_combine, through PyDLL so that the GIL is not released and
    retaken on each of the thousands of calls a join makes."""
    for name in ("libz.so.1", "libz.dylib", "zlib1.dll"):
        try:
            function = ctypes.PyDLL(name).crc32_combine
        except (OSError, AttributeError):
            continue
        function.argtypes = (ctypes.c_ulong, ctypes.c_ulong, ctypes.c_long)
        function.restype = ctypes.c_ulong
        if function(0x12345678, 0x9ABCDEF0, 1000) == crc32_combine_python(
            0x12345678, 0x9ABCDEF0, 1000
        ):
            return cast(Callable[[int, int, int], int], function)
    return None


crc32_combine: Callable[[int, int, int], int] = _native_combine() or crc32_combine_python


def escape(value: str) -> str:
    """A label value as prometheus_client escapes it (backslash, newline, quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


@dataclass(frozen=True, slots=True)
class Piece:
    """One fragment: raw deflate data ending in a full flush, and what the text it holds
    adds up to (CRC-32, Adler-32 and length: together, whether the text changed)."""

    data: bytes
    crc: int
    adler: int
    length: int


class _Compressor:
    """One deflate stream, flushed in full after each fragment so that no fragment
    refers back to another and any sequence of them inflates as one stream (and no
    compressor has to be set up per fragment: that cost more than compressing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)

    def piece(self, text: bytes, previous: Piece | None = None) -> Piece:
        """`text` compressed, or `previous` itself when it holds the same text."""
        crc, adler = zlib.crc32(text), zlib.adler32(text)
        if previous is not None and (previous.crc, previous.adler, previous.length) == (
            crc,
            adler,
            len(text),
        ):
            return previous
        with self._lock:
            data = self._deflate.compress(text) + self._deflate.flush(zlib.Z_FULL_FLUSH)
        return Piece(data, crc, adler, len(text))


@dataclass(frozen=True, slots=True)
class _Header:
    text: bytes
    openmetrics: bytes


def _header(family: Family[Any, Any]) -> _Header:
    text_help = family.help.replace("\\", r"\\").replace("\n", r"\n")
    om_help = text_help.replace('"', r"\"")
    return _Header(
        text=f"# HELP {family.name} {text_help}\n# TYPE {family.name} {family.type}\n".encode(),
        openmetrics=(
            f"# HELP {family.family_name} {om_help}\n# TYPE {family.family_name} {family.type}\n"
        ).encode(),
    )


HEADERS: tuple[_Header, ...] = tuple(_header(f) for f in PROJECT_FAMILIES)


def _template(names: Sequence[str]) -> str:
    """`a="{a}",b="{b}"` for the labels in the order prometheus_client writes them."""
    return ",".join(f'{name}="{{{name}}}"' for name in sorted(names))


_TEMPLATES = tuple(_template(f.labels) for f in PROJECT_FAMILIES)
_QUOTES = tuple(2 * len(f.labels) for f in PROJECT_FAMILIES)
_SPECIAL = {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}


def go_float(value: float) -> str:
    """`floatToGoString` of prometheus_client, with its checks in the order the common
    case (a finite number) wants them: a poll formats hundreds of values."""
    text = repr(float(value))
    if text[-1] in "fn":
        return _SPECIAL[text]
    if text[0] != "-":
        dot = text.find(".")
        if dot > 6:  # Go writes exponents sooner than Python
            mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
            return f"{mantissa}e+{dot - 1:02d}"
    return text


def render_project(status: ProjectStatus) -> tuple[str, ...]:
    """The sample lines of one project, one string per family of `PROJECT_FAMILIES`.

    Rows and their labels are read once per kind of row (a product's labels serve
    five families), each label set is one `format_map` of a template, and values are
    escaped only in the rare label set that needs it: a poll's rendering is cheap.
    """
    rows_of: dict[int, list[tuple[Any, dict[str, str]]]] = {}
    label_text: dict[tuple[int, str], list[str]] = {}
    out: list[str] = []
    for family, template, quotes in zip(PROJECT_FAMILIES, _TEMPLATES, _QUOTES, strict=True):
        kind: Rows[ProjectStatus, Any] = family.rows
        rows = rows_of.get(id(kind))
        if rows is None:
            labels_of = kind.labels
            rows = rows_of[id(kind)] = [(row, labels_of(status, row)) for row in kind.of(status)]
        texts = label_text.get((id(kind), template))
        if texts is None:
            texts = label_text[(id(kind), template)] = [
                _label_text(template, quotes, labels) for _, labels in rows
            ]
        value = family.value
        name = family.name
        lines = []
        for (row, _), text in zip(rows, texts, strict=True):
            number = value(row)
            if number is not None:
                lines.append(f"{name}{{{text}}} {go_float(number)}\n")
        out.append("".join(lines))
    return tuple(out)


def _label_text(template: str, quotes: int, labels: dict[str, str]) -> str:
    text = template.format_map(labels)
    if text.count('"') == quotes and "\\" not in text and "\n" not in text:
        return text
    return template.format_map({k: escape(v) for k, v in labels.items()})


@dataclass(frozen=True, slots=True)
class Body:
    """One answer to a scrape: its type, whether gzipped, its length and its bytes."""

    content_type: str
    gzipped: bool
    length: int
    chunks: Iterable[bytes]


@dataclass(frozen=True, slots=True)
class _Rendered:
    status: ProjectStatus  # what the pieces were rendered from
    pieces: tuple[Piece | None, ...]  # per family of PROJECT_FAMILIES; None: no lines


@dataclass(frozen=True, slots=True)
class _Column:
    """Every project's fragment of one family, joined: what a scrape sends."""

    version: int  # of the column, when this was joined
    data: bytes
    crc: int
    length: int


class Exposition:
    """The compact cache of every project's fragments, kept current by the store.

    `project_changed` runs in the poller's thread when a poll lands (that is where the
    formatting and compression cost is paid, once); `render` runs per scrape and only
    joins bytes: the columns (a family's fragments of every project) that changed
    since the last scrape, shared by both formats and by every scraper. `tail` holds
    what is rendered per scrape by prometheus_client: each API key's own counters,
    the build info, the process metrics.
    """

    def __init__(self, tail: CollectorRegistry) -> None:
        self._tail = tail
        self._compressor = _Compressor()
        self._lock = threading.Lock()
        #: Held while stale columns are joined, so that scrapers arriving together
        #: join each column once and share it.
        self._joining = threading.Lock()
        self._projects: dict[str, _Rendered] = {}
        #: Per family: bumped whenever one of its fragments changes.
        self._column_versions = [0] * len(PROJECT_FAMILIES)
        self._columns: list[_Column | None] = [None] * len(PROJECT_FAMILIES)
        self._headers = {
            om: tuple(self._compressor.piece(h.openmetrics if om else h.text) for h in HEADERS)
            for om in (False, True)
        }

    # --- StoreListener ------------------------------------------------------------

    def project_changed(self, status: ProjectStatus) -> None:
        with self._lock:
            old = self._projects.get(status.project_id)
        if old is None:
            return  # not (or no longer) a project of the store
        pieces = self._pieces(status, old.pieces)
        with self._lock:  # the store calls under its own lock: changes come in order
            self._projects[status.project_id] = _Rendered(status, pieces)
            for index, (new, before) in enumerate(zip(pieces, old.pieces, strict=True)):
                if new is not before:
                    self._column_versions[index] += 1

    def projects_changed(self, projects: Sequence[ProjectStatus]) -> None:
        with self._lock:
            known = dict(self._projects)
        fresh = {}
        empty = (None,) * len(PROJECT_FAMILIES)
        for status in projects:
            seen = known.get(status.project_id)
            # Statuses are immutable and replaced on change: the same object, same lines.
            fresh[status.project_id] = (
                seen
                if seen is not None and seen.status is status
                else _Rendered(status, self._pieces(status, seen.pieces if seen else empty))
            )
        with self._lock:
            self._projects = fresh
            self._column_versions = [v + 1 for v in self._column_versions]

    def _pieces(
        self, status: ProjectStatus, previous: tuple[Piece | None, ...]
    ) -> tuple[Piece | None, ...]:
        return tuple(
            self._compressor.piece(text.encode(), before) if text else None
            for text, before in zip(render_project(status), previous, strict=True)
        )

    # --- scrapes ------------------------------------------------------------------

    def render(self, accept: str = "", accept_encoding: str = "") -> Body:
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith(OPENMETRICS)
        tail = encoder(self._tail)
        headers = self._headers[openmetrics]
        if gzip_accepted(accept_encoding):
            chunks = [_GZIP_HEADER]
            crc = length = 0
            for header, column in zip(headers, self._current_columns(), strict=True):
                chunks += (header.data, column.data)
                crc = crc32_combine(crc, header.crc, header.length)
                crc = crc32_combine(crc, column.crc, column.length)
                length += header.length + column.length
            deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
            chunks.append(deflate.compress(tail) + deflate.flush(zlib.Z_FINISH))
            crc = crc32_combine(crc, zlib.crc32(tail), len(tail))
            chunks.append(_TRAILER.pack(crc, (length + len(tail)) & 0xFFFFFFFF))
            return Body(content_type, True, sum(map(len, chunks)), chunks)
        with self._lock:
            projects = list(self._projects.values())
        length = (
            len(tail)
            + sum(h.length for h in headers)
            + sum(p.length for project in projects for p in project.pieces if p is not None)
        )
        return Body(content_type, False, length, self._plain(headers, projects, tail))

    def _current_columns(self) -> list[_Column]:
        """Every column as of now; those that changed since they were last joined are
        joined again (a poll changes a few columns of one project)."""
        with self._joining:
            with self._lock:
                versions = list(self._column_versions)
                columns = list(self._columns)
                stale = [i for i, c in enumerate(columns) if c is None or c.version != versions[i]]
                projects = list(self._projects.values()) if stale else []
            for index in stale:
                pieces = [p for project in projects if (p := project.pieces[index]) is not None]
                crc = length = 0
                for piece in pieces:
                    crc = crc32_combine(crc, piece.crc, piece.length)
                    length += piece.length
                data = b"".join(p.data for p in pieces)
                columns[index] = _Column(versions[index], data, crc, length)
            if stale:
                with self._lock:
                    self._columns = list(columns)
        return [c for c in columns if c is not None]

    @staticmethod
    def _plain(headers: Sequence[Piece], projects: list[_Rendered], tail: bytes) -> Iterator[bytes]:
        inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        for index, header in enumerate(headers):
            yield inflate.decompress(header.data)
            for project in projects:
                piece = project.pieces[index]
                if piece is not None:
                    yield inflate.decompress(piece.data)
        yield tail

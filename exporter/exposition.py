"""/metrics: each project's lines formatted once when its poll lands, joined as a scrape sends them.

At a large account the exposition is the whole cost of a scrape (a thousand projects of
fifty products is 100 MB of text), and polls land nearly all the time, so rendering
the world at each scrape after a poll would make every scrape as slow as the render
(14 s at 1,000 x 50 with prometheus_client). Instead, when the store says a project
changed, its lines are formatted for every family at once and compressed right away
(a *piece* per family); a scrape only sends those ready pieces under the family
headers. Text and OpenMetrics share the pieces (only headers differ), and only the
compressed form is kept: Prometheus asks for gzip, and the rare client that wants
plain text gets it inflated as it is sent.

How pieces join: every piece is raw deflate data from one shared stream, ending in a
full flush, so no piece refers back to another and any sequence of them is a valid
deflate stream. A scrape's body is ONE gzip member: a header, the pieces of every
family in order, the per-scrape tail compressed to the final block, and a trailer
whose CRC-32 is combined from the pieces' own. One member, because many clients read
only the first of several (httpx, curl, browsers) and would silently see a truncated
exposition.

Blocks: a family's pieces are kept in blocks of `BLOCK` projects, each with the CRC,
length and size of its pieces. A poll changes one block per family; a scrape combines
the CRCs of a few dozen blocks per family instead of a thousand pieces (at 1,000 x 50
with ten polls a second, the scrape then costs the same bytes from a minimal server,
not 30 ms more; see `benchmarks/`). A body is produced as it is sent, in groups of
`GROUP` bytes joined from piece references: an answer in progress holds references to
the pieces of its moment, never a copy, so a client that stops reading pins only the
pieces that changed since it asked (kilobytes), shared with every other such client.

The bytes are held identical to what prometheus_client renders for the same store
(`tests/test_exposition.py` compares them both ways), label sorting and escaping
included.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
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
#: Projects per block of a family's pieces.
BLOCK = 32
#: Bytes of body produced at a time (what an answer in progress holds of its own).
GROUP = 32 * 1024
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


@functools.cache
def _combiner() -> Callable[[int, int, int], int]:
    """zlib's own crc32_combine (O(log n), where the fallback is O(n)), looked up at the
    first scrape; through PyDLL so that the GIL is kept across the calls a scrape makes.

    Serves the scrape target at 1,000 x 50 with polls landing (every scrape ≤ 250 ms,
    p50 ≤ 3x a minimal server): the pure fallback costs a pass over the whole text
    per scrape, about 200 MB of CRC.
    """
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
    return crc32_combine_python


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    return _combiner()(crc1, crc2, length2)


def escape(value: str) -> str:
    """A label value as prometheus_client escapes it (backslash, newline, quote)."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


@dataclass(frozen=True, slots=True)
class Piece:
    """One family's lines of one project: raw deflate data ending in a full flush, and
    what its text adds up to (CRC-32, Adler-32 and length: together, whether the text
    changed)."""

    data: bytes
    crc: int
    adler: int
    length: int


class _Compressor:
    """One deflate stream, flushed in full after each piece so that no piece refers
    back to another and any sequence of them inflates as one stream (and no compressor
    has to be set up per piece: that cost more than compressing)."""

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
    """One answer to a scrape: its type, whether gzipped, its length and its bytes.

    `chunks` are produced as they are taken, `GROUP` bytes at a time; `costly` says
    that producing them is CPU work (inflating plain text), best done off the event
    loop and only as fast as the client reads.
    """

    content_type: str
    gzipped: bool
    length: int
    chunks: Iterator[bytes]
    costly: bool = False


@dataclass(frozen=True, slots=True)
class _Rendered:
    status: ProjectStatus  # what the pieces were rendered from
    pieces: tuple[Piece | None, ...]  # per family of PROJECT_FAMILIES; None: no lines


@dataclass(frozen=True, slots=True)
class _Block:
    """The pieces of one family for up to `BLOCK` consecutive projects.

    `data` is their compressed bytes joined once, when a poll changes the block: a
    gzip scrape then sends a few hundred blocks instead of walking some 20,000 pieces
    in Python. Serves "every scrape <= 250 ms while polls land, p50 <= 3x a minimal
    server" at 1,000 x 50: through the real server, a gzip scrape's p50 went from
    23.8 ms to 11.7 ms (benchmarks/RESULTS.md has the steady state)."""

    pieces: tuple[Piece, ...]
    data: bytes
    crc: int
    length: int  # of the text
    size: int  # of the compressed data


@dataclass(frozen=True, slots=True)
class _Column:
    """Every block of one family, as a scrape sends them."""

    blocks: tuple[_Block, ...]
    crc: int
    length: int
    size: int


def _block(pieces: Sequence[Piece]) -> _Block:
    crc = length = size = 0
    for piece in pieces:
        crc = crc32_combine(crc, piece.crc, piece.length)
        length += piece.length
        size += len(piece.data)
    return _Block(tuple(pieces), b"".join(p.data for p in pieces), crc, length, size)


def _column(blocks: Sequence[_Block]) -> _Column:
    crc = length = size = 0
    for block in blocks:
        if block.length:
            crc = crc32_combine(crc, block.crc, block.length)
        length += block.length
        size += block.size
    return _Column(tuple(blocks), crc, length, size)


class Exposition:
    """Every project's pieces, kept current by the store, and the bodies of scrapes.

    Parameters:
        tail: what is rendered per scrape by prometheus_client: each API key's own
            counters, the build info, the process metrics.

    `project_changed` and `projects_changed` run when the store tells of a change
    (outside its lock, one at a time, in order): that is where the formatting and
    compression cost is paid, once per poll. `render` runs per scrape.
    """

    def __init__(self, tail: CollectorRegistry) -> None:
        self._tail = tail
        self._compressor = _Compressor()
        self._lock = threading.Lock()
        self._order: dict[str, int] = {}
        self._rendered: list[_Rendered] = []
        #: Per family, its blocks; a column of each, joined when first asked for.
        self._blocks: list[list[_Block]] = [[] for _ in PROJECT_FAMILIES]
        self._columns: list[_Column | None] = [None] * len(PROJECT_FAMILIES)
        self._headers = {
            om: tuple(self._compressor.piece(h.openmetrics if om else h.text) for h in HEADERS)
            for om in (False, True)
        }

    # --- StoreListener ------------------------------------------------------------

    def project_changed(self, status: ProjectStatus) -> None:
        with self._lock:
            index = self._order.get(status.project_id)
            old = self._rendered[index] if index is not None else None
        if index is None or old is None:
            return  # not (or no longer) a project of the store
        pieces = self._pieces(status, old.pieces)
        with self._lock:
            if self._order.get(status.project_id) != index:
                return  # the projects changed meanwhile: that change rendered it
            self._rendered[index] = _Rendered(status, pieces)
            start = index - index % BLOCK
            for family, (new, before) in enumerate(zip(pieces, old.pieces, strict=True)):
                if new is not before:
                    self._blocks[family][index // BLOCK] = self._block_at(family, start)
                    self._columns[family] = None

    def projects_changed(self, projects: Sequence[ProjectStatus]) -> None:
        with self._lock:
            known = {r.status.project_id: r for r in self._rendered}
        empty = (None,) * len(PROJECT_FAMILIES)
        rendered = []
        for status in projects:
            seen = known.get(status.project_id)
            # Statuses are immutable and replaced on change: the same object, same lines.
            rendered.append(
                seen
                if seen is not None and seen.status is status
                else _Rendered(status, self._pieces(status, seen.pieces if seen else empty))
            )
        with self._lock:
            self._rendered = rendered
            self._order = {r.status.project_id: i for i, r in enumerate(rendered)}
            self._blocks = [
                [self._block_at(family, start) for start in range(0, len(rendered), BLOCK)]
                for family in range(len(PROJECT_FAMILIES))
            ]
            self._columns = [None] * len(PROJECT_FAMILIES)

    def _block_at(self, family: int, start: int) -> _Block:
        """The block of `family` from project `start` on (under the lock)."""
        return _block(
            [
                piece
                for rendered in self._rendered[start : start + BLOCK]
                if (piece := rendered.pieces[family]) is not None
            ]
        )

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
        columns = self._current_columns()
        if gzip_accepted(accept_encoding):
            deflate = zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
            final = deflate.compress(tail) + deflate.flush(zlib.Z_FINISH)
            crc = length = size = 0
            for header, column in zip(headers, columns, strict=True):
                crc = crc32_combine(crc, header.crc, header.length)
                if column.length:
                    crc = crc32_combine(crc, column.crc, column.length)
                length += header.length + column.length
                size += len(header.data) + column.size
            crc = crc32_combine(crc, zlib.crc32(tail), len(tail))
            trailer = _TRAILER.pack(crc, (length + len(tail)) & 0xFFFFFFFF)
            total = len(_GZIP_HEADER) + size + len(final) + len(trailer)
            body = _grouped(_gzip_parts(headers, columns, final, trailer))
            return Body(content_type, True, total, body)
        length = sum(h.length for h in headers) + sum(c.length for c in columns) + len(tail)
        return Body(content_type, False, length, _plain(headers, columns, tail), costly=True)

    def _current_columns(self) -> list[_Column]:
        """Every family's column as of now; those that changed are joined again (a
        poll changes one block of each family)."""
        with self._lock:
            columns = self._columns
            for family, column in enumerate(columns):
                if column is None:
                    columns[family] = _column(self._blocks[family])
            return cast(list[_Column], list(columns))


def _gzip_parts(
    headers: Sequence[Piece], columns: Sequence[_Column], final: bytes, trailer: bytes
) -> Iterator[bytes]:
    yield _GZIP_HEADER
    for header, column in zip(headers, columns, strict=True):
        yield header.data
        for block in column.blocks:
            yield block.data
    yield final
    yield trailer


def _grouped(parts: Iterator[bytes]) -> Iterator[bytes]:
    """`parts` joined into groups of about `GROUP` bytes: one send each, and the only
    copy an answer in progress holds."""
    group: list[bytes] = []
    size = 0
    for part in parts:
        group.append(part)
        size += len(part)
        if size >= GROUP:
            yield b"".join(group)
            group.clear()
            size = 0
    if group:
        yield b"".join(group)


def _plain(headers: Sequence[Piece], columns: Sequence[_Column], tail: bytes) -> Iterator[bytes]:
    """The same pieces inflated through one decompressor, `GROUP` bytes of text at a
    time (each piece's output bounded, so a hostile piece can't make a group huge)."""
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    texts = (
        inflate.decompress(data)
        for header, column in zip(headers, columns, strict=True)
        for data in _column_data(header, column)
    )
    yield from _grouped(itertools.chain(texts, (tail,)))


def _column_data(header: Piece, column: _Column) -> Iterator[bytes]:
    yield header.data
    for block in column.blocks:
        for piece in block.pieces:
            yield piece.data

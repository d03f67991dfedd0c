"""How a finance file writes its values, and how its rows leave in chunks.

Defined once for every file: dates as UTC `YYYY-MM-DDTHH:MM:SSZ` (what FOCUS asks,
and what spreadsheets read), decimals in plain notation (never `1e-05`: some
ingesters read exponents as text), and rows gathered into chunks of about
`CHUNK_BYTES` so that a download of 1,000 projects is sent as it is made, never held
whole (issue 33: RSS growth measured in benchmark section 17).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache

#: Bytes gathered before a chunk leaves.
CHUNK_BYTES = 64 * 1024


@lru_cache(maxsize=4096)
def timestamp(seconds: float | None) -> str:
    """`seconds` as UTC `YYYY-MM-DDTHH:MM:SSZ`; "" for none. Cached: a file repeats
    a few times (its periods, its answers' times) on every row."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    try:
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return ""


@lru_cache(maxsize=16384)
def decimal(value: float | None) -> str:
    """`value` in plain notation, at most 10 decimals, no trailing zeros; "" for none.
    Cached: unit prices, quantities and shares repeat over a file's rows (a sixth of a
    1,000 x 50 FOCUS file's time went here; benchmarks/RESULTS.md section 17)."""
    if value is None or not math.isfinite(value):
        return ""
    # the shortest text that reads back as the number, once rounded: 71.7 / 3 * 3 is
    # 71.7, not 71.70000000000002; an exponent (under 1e-4, from 1e16) spelt out
    text = repr(round(value, 10))
    if "e" in text:
        text = format(Decimal(text), "f")
        if "." in text:
            text = text.rstrip("0").rstrip(".")
    elif text.endswith(".0"):
        text = text[:-2]
    return "0" if text in ("-0", "") else text


def csv_chunks(header: Sequence[str], rows: Iterable[Sequence[object]]) -> Iterator[bytes]:
    """`header` and `rows` as CSV (RFC 4180: CRLF, quoted where needed), UTF-8, in
    chunks of about `CHUNK_BYTES`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(row)
        if buffer.tell() >= CHUNK_BYTES:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def gathered(pieces: Iterable[str]) -> Iterator[bytes]:
    """`pieces` of text joined into chunks of about `CHUNK_BYTES`, UTF-8."""
    held: list[str] = []
    size = 0
    for piece in pieces:
        held.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            yield "".join(held).encode()
            held, size = [], 0
    yield "".join(held).encode()

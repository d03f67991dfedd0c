"""A test transport that streams like a socket, for the client's unit tests.

`httpx.MockTransport` hands the client an answer httpx has already read and decoded,
which no real transport does; code that reads it takes paths production never takes.
`StreamingTransport` answers from the same kind of handler, but hands the body over
raw (still encoded), in pieces, through an iterator, as httpcore does from a socket;
it also counts what the client read of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx

Handler = Callable[[httpx.Request], httpx.Response]
#: What httpcore reads from a socket at once.
PIECE = 64 * 1024


class StreamingTransport(httpx.BaseTransport):
    """Each request answered by `handler(request)`, its body streamed in `piece`-byte
    pieces; `streamed` counts the raw bytes the client pulled, `closed` the bodies it
    closed."""

    def __init__(self, handler: Handler, *, piece: int = PIECE) -> None:
        self.handler = handler
        self.piece = piece
        self.streamed = 0
        self.closed = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.handler(request)
        # The body as it was given, still encoded (`answer.content` is httpx's decoding).
        assert isinstance(answer.stream, httpx.SyncByteStream)
        raw = b"".join(answer.stream)
        return httpx.Response(
            answer.status_code,
            headers=answer.headers,
            stream=_Pieces(self, raw),
            extensions={"http_version": b"HTTP/1.1"},
        )


class _Pieces(httpx.SyncByteStream):
    def __init__(self, transport: StreamingTransport, raw: bytes) -> None:
        self._transport = transport
        self._raw = raw

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self._raw), self._transport.piece):
            piece = self._raw[start : start + self._transport.piece]
            self._transport.streamed += len(piece)
            yield piece

    def close(self) -> None:
        self._transport.closed += 1

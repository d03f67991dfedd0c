"""httpx's HTTP/1.1 transport over httpcore, with one deadline for a whole request.

httpx's timeouts bound each socket operation, not a request: an answer that trickles
in a byte just inside every read timeout would never end. `DeadlineTransport` applies
the deadline of the request the current thread is making (`Deadlines.until`) to every
connect, read and write, so that `api.timeout_seconds` bounds connect, headers and the
whole body together (measured: a 1-byte-per-50-ms trickle fails at 1.0 s with a 1 s
timeout, where httpx alone read on for minutes).
"""

from __future__ import annotations

import ssl
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import certifi
import httpcore
import httpx

#: What a request through this transport (or httpx's own, as tests use) raises.
TIMEOUTS = (httpx.TimeoutException, httpcore.TimeoutException)
NETWORK_ERRORS = (
    httpx.HTTPError,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
    OSError,
)


class Deadlines:
    """The deadline of the request the current thread is making, applied to every
    socket operation: httpx's timeouts bound each read, not the whole request."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._local = threading.local()
        self._clock = clock

    @contextmanager
    def until(self, deadline: float) -> Iterator[None]:
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = None

    def renew(self, deadline: float) -> None:
        """Give the request in flight a new deadline: a redirect's next hop is a request
        of its own, with the whole timeout (within `until`, which clears it)."""
        self._local.deadline = deadline

    def left(self, timeout: float | None) -> float | None:
        deadline: float | None = getattr(self._local, "deadline", None)
        if deadline is None:
            return timeout
        left = deadline - self._clock()
        if left <= 0:
            raise httpcore.ReadTimeout("the request's deadline has passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream, deadlines: Deadlines) -> None:
        self._inner = inner
        self._deadlines = deadlines

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadlines.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadlines.left(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._deadlines.left(timeout))
        return _DeadlineStream(inner, self._deadlines)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadlines: Deadlines) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadlines = deadlines

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, self._deadlines.left(timeout), local_address, socket_options
        )
        return _DeadlineStream(stream, self._deadlines)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, self._deadlines.left(timeout), socket_options
        )
        return _DeadlineStream(stream, self._deadlines)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        self._stream.close()


class DeadlineTransport(httpx.BaseTransport):
    """httpx's HTTP/1.1 transport over httpcore, with `Deadlines` on every socket.

    Proxies from the environment (HTTPS_PROXY, NO_PROXY) are honoured as httpx does.
    """

    def __init__(self, base_url: str, deadlines: Deadlines, max_connections: int) -> None:
        context = ssl.create_default_context(cafile=certifi.where())
        backend = _DeadlineBackend(deadlines)
        url = httpx.URL(base_url)
        proxy = urllib.request.getproxies().get(url.scheme)
        if proxy and not urllib.request.proxy_bypass(url.host):
            self._pool: httpcore.ConnectionPool = httpcore.HTTPProxy(
                proxy_url=proxy,
                ssl_context=context,
                max_connections=max_connections,
                network_backend=backend,
            )
        else:
            self._pool = httpcore.ConnectionPool(
                ssl_context=context,
                max_connections=max_connections,
                keepalive_expiry=30.0,
                network_backend=backend,
            )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        answer = self._pool.handle_request(
            httpcore.Request(
                method=request.method,
                url=httpcore.URL(
                    scheme=request.url.raw_scheme,
                    host=request.url.raw_host,
                    port=request.url.port,
                    target=request.url.raw_path,
                ),
                headers=request.headers.raw,
                content=request.stream,
                extensions=request.extensions,
            )
        )
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_Body(answer.stream),
            extensions=answer.extensions,
        )

    def close(self) -> None:
        self._pool.close()

"""The listening server: HTTP/1.1 on asyncio and h11, TLS, connection bounds, deadlines.

One event loop in a background thread holds every connection (an idle one costs a few
kilobytes, not a thread), so a thousand idle or slowloris connections cannot crowd out
Prometheus. The bounds:

- a client has `header_timeout` seconds from its first byte (or from connecting, the
  TLS handshake included) to send a complete request head; an idle kept-alive
  connection may wait `idle_timeout` for its next request;
- at most `max_connections` are held; at the limit, the connection that has waited
  longest without a request in progress is closed to make room, so that newcomers
  (Prometheus) always get in and attackers cycle out; refusals are logged as a
  count, at most once a minute;
- request heads over 64 KiB, more than 100 headers or a target over 8 KiB are refused;
  bodies (GET has none) are not read past 64 KiB.

`WebApp.handle` runs in a small thread pool: rendering and bcrypt never block the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import h11

from exporter.web import Request, Response, WebApp, reply
from exporter.webconfig import WebSettings

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_TARGET_BYTES = 8 * 1024
#: Seconds between two "connections refused" log lines.
REFUSAL_LOG_SECONDS = 60.0
#: Bytes of a streamed body produced per hop to the worker pool.
STREAM_BATCH = 1 << 20
#: Bytes a response may have waiting in the transport before the next chunk waits for
#: the client (bounded by `write_timeout`); asyncio's own high-water mark.
WRITE_HIGH = 64 * 1024
#: What ends a connection without a word: clients hang up, stall, speak TLS badly.
_ROUTINE = (
    TimeoutError,
    OSError,
    ssl.SSLError,
    h11.ProtocolError,
    ConnectionError,
    asyncio.IncompleteReadError,
)


@dataclass(eq=False, slots=True)
class _Connection:
    writer: asyncio.StreamWriter
    #: Waiting for a request (idle or head incomplete): may be closed to make room.
    waiting: bool = True
    since: float = field(default_factory=time.monotonic)


def raise_file_limit() -> int:
    """Raise the soft limit on open files to the hard one (as Go programs do), so that
    held connections don't starve the process of descriptors; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
    return soft


class HttpServer:
    def __init__(
        self,
        app: WebApp,
        host: str,
        port: int,
        *,
        web: WebSettings = WebSettings(),  # noqa: B008 (frozen)
        header_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        write_timeout: float = 60.0,
        max_connections: int = 4096,
        workers: int = 8,
    ) -> None:
        """Binds at once, so that a taken port is an error before anything starts."""
        self._app = app
        self._web = web
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout
        self._write_timeout = write_timeout
        limit = raise_file_limit()
        self._max_connections = max(16, min(max_connections, limit - 64))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio only turns Nagle off on sockets that say they're TCP,
        # and with Nagle on, every keep-alive answer in two segments waits 40 ms for the
        # client's delayed ACK (Prometheus keeps its connection alive).
        self._socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                self._socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self._socket.bind((host, port))
            self._socket.listen(1024)
        except OSError:
            self._socket.close()
            raise
        self._socket.setblocking(False)
        self._connections: dict[_Connection, None] = {}
        self._refused = 0
        self._refusal_logged = 0.0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    @property
    def connections(self) -> int:
        return len(self._connections)

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive() and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._socket.close()

    def reload(self, web: WebSettings) -> None:
        """New TLS settings for new connections (SIGHUP); held ones keep theirs."""
        self._web = web

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._accept, sock=self._socket, limit=MAX_HEAD_BYTES)
        self._started.set()
        await self._stopping.wait()
        server.close()
        for connection in list(self._connections):
            connection.writer.close()
        await asyncio.sleep(0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        if not self._make_room():
            self._note_refusal()
            writer.transport.abort()
            return
        self._connections[connection] = None
        try:
            await self._serve(connection, reader, writer)
        except _ROUTINE:
            pass  # routine for a server on a network: clients hang up, stall, speak TLS badly
        except asyncio.CancelledError:
            pass  # the server is stopping: end quietly (asyncio would log a cancelled task)
        finally:
            self._connections.pop(connection, None)
            writer.transport.abort()

    def _make_room(self) -> bool:
        if len(self._connections) < self._max_connections:
            return True
        waiting = [c for c in self._connections if c.waiting]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.since)
        self._connections.pop(oldest, None)
        oldest.writer.transport.abort()
        self._note_refusal()
        return True

    def _note_refusal(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= REFUSAL_LOG_SECONDS:
            log.warning(
                "connection limit reached: idle connections closed or new ones refused",
                extra={"count": self._refused, "limit": self._max_connections},
            )
            self._refused = 0
            self._refusal_logged = now

    async def _serve(
        self, connection: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        web = self._web
        deadline = time.monotonic() + self._header_timeout
        if web.ssl_context is not None:
            await writer.start_tls(web.ssl_context, ssl_handshake_timeout=self._header_timeout)
            ssl_object = writer.get_extra_info("ssl_object")
            if not web.client_allowed(ssl_object.getpeercert() if ssl_object else None):
                log.debug("client certificate not among client_allowed_sans")
                return
        peer = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        first = True
        while True:
            connection.waiting = True
            connection.since = time.monotonic()
            request = await self._read_request(peer, reader, writer, deadline if first else None)
            first = False
            if request is None:
                return
            connection.waiting = False
            response = await self._loop.run_in_executor(self._pool, self._app.handle, request)
            await self._send(peer, writer, response, head=request.method == "HEAD")
            if peer.our_state is not h11.DONE or peer.their_state is not h11.DONE:
                return
            peer.start_next_cycle()

    async def _read_request(
        self,
        peer: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        deadline: float | None,
    ) -> Request | None:
        """The next request, or None when the client is gone, too slow or malformed
        (answered with 4xx first where HTTP allows)."""
        request: h11.Request | None = None
        body = 0
        while True:
            try:
                event = peer.next_event()
            except h11.RemoteProtocolError as exc:
                await self._refuse(peer, writer, exc.error_status_hint)
                return None
            if event is h11.NEED_DATA:
                if deadline is None and request is None:
                    # Idle between requests: wait long for a first byte, then briefly.
                    data = await asyncio.wait_for(reader.read(65536), self._idle_timeout)
                    deadline = time.monotonic() + self._header_timeout
                else:
                    assert deadline is not None
                    data = await asyncio.wait_for(
                        reader.read(65536), max(deadline - time.monotonic(), 0)
                    )
                peer.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += len(event.data)
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                return _request(request)
            else:
                return None  # the client hung up, or h11 paused on a pipelined request
            refusal = _too_big(request, body) if request is not None else None
            if refusal is not None:
                await self._refuse(peer, writer, refusal)
                return None

    async def _refuse(
        self, peer: h11.Connection, writer: asyncio.StreamWriter, status: int
    ) -> None:
        if peer.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        message = {
            413: b"request body too large\n",
            414: b"request target too long\n",
            431: b"request headers too large\n",
        }.get(status, b"bad request\n")
        response = reply(status, message, headers=[("Connection", "close")])
        with contextlib.suppress(h11.LocalProtocolError):
            await self._send(peer, writer, response, head=False)

    async def _send(
        self, peer: h11.Connection, writer: asyncio.StreamWriter, response: Response, *, head: bool
    ) -> None:
        headers = [*response.headers, ("Content-Length", str(response.length))]
        status = response.status
        reason = {
            413: "Content Too Large",
            414: "URI Too Long",
            431: "Request Header Fields Too Large",
            400: "Bad Request",
        }.get(status, response.reason)
        writer.write(
            peer.send(h11.Response(status_code=status, headers=headers, reason=reason.encode()))
        )
        if not head:
            async for chunk in self._chunks(response.body):
                writer.writelines(peer.send_with_data_passthrough(h11.Data(data=chunk)) or ())
                # Waiting is only needed once the client stops taking data as fast as it
                # comes (or is gone): a timed drain per chunk costs a task each, which
                # was milliseconds a scrape.
                transport = writer.transport
                if transport.is_closing() or transport.get_write_buffer_size() >= WRITE_HIGH:
                    await asyncio.wait_for(writer.drain(), self._write_timeout)
        writer.write(peer.send(h11.EndOfMessage()))
        await asyncio.wait_for(writer.drain(), self._write_timeout)

    async def _chunks(self, body: Iterable[bytes]) -> AsyncIterator[bytes]:
        if isinstance(body, list | tuple):
            for chunk in body:
                yield chunk
            return
        # Produced as sent (decompressing plain /metrics): in the pool, a batch at a time.
        source = iter(body)
        while True:
            batch = await self._loop.run_in_executor(self._pool, _take, source)
            if not batch:
                return
            for chunk in batch:
                yield chunk


def _too_big(request: h11.Request, body: int) -> int | None:
    """The status refusing a request head or body over the bounds, or None."""
    if len(request.target) > MAX_TARGET_BYTES:
        return 414
    size = sum(len(k) + len(v) for k, v in request.headers)
    if len(request.headers) > MAX_HEADERS or size > MAX_HEAD_BYTES:
        return 431
    if body > MAX_HEAD_BYTES:
        return 413
    return None


def _request(request: h11.Request) -> Request:
    target = urlsplit(request.target.decode("latin-1"))
    return Request(
        method=request.method.decode("latin-1"),
        path=unquote(target.path, errors="replace") or "/",
        headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers},
    )


def _take(source: Iterator[bytes]) -> list[bytes]:
    batch: list[bytes] = []
    size = 0
    for chunk in source:
        batch.append(chunk)
        size += len(chunk)
        if size >= STREAM_BATCH:
            break
    return batch

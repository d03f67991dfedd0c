"""The listening server: HTTP/1.1 on asyncio and h11, TLS, connection bounds, deadlines.

One event loop in a background thread holds every connection (an idle one costs a few
kilobytes, not a thread), so a thousand idle or slowloris connections cannot crowd out
Prometheus. The bounds:

- a client has `header_timeout` seconds from its first byte (or from connecting, the
  TLS handshake included) to send a complete request head; an idle kept-alive
  connection may wait `idle_timeout` for its next request;
- an answer is produced a group of `exposition.GROUP` bytes at a time and handed to
  the kernel `SEND_BYTES` at a time, the next only once the last has left the
  process: a client that reads slowly, or never, holds at most one group and one send
  in the process (and produces no more plain text than it reads); one that makes no
  progress for `write_timeout` seconds is dropped;
- connections are accepted `ACCEPT_BATCH` at a time, room made for each at once, so
  the process never holds many more sockets than `max_connections` (asyncio's own
  server accepted 100 at once, ran out of descriptors at a low `ulimit -n` and then
  stopped accepting for a second, and cut the kernel's queue to 100);
- at most `max_connections` are held; at the limit one is closed to make room, so
  newcomers (Prometheus, the probes) always get in: first one whose answer is given
  (lingering, or its refusal held), then one waiting for a password check (its
  client has proved nothing; a check not started never runs), then the one that has
  waited longest without progress (idle, reading a head, blocked writing to a client
  that does not read, or its render not started), then the answer written longest;
  only a render under way is never closed, its answer being about to be written.
  Refusals are logged as a count, at most once a minute;
- a request is admitted on the loop at no cost (`WebApp.admit`); a password check
  runs in a pool of its own (`web.CHECK_WORKERS` threads, `web.CHECK_QUEUE` waiting,
  budgets per source), never in the render pool; a refusal (401, 429, 503) closes
  its connection, so one connection holds at most one request in the server and
  cannot pipeline a series of failed checks; while connections arrive faster than
  they are accepted, a refusal is held `REFUSAL_DELAY` first, so that a flood waits
  in the server rather than in the kernel's queue ahead of the probes;
- request heads over 64 KiB, more than 100 headers or a target over 8 KiB are refused;
  bodies (GET has none) are not read past 64 KiB.

Measured (`benchmarks/`): 200 clients that ask for /metrics at 1,000 x 50 and never
read cost about 64 KiB each; `/healthz` beside 100 of them answers in milliseconds.
Connections from 100 addresses pipelining wrong passwords, 150 at a limit of 100 or
1,100 at the default 1,024: `/healthz` and `/readyz` answer within 0.15 s and a
verified scrape within 0.2 s (`tests/test_auth_bounds.py` holds 1 s and 10 s; before,
every one was reset, and the server took 35 s to recover once the flood ended).

Renders run in a small thread pool and bcrypt in another (neither blocks the loop);
the probes and every refusal are answered on the loop (a refusal held first while
the server is flooded).
"""

from __future__ import annotations

import asyncio
import contextlib
import http
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

from exporter.web import CHECK_WORKERS, Admission, PasswordCheck, Request, Response, WebApp, reply
from exporter.webconfig import WebSettings

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
MAX_TARGET_BYTES = 8 * 1024
#: Bytes read from a socket at a time (and the most a client's head may hold).
READ_BYTES = MAX_HEAD_BYTES
#: Bytes of an answer handed to the kernel at a time (see the module docstring): what
#: the kernel does not take at once is copied into the transport's buffer.
SEND_BYTES = 16 * 1024
#: Seconds between two "connections refused" log lines.
REFUSAL_LOG_SECONDS = 60.0
#: Descriptors kept free of connections (the log, the API's sockets, files).
SPARE_FILES = 64
#: The least `max_connections` ever becomes, however few files the process may open.
MIN_CONNECTIONS = 16
#: Seconds a closing connection reads what the client still sends, so that closing
#: does not reset it (and lose the end of the answer) before it has read the answer.
LINGER_SECONDS = 2.0
#: Connections the kernel queues before they are accepted.
BACKLOG = 1024
#: Connections accepted per turn of the event loop (see `HttpServer._listen`): the
#: connections held are served between batches, and the sockets accepted and not yet
#: refused or held stay well within `SPARE_FILES`. A full batch means more are queued
#: than a turn takes: the server is flooded for `FLOOD_SECONDS`.
ACCEPT_BATCH = 16
#: Seconds the server counts as flooded after a full batch of connections.
FLOOD_SECONDS = 1.0
#: Seconds a refusal (`Response.close`: 401, 429, 503) is held before it is sent while
#: the server is flooded. A flood's connections then wait in the server, first in
#: line to be closed for a newcomer, instead of coming back at once to queue in the
#: kernel ahead of the probes: with 1,100 such connections (limit 1,024), probes
#: waited 0.5 to 1.9 s in that queue, and 0.3 s at most with the refusals held.
REFUSAL_DELAY = 1.0
#: Seconds to wait before accepting again when the process is out of descriptors.
ACCEPT_RETRY_SECONDS = 0.05
#: Bytes the kernel may hold unsent for a connection (TCP_NOTSENT_LOWAT): the kernel
#: then takes no more from a client that does not read, so its plain text is not
#: inflated ahead of it (without it, the kernel's send buffer grows to 4 MiB each on
#: Linux, and 100 such clients cost 4 CPU-s); data in flight is not limited by it.
NOTSENT_LOWAT = 128 * 1024
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
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    #: The client's address, for its own rate-limit bucket.
    client: str = ""
    #: Waiting for a request (idle, or its head incomplete).
    waiting: bool = True
    since: float = field(default_factory=time.monotonic)
    #: Blocked writing to a client that has not taken the last group, since when.
    blocked_since: float | None = None
    #: Writing an answer, since when.
    writing_since: float | None = None
    #: Waiting for a password check (queued or under way), since when.
    authenticating_since: float | None = None
    #: Its render queued and not started yet, since when (cleared by the worker).
    queued_since: float | None = None
    #: Answered and closing (reading what the client still sends), or its refusal held
    #: (`REFUSAL_DELAY`), since when.
    closing_since: float | None = None
    #: Its last answer was a refusal that closes it (`Response.close`).
    refused: bool = False
    #: The task serving it: cancelled when it is closed to make room.
    task: asyncio.Task[None] | None = None

    def eviction_order(self) -> tuple[int, float] | None:
        """Where it stands in line to be closed to make room, or None (a render under
        way never is: its answer is about to be written). First a connection whose
        answer is sent, then one waiting for a password check (its client has proved
        nothing yet), then whoever has made no progress the longest (idle, a head
        incomplete, blocked writing to a client that does not read, or its render not
        started), then the answer that has been written longest."""
        if self.closing_since is not None:
            return (0, self.closing_since)
        if self.authenticating_since is not None:
            return (1, self.authenticating_since)
        if self.waiting:
            return (2, self.since)
        if self.blocked_since is not None:
            return (2, self.blocked_since)
        if self.queued_since is not None:
            return (2, self.queued_since)
        if self.writing_since is not None:
            return (3, self.writing_since)
        return None


class HttpServer:
    """HTTP/1.1 (and TLS) in front of a `WebApp`.

    Parameters:
        app: answers the requests.
        host, port: where to listen (port 0: a free one, read back from `port`).
        web: the web config: TLS (reloaded for new connections by `reload`).
        header_timeout: seconds to send a request head.
        idle_timeout: seconds a kept-alive connection may wait for its next request.
        write_timeout: seconds a client may take to read one group of an answer.
        max_connections: connections held at once (at most the open-file limit less
            `SPARE_FILES`).
        workers: threads rendering answers (password checks have their own
            `web.CHECK_WORKERS`).
        refusal_delay: seconds a refusal is held while the server is flooded
            (`REFUSAL_DELAY`; 0 never holds one).
    """

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
        max_connections: int = 1024,
        workers: int = 8,
        refusal_delay: float = REFUSAL_DELAY,
    ) -> None:
        """Binds at once, so that a taken port is an error before anything starts."""
        self._app = app
        self._web = web
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout
        self._write_timeout = write_timeout
        self._refusal_delay = refusal_delay
        files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if files == resource.RLIM_INFINITY:
            files = max_connections + SPARE_FILES
        self._max_connections = max(MIN_CONNECTIONS, min(max_connections, files - SPARE_FILES))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http")
        self._checks = ThreadPoolExecutor(max_workers=CHECK_WORKERS, thread_name_prefix="auth")
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
            self._socket.listen(BACKLOG)
        except OSError:
            self._socket.close()
            raise
        self._socket.setblocking(False)
        self._connections: dict[_Connection, None] = {}
        #: Accepted, room made, streams not ready yet.
        self._opening = 0
        #: Connections whose answer is given, in the order they were (`_mark_closing`).
        self._closing: dict[_Connection, None] = {}
        self._flooded_until = -float("inf")
        self._tasks: set[asyncio.Task[None]] = set()
        self._accept_failure_logged = -float("inf")
        self._refused = 0
        self._refusal_logged = -float("inf")
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

    @property
    def max_connections(self) -> int:
        return self._max_connections

    def start(self) -> None:
        self._thread.start()
        self._started.wait(10)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive() and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._checks.shutdown(wait=False, cancel_futures=True)
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
        listening = self._loop.create_task(self._listen())
        self._started.set()
        await self._stopping.wait()
        listening.cancel()
        for connection in list(self._connections):
            connection.writer.close()
        await asyncio.sleep(0)
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self) -> None:
        """Accept connections, at most `ACCEPT_BATCH` per turn of the loop, making room
        for each before it costs more than its socket.

        Not asyncio's server: it accepts as many as its backlog at once (100 unless
        told, and it listens again with that backlog, shortening the kernel's queue)
        before any can be refused, and past the open-file limit it stops accepting
        for a whole second. At the connection limit a burst then ran the process out
        of descriptors, or overflowed the kernel's queue so that SYNs were dropped:
        each a second's wait (or three, or seven) for the probe behind it.
        """
        while True:
            accepted = 0
            while accepted < ACCEPT_BATCH:
                try:
                    if accepted == 0:  # waits for one
                        sock, _ = await self._loop.sock_accept(self._socket)
                    else:  # takes what is queued already
                        sock, _ = self._socket.accept()
                except BlockingIOError:
                    break
                except (ConnectionAbortedError, InterruptedError):
                    continue  # gone before it was accepted
                except OSError as exc:  # out of descriptors or buffers: wait a moment
                    self._note_accept_failure(exc)
                    await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                    break
                accepted += 1
                self._take(sock)
            if accepted == ACCEPT_BATCH:
                self._flooded_until = time.monotonic() + FLOOD_SECONDS
            await asyncio.sleep(0)  # the connections held come first

    def _take(self, sock: socket.socket) -> None:
        """Hold an accepted socket, room made for it, or refuse it at once."""
        if not self._make_room():
            self._note_refusal()
            sock.close()
            return
        self._opening += 1
        task = self._loop.create_task(self._open(sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open(self, sock: socket.socket) -> None:
        """Wrap an accepted socket into streams, then serve it (`_accept`)."""
        streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

        def protocol() -> asyncio.StreamReaderProtocol:
            # With a callback, as asyncio's own server has: `StreamWriter.start_tls`
            # takes the server's side of the handshake only then.
            reader = asyncio.StreamReader(limit=MAX_HEAD_BYTES, loop=self._loop)
            return asyncio.StreamReaderProtocol(
                reader, lambda r, w: streams.append((r, w)), loop=self._loop
            )

        try:
            await self._loop.connect_accepted_socket(protocol, sock)
        except (OSError, asyncio.CancelledError):
            self._opening -= 1  # gone at once, or the server is stopping
            sock.close()
            return
        await self._accept(*streams[0])

    def _note_accept_failure(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._accept_failure_logged >= REFUSAL_LOG_SECONDS:
            log.warning("cannot accept connections", extra={"error": exc.strerror or str(exc)})
            self._accept_failure_logged = now

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection, room having been made for it."""
        connection = _Connection(reader, writer, _client_address(writer))
        connection.task = asyncio.current_task()
        self._opening -= 1
        self._connections[connection] = None
        # Pause (and so wait in drain) whenever anything is left in the process: the
        # kernel's buffer is the only one an answer in progress fills, and it is kept
        # to what the client reads.
        writer.transport.set_write_buffer_limits(high=0)
        sock = writer.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_NOTSENT_LOWAT"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
        graceful = False
        try:
            graceful = await self._serve(connection)
            if graceful and connection.refused:
                writer.close()  # a refusal: no lingering for what a flood still sends
            elif graceful:
                await self._close(connection)
        except _ROUTINE:
            graceful = False  # routine for a server on a network: clients hang up, stall
        except asyncio.CancelledError:
            pass  # the server is stopping: end quietly (asyncio would log a cancelled task)
        finally:
            self._connections.pop(connection, None)
            self._closing.pop(connection, None)
            if not graceful:
                writer.transport.abort()

    async def _close(self, connection: _Connection) -> None:
        """Close after an answer without losing its end: half-close, read what the
        client still sends until it closes too (or `LINGER_SECONDS`), then close."""
        reader, writer = connection.reader, connection.writer
        if writer.transport.is_closing():
            return
        self._mark_closing(connection)
        if writer.can_write_eof():
            writer.write_eof()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LINGER_SECONDS):
                    while await reader.read(READ_BYTES):
                        pass
        writer.close()

    def _mark_closing(self, connection: _Connection) -> None:
        """Its answer is given (or held, a refusal): first in line to make room."""
        if connection.closing_since is None:
            connection.closing_since = time.monotonic()
            self._closing[connection] = None

    def _make_room(self) -> bool:
        """Whether a new connection may be held: below the limit, or once the first in
        line to be closed (`_Connection.eviction_order`) is closed."""
        if len(self._connections) + self._opening < self._max_connections:
            return True
        if self._closing:  # the first in line, without a look at every connection
            oldest = next(iter(self._closing))
        else:
            candidates = [
                (order, c) for c in self._connections if (order := c.eviction_order()) is not None
            ]
            if not candidates:
                return False
            _, oldest = min(candidates, key=lambda pair: pair[0])
        self._connections.pop(oldest, None)
        self._closing.pop(oldest, None)
        oldest.writer.transport.abort()
        if oldest.task is not None:
            # Wherever it waits (a read, a drain, a check or render not started),
            # it ends now; a check not started never runs.
            oldest.task.cancel()
        self._note_refusal()
        return True

    def _note_refusal(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged >= REFUSAL_LOG_SECONDS:
            log.warning(
                "connection limit reached: stalled connections closed or new ones refused",
                extra={"count": self._refused, "limit": self._max_connections},
            )
            self._refused = 0
            self._refusal_logged = now

    async def _serve(self, connection: _Connection) -> bool:
        """Answer requests until the connection ends; True when it may close gracefully."""
        writer = connection.writer
        web = self._web
        deadline = time.monotonic() + self._header_timeout
        if web.ssl_context is not None:
            await writer.start_tls(web.ssl_context, ssl_handshake_timeout=self._header_timeout)
            ssl_object = writer.get_extra_info("ssl_object")
            if not web.client_allowed(ssl_object.getpeercert() if ssl_object else None):
                log.debug("client certificate not among client_allowed_sans")
                return False
            writer.transport.set_write_buffer_limits(high=0)
        peer = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        first = True
        while True:
            connection.waiting = True
            connection.since = time.monotonic()
            request = await self._read_request(peer, connection, deadline if first else None)
            first = False
            if request is None:
                return peer.our_state is h11.MUST_CLOSE
            connection.waiting = False
            admission = self._app.admit(request)
            response = admission.answer
            if response is None and admission.check is not None:
                response = await self._authenticate(connection, admission.check)
            if response is None:
                response = await self._render(connection, admission)
            if response.close:
                self._mark_closing(connection)
                if self._refusal_delay > 0 and time.monotonic() < self._flooded_until:
                    await asyncio.sleep(self._refusal_delay)  # see REFUSAL_DELAY
            connection.writing_since = time.monotonic()
            connection.refused = response.close
            await self._send(peer, connection, response, head=request.method == "HEAD")
            connection.writing_since = None
            if peer.our_state is not h11.DONE or peer.their_state is not h11.DONE:
                return peer.our_state in (h11.DONE, h11.MUST_CLOSE)
            peer.start_next_cycle()

    async def _authenticate(self, connection: _Connection, check: PasswordCheck) -> Response | None:
        """Run a password check in the check pool: None when it passes, else the
        refusal. The connection may be closed meanwhile to make room."""
        connection.authenticating_since = time.monotonic()
        try:
            return await self._loop.run_in_executor(self._checks, check.run)
        finally:
            connection.authenticating_since = None
            check.discard()  # its slot back, when it never started

    async def _render(self, connection: _Connection, admission: Admission) -> Response:
        """Render in the pool; the connection may be closed while the render waits."""
        connection.queued_since = time.monotonic()

        def render() -> Response:
            connection.queued_since = None
            return self._app.render(admission)

        try:
            return await self._loop.run_in_executor(self._pool, render)
        finally:
            connection.queued_since = None

    async def _read_request(
        self, peer: h11.Connection, connection: _Connection, deadline: float | None
    ) -> Request | None:
        """The next request, or None when the client is gone, too slow or malformed
        (answered with 4xx first where HTTP allows)."""
        reader = connection.reader
        request: h11.Request | None = None
        body = 0
        while True:
            try:
                event = peer.next_event()
            except h11.RemoteProtocolError as exc:
                await self._refuse(peer, connection, exc.error_status_hint)
                return None
            if event is h11.NEED_DATA:
                if deadline is None and request is None:
                    # Idle between requests: wait long for a first byte, then briefly.
                    data = await asyncio.wait_for(reader.read(READ_BYTES), self._idle_timeout)
                    deadline = time.monotonic() + self._header_timeout
                    connection.since = time.monotonic()
                else:
                    assert deadline is not None
                    data = await asyncio.wait_for(
                        reader.read(READ_BYTES), max(deadline - time.monotonic(), 0)
                    )
                peer.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += len(event.data)
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                return _request(request, connection.client)
            else:
                return None  # the client hung up, or h11 paused on a pipelined request
            refusal = _too_big(request, body) if request is not None else None
            if refusal is not None:
                await self._refuse(peer, connection, refusal)
                return None

    async def _refuse(self, peer: h11.Connection, connection: _Connection, status: int) -> None:
        if peer.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        message = {
            413: b"request body too large\n",
            414: b"request target too long\n",
            431: b"request headers too large\n",
        }.get(status, b"bad request\n")
        response = reply(status, message, headers=[("Connection", "close")])
        with contextlib.suppress(h11.LocalProtocolError):
            await self._send(peer, connection, response, head=False)

    async def _send(
        self, peer: h11.Connection, connection: _Connection, response: Response, *, head: bool
    ) -> None:
        writer = connection.writer
        headers = list(response.headers)
        if response.length is not None:  # else h11 sends the body in chunks
            headers.append(("Content-Length", str(response.length)))
        if response.close:
            headers.append(("Connection", "close"))
        # The head leaves with the first piece of the body: one send for a small answer
        # (a refusal costs a flood one system call less).
        pending = peer.send(
            h11.Response(
                status_code=response.status, headers=headers, reason=response.reason.encode()
            )
        )
        if not head:
            async for chunk in self._chunks(response):
                for data in peer.send_with_data_passthrough(h11.Data(data=chunk)) or ():
                    view = memoryview(data)
                    for start in range(0, len(view), SEND_BYTES):
                        piece = view[start : start + SEND_BYTES]
                        if pending:
                            writer.write(pending + piece)
                            pending = b""
                        else:
                            writer.write(piece)  # never copied here
                        await self._drain(connection)
        writer.write(pending + peer.send(h11.EndOfMessage()))
        await self._drain(connection)

    async def _drain(self, connection: _Connection) -> None:
        """Wait until what was written has left the process (at once, usually)."""
        writer = connection.writer
        transport = writer.transport
        if transport.get_write_buffer_size() == 0 and not transport.is_closing():
            return
        connection.blocked_since = time.monotonic()
        try:
            async with asyncio.timeout(self._write_timeout):
                await writer.drain()
        finally:
            connection.blocked_since = None

    async def _chunks(self, response: Response) -> AsyncIterator[bytes]:
        body: Iterable[bytes] = response.body
        if not response.costly:
            for chunk in body:
                yield chunk
            return
        # CPU work (inflating plain /metrics): in the pool, a group at a time, and only
        # once the client has taken the last one.
        source = iter(body)
        while chunk := await self._loop.run_in_executor(self._pool, _next, source):
            yield chunk


def _next(source: Iterator[bytes]) -> bytes:
    """The next chunk, or b"" at the end (an empty chunk is never produced)."""
    for chunk in source:
        if chunk:
            return chunk
    return b""


def _client_address(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def _too_big(request: h11.Request, body: int) -> int | None:
    """The status refusing a request head or body over the bounds, or None."""
    if len(request.target) > MAX_TARGET_BYTES:
        return http.HTTPStatus.REQUEST_URI_TOO_LONG
    size = sum(len(k) + len(v) for k, v in request.headers)
    if len(request.headers) > MAX_HEADERS or size > MAX_HEAD_BYTES:
        return http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    if body > MAX_HEAD_BYTES:
        return http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    return None


def _request(request: h11.Request, client: str) -> Request:
    target = urlsplit(request.target.decode("latin-1"))
    return Request(
        method=request.method.decode("latin-1"),
        path=unquote(target.path, errors="replace") or "/",
        headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers},
        query=target.query,
        client=client,
    )

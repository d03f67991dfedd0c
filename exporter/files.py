"""Files read with a bound in time and size: a hung mount never holds a thread that matters.

A secret file lives on a mount the exporter does not control (a Kubernetes secret
volume, NFS, a FUSE secrets driver). When that mount hangs, `open()`, `stat()` or
`read()` block in the kernel for as long as it does, and no timeout of Python's can
interrupt them. Measured before this module: a token file replaced by a FIFO with no
writer blocked the poll that read it inside a lock, the log redactor waited on that
lock, every other log call waited behind the logging handler: 0 log lines from then
on, and SIGTERM ignored.

So every read of a file the operator may swap at run time (the API token files, the
web config and the TLS files it names) runs here: in a daemon thread of its own, waited
for at most `READ_SECONDS`. A path that is not a regular file (a FIFO, a device, a
directory) is refused without blocking (`O_NONBLOCK` on open, `fstat` before reading);
a read that does not end in time is refused too and left to end on its own, and while
it hangs no second read of the same path is started: one stuck thread per path, never
one per request.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

#: How long a read may take. A secret file is read in microseconds; a mount that has
#: not answered in this long is hung, and a poll or a reload must not wait on it.
READ_SECONDS = 2.0


class FileUnreadable(Exception):
    """A file that could not be read, in one line naming it (never its content)."""


class _Flight:
    """One read in progress, shared by every caller that asks for the same path."""

    def __init__(self, work: Callable[[], object]) -> None:
        self.work = work
        self.done = threading.Event()
        self.result: object = None
        self.failure: BaseException | None = None


_flights: dict[tuple[str, str], _Flight] = {}
_flights_lock = threading.Lock()


def read_file(path: Path, *, max_bytes: int, timeout: float = READ_SECONDS) -> bytes:
    """The regular file `path`, read within `timeout` seconds; one over `max_bytes` is
    refused (`FileUnreadable`) after reading one byte more than that, never all of it."""
    result = _bounded(path, f"read:{max_bytes}", lambda: _read(path, max_bytes), timeout)
    assert isinstance(result, bytes)
    if len(result) > max_bytes:
        raise FileUnreadable(f"{path}: larger than {max_bytes} bytes")
    return result


def _bounded(path: Path, kind: str, work: Callable[[], object], timeout: float) -> object:
    """`work()` in a thread of its own, waited for `timeout` seconds. Callers that ask
    for the same path while a read is in progress share it (so a hung path holds one
    thread, whatever the number of callers); when it does not end in time, each of them
    gets `FileUnreadable`, and the next caller after it ends starts a fresh read."""
    key = (str(path), kind)
    with _flights_lock:
        flight = _flights.get(key)
        if flight is None:
            flight = _flights[key] = _Flight(work)
            threading.Thread(target=_fly, args=(key, flight), name="read-file", daemon=True).start()
    if not flight.done.wait(timeout):
        raise FileUnreadable(f"{path}: not read within {timeout:g}s (a hung mount?)")
    exc = flight.failure
    if exc is None:
        return flight.result
    if isinstance(exc, FileUnreadable):
        raise FileUnreadable(str(exc))
    if isinstance(exc, FileNotFoundError):
        raise FileUnreadable(f"{path}: no such file")
    if isinstance(exc, IsADirectoryError):
        raise FileUnreadable(f"{path}: not a regular file")
    if isinstance(exc, OSError):
        raise FileUnreadable(f"{path}: cannot read: {exc.strerror}")
    raise exc


def _fly(key: tuple[str, str], flight: _Flight) -> None:
    try:
        flight.result = flight.work()
    except BaseException as exc:  # handed to every caller, whatever it is
        flight.failure = exc
    finally:
        with _flights_lock:
            _flights.pop(key, None)
        flight.done.set()


def _read(path: Path, max_bytes: int) -> bytes:
    # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for
    # one; the fstat below then refuses it. O_NOCTTY: a terminal never becomes ours.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileUnreadable(f"{path}: not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size <= max_bytes:
            chunk = os.read(fd, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)

"""Ports: bind port 0 and read it back; pick-and-retry only for what cannot.

Everything that can bind port 0 must. The server binds port 0 itself and reports the
port the kernel gave it (a Python server in its `server_address`, the exporter in its
"listening" log line, read with `listening_port`), and whoever needs the port reads it
back. Then nothing can take the port between a pick and the bind: a port picked free
and bound later is a race that parallel tests and benchmarks lose now and then, with a
failure that says nothing about the code under test.

What cannot is an old build of the exporter, measured by `python -m benchmarks
--compare`: it neither accepted port 0 nor said where it listened. For it alone,
`start_on_free_port` picks a port the kernel says is free now and starts the program
on it; when the bind then clashes (something took the port in between), it picks
another and starts again. Nothing else may use it.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: The port in the exporter's "listening" line, logfmt or JSON.
_LISTENING = re.compile(r'msg"?[=:] ?"?listening"?.*?address"?[=:] ?"?[\w.:\[\]]*:(\d+)')


def listening_port(output: str) -> int | None:
    """The port the exporter bound, from its "listening" line (info level) in `output`;
    None while it has not said."""
    match = _LISTENING.search(output)
    return int(match.group(1)) if match else None


class PortTaken(Exception):
    """Raised by a `start_on_free_port` start function whose program found its port
    taken: another port is picked and the program started again."""


def start_on_free_port(
    start: Callable[[int], T], *, host: str = "127.0.0.1", attempts: int = 5
) -> tuple[int, T]:
    """`start(port)` on a port free when picked, again on another while it raises
    `PortTaken`: for a program that cannot bind port 0 and report it. The port and
    what `start` returned."""
    for attempt in range(1, attempts + 1):
        port = _pick(host)
        try:
            return port, start(port)
        except PortTaken:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _pick(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])

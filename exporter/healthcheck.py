"""`latitudesh-exporter healthcheck`: the container image's HEALTHCHECK.

A HEALTHCHECK runs beside the exporter and cannot see its flags; a fixed
`http://127.0.0.1:10067/healthz` turned the container unhealthy as soon as an operator
changed the listen address or turned TLS on. So the check reads the running exporter's
own command line (`/proc/PID/cmdline`: PID 1 in a container, else the oldest
`latitudesh-exporter` process), takes the address from its `--web.listen-address` (the
ports it really listens on, read from `/proc`, when that says 0) and the scheme from its
`--web.config.file` (https when the file has `tls_server_config`), and asks `/healthz`.

Over TLS the server's certificate is not verified: the check talks to its own host's
loopback, sends nothing secret (`/healthz` needs no credentials) and only reads the
status. A server that demands client certificates cannot be probed this way: give the
check a URL of its own (`--url`) or use the orchestrator's probes.
"""

from __future__ import annotations

import http.client
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from exporter.files import FileUnreadable, read_file

PROGRAM = "latitudesh-exporter"
#: The whole check ends within this, inside Docker's default HEALTHCHECK timeout.
TIMEOUT_SECONDS = 4.0
PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class Target:
    #: The URLs to ask, in order: one, or each port the process listens on when its
    #: flag said 0 (demo mode listens twice: the simulated API, then the metrics).
    urls: tuple[str, ...]


def exporter_arguments(pid: int | None = None, proc: Path = PROC) -> tuple[int, list[str]] | None:
    """(pid, the flags) of the running exporter: `pid`, PID 1, or the oldest process
    whose command line runs it (never this check itself)."""
    candidates = [pid] if pid is not None else [1, *sorted(_pids(proc))]
    for candidate in candidates:
        if candidate == os.getpid():
            continue
        try:
            raw = (proc / str(candidate) / "cmdline").read_bytes()
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
        for index, word in enumerate(words):
            module = word == "exporter" and index > 0 and words[index - 1] == "-m"
            if Path(word).name == PROGRAM or module:
                rest = words[index + 1 :]
                if rest[:1] in (["healthcheck"], ["hash-password"]):
                    break  # a check (or a hash) like this one, not the exporter
                return candidate, rest
    return None


def target(pid: int, listen: str, web_config: Path | None, proc: Path = PROC) -> Target:
    """The /healthz URL of the exporter `pid` started with these flags."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):  # noqa: S104 (a wildcard address, read, not bound)
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    number = int(port) if port.isdigit() else 0
    ports = [number] if number else listening_ports(pid, proc) or [0]
    scheme = "https" if web_config is not None and _has_tls(web_config) else "http"
    shown = f"[{host}]" if ":" in host else host
    return Target(tuple(f"{scheme}://{shown}:{p}/healthz" for p in ports))


def probe_any(urls: tuple[str, ...], timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    """The first URL that answers 200, else what the last one said."""
    said = "no URL to ask"
    for url in urls:
        healthy, said = probe(url, timeout / len(urls))
        if healthy:
            return True, said
    return False, said


def probe(url: str, timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    """(healthy, what happened in a few words)."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # its own loopback, nothing secret sent
        connection = http.client.HTTPSConnection(host, parts.port, timeout=timeout, context=context)
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=timeout)
    try:
        connection.request("GET", parts.path or "/healthz")
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{url}: {type(exc).__name__}: {exc}"
    finally:
        connection.close()
    return status == 200, f"{url}: HTTP {status}"


def listening_ports(pid: int, proc: Path = PROC) -> list[int]:
    """The TCP ports process `pid` listens on, from its sockets' inodes in /proc."""
    try:
        inodes = {
            link.removeprefix("socket:[").removesuffix("]")
            for fd in (proc / str(pid) / "fd").iterdir()
            if (link := os.readlink(fd)).startswith("socket:[")
        }
    except OSError:
        return []
    ports = []
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / str(pid) / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(set(ports), key=ports.index)


def _has_tls(path: Path) -> bool:
    try:
        content = yaml.safe_load(read_file(path, max_bytes=1024 * 1024).decode("utf-8"))
    except (FileUnreadable, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(content, dict) and content.get("tls_server_config") is not None


def _pids(proc: Path) -> list[int]:
    return [int(p.name) for p in proc.iterdir() if p.name.isdigit()]

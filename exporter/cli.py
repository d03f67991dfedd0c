"""Command line: the flags, and how each way a run ends becomes an exit code.

`main` parses the flags, sets up logging, has `wiring` read and check every file, then
hands the run to `checkconfig` (`--check-config`), `daemon.run_once` (`--once`) or
`daemon.serve`. Exit codes (`exitcodes`): 0 on a clean stop, 1 when `--once` saw a
failed poll, 2 for a bad flag, config or rejected key (one line on stderr, no
traceback), 130 when `--once` is interrupted.
"""

from __future__ import annotations

import argparse
import getpass
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from exporter import __version__, checkconfig, daemon, exitcodes, healthcheck
from exporter.config import DEFAULT_CONFIG_FILE, ConfigError
from exporter.logs import Redactor, setup_logging
from exporter.webconfig import (
    DEFAULT_BCRYPT_COST,
    MAX_BCRYPT_COST,
    MIN_BCRYPT_COST,
    WebConfigError,
    make_bcrypt_hash,
)
from exporter.wiring import DEFAULT_LISTEN, Flags, build_app, configure


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, as every other config error: usage text is one --help away.
        self.exit(exitcodes.CONFIG, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="latitudesh-exporter",
        description="Prometheus exporter for the billing usage of Latitude.sh projects.",
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        type=Path,
        default=None,
        help=f"YAML config file (default: {DEFAULT_CONFIG_FILE} if present)",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        help=f"address to serve metrics on (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        default="/metrics",
        help="path of the metrics (default /metrics)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config",
        type=Path,
        default=None,
        help="exporter-toolkit web config: TLS and basic auth",
    )
    parser.add_argument(
        "--log.level", dest="log_level", default="info", choices=("debug", "info", "warn", "error")
    )
    parser.add_argument(
        "--log.format", dest="log_format", default="logfmt", choices=("logfmt", "json")
    )
    parser.add_argument(
        "--runtime.tuning",
        dest="runtime_tuning",
        default="on",
        choices=("on", "off"),
        help="hold glibc to two malloc arenas and trim its heap each minute (the daemon)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="poll a built-in simulated Latitude.sh API; needs no token",
    )
    parser.add_argument(
        "--once", action="store_true", help="poll every project once, print the metrics and exit"
    )
    parser.add_argument(
        "--check-config",
        dest="check_config",
        action="store_true",
        help="validate the config and web config, check each key with one "
        "request, print a summary and exit",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"latitudesh-exporter {__version__} (python {platform.python_version()})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["hash-password"]:
            return hash_password(args[1:])
        if args[:1] == ["healthcheck"]:
            return check_health(args[1:])
        return run(args)
    except BrokenPipeError:
        # The reader went away (`--once | head -1`): end quietly, as other programs
        # do, and keep the interpreter's last flush of stdout from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.BROKEN_PIPE


def run(args: Sequence[str]) -> int:
    """The exporter: `--check-config`, `--once` or the daemon."""
    flags = Flags(**vars(build_parser().parse_args(args)))
    redactor = Redactor()
    setup_logging(flags.log_level, flags.log_format, redactor)
    try:
        setup = configure(flags, redactor)
    except (ConfigError, WebConfigError) as exc:
        print(f"latitudesh-exporter: config error: {redactor(str(exc))}", file=sys.stderr)
        return exitcodes.CONFIG
    if flags.check_config:
        try:
            return checkconfig.report(flags, setup, redactor)
        finally:
            if setup.demo is not None:
                setup.demo.stop()
    app = build_app(setup)
    if flags.once:
        return daemon.run_once(app)
    return daemon.serve(app, setup, flags)


def hash_password(args: Sequence[str]) -> int:
    """`hash-password`: a bcrypt hash for `basic_auth_users`, without htpasswd."""
    parser = _Parser(
        prog="latitudesh-exporter hash-password",
        description="Print a bcrypt hash of a password, for basic_auth_users in the web "
        "config. Asks twice without echo on a terminal; otherwise reads one line from "
        "standard input (echo -n ... | latitudesh-exporter hash-password).",
    )
    parser.add_argument(
        "--cost",
        type=int,
        default=DEFAULT_BCRYPT_COST,
        choices=range(MIN_BCRYPT_COST, MAX_BCRYPT_COST + 1),
        metavar=f"{MIN_BCRYPT_COST}..{MAX_BCRYPT_COST}",
        help=f"bcrypt cost (default {DEFAULT_BCRYPT_COST}: about 50 ms a check, once per "
        "client: verified credentials are remembered)",
    )
    cost = parser.parse_args(args).cost
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != password:
            print("latitudesh-exporter: the two passwords differ", file=sys.stderr)
            return exitcodes.CONFIG
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        print(make_bcrypt_hash(password.encode(), cost))
    except ValueError as exc:
        print(f"latitudesh-exporter: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    return exitcodes.OK


def check_health(args: Sequence[str]) -> int:
    """`healthcheck`: the image's HEALTHCHECK (see `exporter.healthcheck`)."""
    parser = _Parser(
        prog="latitudesh-exporter healthcheck",
        description="Ask /healthz of the running exporter, at the address and scheme its "
        "own flags say; exit 0 when it answers 200.",
    )
    parser.add_argument("--url", help="probe this URL instead")
    parser.add_argument("--pid", type=int, help="the exporter's process (default: PID 1)")
    given = parser.parse_args(args)
    urls: tuple[str, ...] = (given.url,) if given.url else ()
    if not urls:
        found = healthcheck.exporter_arguments(given.pid)
        if found is None:
            print("healthcheck: no running latitudesh-exporter found", file=sys.stderr)
            return exitcodes.FAILED_POLL
        pid, words = found
        flags, _ = build_parser().parse_known_args(words)
        urls = healthcheck.target(pid, flags.listen, flags.web_config).urls
    healthy, said = healthcheck.probe_any(urls)
    print(f"healthcheck: {said}")
    return exitcodes.OK if healthy else exitcodes.FAILED_POLL

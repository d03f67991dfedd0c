"""Command line: the subcommands, and how each way a run ends becomes an exit code.

`main` dispatches: `run` parses the flags, sets up logging, has `startup` read and
check every file, then hands the run to `checkconfig` (`--check-config`),
`daemon.run_once` (`--once`) or `daemon.serve`. Exit codes (`exitcodes`): 0 on a clean
stop, 1 when `--once` saw a failed poll, 2 for a bad flag, config or rejected key (one
line on stderr, no traceback), 130 when `--once` is interrupted.

Each path imports what it needs when it runs, not at the top: the running parts' libraries
(httpx, APScheduler, prometheus_client, the models) cost 0.7 CPU-s of imports. The image's
HEALTHCHECK runs `healthcheck` every 30 s and needs 0.06 s of them; a config error is
told after the config's 0.3 s, before the rest loads (benchmarks/RESULTS.md §18).
"""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Sequence

from exporter import exitcodes, healthcheck
from exporter.flags import Flags, Parser, build_parser


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
    from exporter.config import ConfigError  # noqa: PLC0415 (deferred: see the docstring)
    from exporter.logs import Redactor, setup_logging  # noqa: PLC0415
    from exporter.startup import configure  # noqa: PLC0415
    from exporter.webconfig import WebConfigError  # noqa: PLC0415

    redactor = Redactor()
    setup_logging(flags.log_level, flags.log_format, redactor)
    try:
        setup = configure(flags, redactor)
    except (ConfigError, WebConfigError) as exc:
        print(f"latitudesh-exporter: config error: {redactor(str(exc))}", file=sys.stderr)
        return exitcodes.CONFIG
    if flags.check_config:
        from exporter import checkconfig  # noqa: PLC0415

        try:
            return checkconfig.report(flags, setup, redactor)
        finally:
            if setup.demo is not None:
                setup.demo.stop()
    from exporter import daemon  # noqa: PLC0415
    from exporter.wiring import build_app  # noqa: PLC0415

    app = build_app(setup)
    if flags.once:
        return daemon.run_once(app)
    return daemon.serve(app, setup, flags)


def hash_password(args: Sequence[str]) -> int:
    """`hash-password`: a bcrypt hash for `basic_auth_users`, without htpasswd."""
    from exporter.webconfig import (  # noqa: PLC0415 (deferred: see the docstring)
        DEFAULT_BCRYPT_COST,
        MAX_BCRYPT_COST,
        MIN_BCRYPT_COST,
        make_bcrypt_hash,
    )

    parser = Parser(
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
    parser = Parser(
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

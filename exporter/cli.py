"""Command line: the flags, and how each way a run ends becomes an exit code.

`main` parses the flags, sets up logging, has `wiring` read and check every file, then
hands the run to `checkconfig` (`--check-config`), `daemon.run_once` (`--once`) or
`daemon.serve`. Exit codes (`exitcodes`): 0 on a clean stop, 1 when `--once` saw a
failed poll, 2 for a bad flag, config or rejected key (one line on stderr, no
traceback), 130 when `--once` is interrupted.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from exporter import __version__, checkconfig, daemon, exitcodes
from exporter.config import DEFAULT_CONFIG_FILE, ConfigError
from exporter.logs import Redactor, setup_logging
from exporter.webconfig import WebConfigError
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
        help="tune CPython's garbage collector, switch interval and malloc for the daemon",
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
    flags = Flags(**vars(build_parser().parse_args(argv)))
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

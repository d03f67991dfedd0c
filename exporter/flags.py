"""The command line's flags: their names, defaults and help, parsed into `Flags`.

Apart from the rest of the entry point because it is what every subcommand reads first
and it loads nothing heavy (see `cli`).
"""

from __future__ import annotations

import argparse
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from exporter import __version__, exitcodes

#: Where the metrics are served: the port every exporter of this kind registers.
DEFAULT_LISTEN = ":10067"
#: The config file read when `--config.file` is not given (and only if it exists).
DEFAULT_CONFIG_FILE = Path("config.yaml")


@dataclass(frozen=True, slots=True)
class Flags:
    """The command line's flags (see `build_parser`)."""

    config_file: Path | None = None
    listen: str = DEFAULT_LISTEN
    telemetry_path: str = "/metrics"
    web_config: Path | None = None
    log_level: str = "info"
    log_format: str = "logfmt"
    runtime_tuning: str = "on"
    demo: bool = False
    once: bool = False
    check_config: bool = False


class Parser(argparse.ArgumentParser):
    """An `argparse` parser whose errors are one line and exit 2, as a config error's."""

    def error(self, message: str) -> NoReturn:
        # One line, as every other config error: usage text is one --help away.
        self.exit(exitcodes.CONFIG, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The exporter's own flags (the subcommands build theirs in `cli`)."""
    parser = Parser(
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

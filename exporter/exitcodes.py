"""The process's exit codes, each defined once: what a script or an orchestrator reads."""

from __future__ import annotations

#: A clean stop, or `--once` / `--check-config` with everything fine.
OK = 0
#: `--once` saw a failed poll; `--check-config` could not check a key (rate limited,
#: timed out, unreachable): nothing wrong with the config itself.
FAILED_POLL = 1
#: A bad flag, config or web config, or a key the API refused: one line on stderr.
CONFIG = 2
#: `--once` interrupted by Ctrl-C, as shells report SIGINT.
INTERRUPTED = 130
#: The reader of standard output went away (`--once | head`), as a shell reports a
#: program ended by SIGPIPE; nothing is printed.
BROKEN_PIPE = 141

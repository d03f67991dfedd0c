"""The daemon: serve (SIGTERM/SIGINT stop, SIGHUP reload), or poll once and print.

Signals reach the main thread through `signals.Inbox`; it alone acts on them. A stop
waits for polls in flight up to `wiring.SHUTDOWN_SECONDS`, and a thread ends the
process `EXIT_DEADLINE_SECONDS` after SIGTERM whatever is stuck (the README promises
an exit within 5 s). Exit codes are `exitcodes`'.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

from exporter import __version__, exitcodes, runtime
from exporter.budgets import from_settings
from exporter.config import ConfigError, Settings, load_settings
from exporter.flags import DEFAULT_CONFIG_FILE, Flags
from exporter.httpserver import HttpServer
from exporter.signals import Inbox
from exporter.startup import Setup
from exporter.web import WebApp
from exporter.webconfig import WebConfigError, WebSettings, load_web_config
from exporter.wiring import App

log = logging.getLogger("exporter")

#: From SIGTERM to the process's end, whatever is stuck: under the README's 5 s.
EXIT_DEADLINE_SECONDS = 4.5
#: How often `--once` redraws its progress line on a terminal.
PROGRESS_SECONDS = 0.5


def run_once(app: App) -> int:
    """Poll every team at once; print the exposition. Ctrl-C stops at once (130).

    SIGINT goes to an `Inbox` installed before any poll starts: a
    KeyboardInterrupt could land anywhere in the main thread (starting a thread, say),
    outside any `try`, and the exit would then wait for the polls in flight."""
    results: list[bool] = []
    done = threading.Event()
    inbox = Inbox((signal.SIGINT,))

    def run() -> None:
        outcomes: list[bool] = []
        threads = [
            threading.Thread(target=lambda p=p: outcomes.append(p.refresh()), daemon=True)
            for p in app.pollers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results.extend(outcomes)
        done.set()
        inbox.wake()

    threading.Thread(target=run, name="once", daemon=True).start()
    progress = threading.Thread(target=_progress, args=(app, done), name="progress", daemon=True)
    if sys.stderr.isatty():
        progress.start()
    while not done.is_set():
        if inbox.wait():
            log.warning("interrupted")
            _exit_now(exitcodes.INTERRUPTED)
    if progress.is_alive():
        progress.join(PROGRESS_SECONDS * 4)  # its last line ends before the metrics
    body = app.exposition.render()
    for chunk in body.chunks:
        sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    app.close()
    return exitcodes.OK if results and all(results) else exitcodes.FAILED_POLL


def _progress(app: App, done: threading.Event, every: float = PROGRESS_SECONDS) -> None:
    """`--once` on a terminal: how many projects have an outcome, on one line of stderr
    redrawn in place (at the budget, 300 projects take minutes). Nothing when piped."""
    shown = ""
    finished = False
    while not finished:
        finished = done.wait(every)
        projects = app.store.view().projects
        line = f"polled {sum(p.polled for p in projects)} of {len(projects)} projects"
        if line != shown:
            sys.stderr.write(f"\r{line}")
            sys.stderr.flush()
            shown = line
    sys.stderr.write("\n")


def _exit_now(code: int) -> NoReturn:
    """Exit without waiting for requests in flight (worker threads are joined at exit)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve(app: App, setup: Setup, flags: Flags) -> int:
    """Serve until SIGTERM or SIGINT: the HTTP server, every team's schedule, the
    watchdog and the housekeeping; SIGHUP reloads. The exit code."""
    if flags.runtime_tuning == "on":
        runtime.tune(app.scheduler)
    runtime.raise_file_limit()
    host, port = setup.listen
    web_app = WebApp(
        app.exposition,
        app.store.view,
        downloads=app.downloads,
        telemetry_path=flags.telemetry_path,
        web=setup.web,
    )
    try:
        app.server = HttpServer(web_app, host, port, web=setup.web)
    except OSError as exc:
        log.error("cannot listen", extra={"address": flags.listen, "error": exc.strerror})
        app.close()
        return exitcodes.CONFIG

    reloader = Reloader(lambda: reload(app, web_app, flags, setup), app.stop)
    inbox = Inbox((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    app.server.start()
    log.info(
        "listening",
        extra={
            "address": f"{host}:{app.server.port}",
            "telemetry_path": flags.telemetry_path,
            "version": __version__,
            "tls": setup.web.ssl_context is not None,
            "basic_auth": bool(setup.web.users),
            "demo": bool(app.demo),
            "teams": len(app.pollers),
        },
    )
    if app.demo is not None:
        log.info(
            "demo mode: polling the built-in simulated Latitude.sh API", extra={"api": app.demo.url}
        )
    reloader.start()
    app.state.start()
    for schedule in app.schedules:
        schedule.start()
    app.watchdog.start()
    app.scheduler.start()
    while not app.stop.is_set():
        for received in inbox.wait():
            if received == signal.SIGHUP:
                reloader.request()
            elif not app.stop.is_set():
                _exit_by(EXIT_DEADLINE_SECONDS)
                log.info("shutting down", extra={"signal": received.name})
                app.stop.set()
    reloader.request()  # wakes the reload thread, which sees the stop and ends
    idle = app.close()
    log.info("stopped", extra={"clean": idle})
    _ignore_signals()
    if not idle:
        # A request stuck in a socket read ends at its deadline; don't let it hold
        # the exit past the orchestrator's grace period.
        _exit_now(exitcodes.OK)
    return exitcodes.OK


#: Signals whose default action ends the process.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _ignore_signals() -> None:
    """A clean stop exits 0 whatever arrives now. Python's finalization puts back the
    default action of every signal that has a Python handler (which for SIGHUP, SIGTERM
    and SIGINT ends the process: a SIGHUP during shutdown made a clean stop exit 129),
    but leaves ignored signals ignored."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _exit_by(seconds: float) -> None:
    """End the process `seconds` from now, whatever holds the shutdown: a thread of its
    own that takes no lock (a log call could wait on a stuck stderr, a read on a hung
    mount). The README promises an exit within 5 s of SIGTERM."""

    def end() -> None:
        time.sleep(seconds)
        os._exit(exitcodes.OK)

    threading.Thread(target=end, name="exit-deadline", daemon=True).start()


class Reloader:
    """SIGHUP's work, one reload at a time in one thread.

    A request that arrives while a reload runs asks for one more after it; any number
    of them ask for just that one. So the newest file always wins (an older, slower
    reload can never finish after a newer one), and a storm of signals costs two
    reloads, not a thread each. Requests are counted under a lock, so none can be
    lost between the thread waking and starting its work; a reload that raises is
    logged and the thread goes on.
    """

    def __init__(self, work: Callable[[], None], stop: threading.Event) -> None:
        self._work = work
        self._stop = stop
        self._asked = 0
        self._served = 0
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="reload", daemon=True)
        #: Reloads done, for tests.
        self.done = 0

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        """Ask for a reload (from the main thread, never from a signal handler)."""
        with self._changed:
            self._asked += 1
            self._changed.notify()

    @property
    def pending(self) -> bool:
        """Whether a reload was asked for and has not started yet."""
        with self._changed:
            return self._asked > self._served

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._asked > self._served or self._stop.is_set())
                if self._stop.is_set():
                    return
                self._served = self._asked  # every request so far is served by this run
            try:
                self._work()
            except Exception:  # a reload must never end reloading
                log.exception("reload failed")
            self.done += 1


def reload(app: App, web_app: WebApp, flags: Flags, setup: Setup) -> None:
    """SIGHUP: read the config's budgets and the web config again, keeping all data
    (token files are read again at every request). A file that cannot be loaded is
    refused, and with it the whole reload: the settings in use stay, one error line
    says why, and `latitudesh_config_last_reload_successful` turns 0. A valid web config
    that drops TLS or every user is applied, with a warning naming what it removes:
    protection is never lowered silently. The config's other sections need a restart
    (a warning says so when they changed)."""
    try:
        settings = _read_config(flags)
        web = load_web_config(flags.web_config) if flags.web_config else None
    except (ConfigError, WebConfigError) as exc:
        app.store.record_reload(successful=False, now=time.time())
        log.error(
            f"{'web config' if isinstance(exc, WebConfigError) else 'config'} refused: "
            "the settings in use are kept",
            extra={
                "error": str(exc),
                "hint": "replace the file atomically (write it elsewhere, then rename it "
                "into place), then send SIGHUP again",
            },
        )
        return
    budgets = setup.budgets
    if settings.budgets or setup.demo is None:  # the demo's own, unless configured
        budgets = from_settings(settings)
    if _other_sections(settings) != _other_sections(setup.settings):
        log.warning(
            "config changes other than budgets apply at the next restart",
            extra={"path": str(flags.config_file or DEFAULT_CONFIG_FILE)},
        )
    app.store.set_budgets(budgets)
    if web is not None:
        removed = protection_removed(app.web, web)
        if removed:
            log.warning(
                "web config reload removes protection",
                extra={"removed": ", ".join(removed), "path": str(flags.web_config)},
            )
        web_app.configure(web)
        if app.server is not None:
            app.server.reload(web)
        app.web = web
    app.store.record_reload(successful=True, now=time.time())
    log.info(
        "reloaded",
        extra={
            "budgets": len(budgets),
            "web_config": web is not None,
            "tls": app.web.ssl_context is not None,
            "basic_auth_users": len(app.web.users),
        },
    )


def _read_config(flags: Flags) -> Settings:
    """The config file (if any, as at start) and the environment, again."""
    return load_settings(flags.config_file or DEFAULT_CONFIG_FILE, explicit=bool(flags.config_file))


def _other_sections(settings: Settings) -> dict[str, object]:
    return settings.model_dump(exclude={"budgets"})


def protection_removed(before: WebSettings, after: WebSettings) -> list[str]:
    """What a new web config takes away of the old one's protection, in words."""
    removed = []
    if before.ssl_context is not None and after.ssl_context is None:
        removed.append("TLS")
    if before.users and not after.users:
        removed.append(f"basic auth (every user: {', '.join(sorted(before.users))})")
    return removed

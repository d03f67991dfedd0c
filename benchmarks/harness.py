"""The benchmarks' processes: the code under test, the daemon and the workloads, run as children.

Everything measures the exporter from outside, as Prometheus and the API see it, so
the same harness measures any version of the code that has the same command line
(`--compare`). Ports: every child that can binds port 0 and says which port it got;
only an old build, which cannot, is started on a picked port (`testing.ports`).
"""

from __future__ import annotations

import gzip
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.measure import cpu_seconds, peak_rss_mib, rss_mib
from benchmarks.modes import Mode
from benchmarks.scraping import PROMETHEUS, fetch
from testing.ports import PortTaken, listening_port, start_on_free_port
from testing.waits import WaitTimeout, wait_for

ROOT = Path(__file__).resolve().parent.parent
OPEN_BUDGET = 100_000.0  # requests per minute: the limiter out of the way


@dataclass(frozen=True, slots=True)
class Code:
    """The code under test: this tree ("after") or the one `--compare` names ("before")."""

    label: str
    root: Path
    #: Binds port 0 and logs the port it got (this tree); an old build does not.
    reports_port: bool = True

    @property
    def commit(self) -> str:
        result = subprocess.run(
            ["git", "-C", str(self.root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        return result.stdout.strip() or "unknown"


AFTER = Code("after", ROOT)


class Child:
    """A process whose stdout is read line by line and whose stderr is its log."""

    def __init__(self, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=self._log_file
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def first_line(self, timeout: float = 600) -> str:
        """The next line it prints (a workload prints its address when ready)."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode().strip() if ready else ""
        if not line:
            raise RuntimeError(f"{self.proc.args!r} printed nothing: {self.tail()}")
        return line

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-800:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log_file.close()


class Bench:
    """Where the run keeps its children, logs and files."""

    def __init__(
        self,
        mode: Mode,
        scratch: Path,
        stack: ExitStack,
        pythons: Sequence[str] = (sys.executable,),
    ) -> None:
        self.mode = mode
        self.scratch = scratch
        self.stack = stack  # what ends with the section: its workloads
        #: the interpreters the tuning section runs the daemon under (`--python`)
        self.pythons = tuple(pythons)
        self._count = 0

    def path(self, name: str) -> Path:
        self._count += 1
        return self.scratch / f"{self._count:03d}-{name}"

    def workload(self, *args: object) -> tuple[Child, str]:
        """A `benchmarks.workloads` process (always this tree's code) and its first line."""
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = Child(
            [sys.executable, "-m", "benchmarks.workloads", *map(str, args)],
            env=env,
            cwd=ROOT,
            log=self.path(f"{args[0]}.log"),
        )
        self.stack.callback(child.stop)
        return child, child.first_line()

    def api(self, projects: int, products: int, latency: float = 0, teams: int = 1) -> str:
        """The URL of a fast fake API (`benchmarks.workloads api`) for this section."""
        return self.workload("api", projects, products, latency, teams)[1]

    @contextmanager
    def daemon(
        self,
        code: Code,
        api: str,
        *,
        rpm: float = OPEN_BUDGET,
        interval: float = 1,
        config: str | None = None,
        env: dict[str, str] | None = None,
        args: Sequence[str] = (),
        python: str = sys.executable,
        module: Sequence[str] = ("exporter",),
    ) -> Iterator[Daemon]:
        """`python -m exporter` of `code` polling `api` with key bench-0 (or `config`).

        `python` and `module` run it otherwise: another interpreter (a venv with the
        exporter's dependencies), `benchmarks.tuned PIECES` (some of the runtime tuning).
        """
        # this tree's root as well for a module of its own (benchmarks.tuned)
        paths = [str(code.root)] if module == ("exporter",) else [str(code.root), str(ROOT)]
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("LATITUDESH_") and k != "MALLOC_ARENA_MAX"
        }
        full_env.update(
            {
                # a state file of its own: no daemon warm-starts from another's answers
                "XDG_STATE_HOME": str(self.path("state-home")),
                "PYTHONPATH": os.pathsep.join(paths),
                "LATITUDESH_AUTH_TOKEN": "bench-0",
                "LATITUDESH_EXPORTER_API__BASE_URL": api,
                "LATITUDESH_EXPORTER_API__REQUESTS_PER_MINUTE": str(rpm),
                "LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS": str(interval),
                **(env or {}),
            }
        )
        extra = list(args)
        if config is not None:
            path = self.path("config.yaml")
            path.write_text(config)
            extra += ["--config.file", str(path)]

        def spawn(port: int) -> Child:
            # info: the "listening" line says the port; an old build is kept at warn
            level = "info" if code.reports_port else "warn"
            argv = [python, "-m", *module, "--web.listen-address", f"127.0.0.1:{port}"]
            argv += ["--log.level", level, *extra]
            return Child(argv, env=full_env, cwd=self.scratch, log=self.path(f"{code.label}.log"))

        if code.reports_port:
            child = spawn(0)
            try:
                port = _reported_port(child)
            except BaseException:
                child.stop()
                raise
        else:
            port, child = start_on_free_port(lambda p: _listening_on(spawn(p), p))
        try:
            # toy sizes are ready in seconds: a minute means something is wrong, say what
            patience = 60.0 if self.mode.name == "smoke" else 900.0
            yield Daemon(child, f"http://127.0.0.1:{port}", patience)
        finally:
            child.stop()


def _reported_port(child: Child) -> int:
    """The port the exporter bound (port 0), from its "listening" line."""

    def said() -> int | None:
        if child.proc.poll() is not None:
            raise RuntimeError(f"exporter exited: {child.tail()}")
        return listening_port(child.log.read_text(errors="replace"))

    port: int = wait_for(said, 120, "the exporter's listening line", step=0.02)
    return port


def _listening_on(child: Child, port: int) -> Child:
    """`child` once it listens on `port`; `PortTaken` when it could not bind it (an old
    build given a picked port that something else took meanwhile)."""
    from exporter.healthcheck import listening_ports

    def listening() -> bool:
        if child.proc.poll() is not None:
            text = child.log.read_text(errors="replace")
            child.stop()
            if "cannot listen" in text or "in use" in text:
                raise PortTaken(port)
            raise RuntimeError(f"exporter exited: {text[-800:]}")
        return port in listening_ports(child.pid)

    try:
        wait_for(listening, 120, f"the exporter to listen on {port}", step=0.02)
    except BaseException:
        if child.proc.poll() is None:
            child.stop()
        raise
    return child


@dataclass
class Daemon:
    child: Child
    url: str
    patience: float = 900.0  # seconds to wait for it to be ready or full, at most

    @property
    def pid(self) -> int:
        return self.child.pid

    def wait_ready(self, timeout: float | None = None, path: str = "/readyz") -> float:
        """Seconds from spawn until `path` says 200 (/healthz: listening)."""

        def ready() -> bool:
            if self.child.proc.poll() is not None:
                raise RuntimeError(f"exporter exited: {self.child.tail()}")
            try:
                return fetch(self.url + path, timeout=5)[0] == 200
            except OSError:
                return False

        self._wait(ready, timeout, f"the exporter's {path}")
        return time.monotonic() - self.child.started

    def wait_full(self, projects: int, timeout: float | None = None) -> tuple[float, bytes]:
        """Seconds from spawn until a scrape shows every project; that scrape's body."""
        self.wait_ready(timeout)
        full: list[bytes] = []

        def every_project() -> bool:
            status, body, _ = fetch(self.url + "/metrics", PROMETHEUS, timeout=300)
            text = gzip.decompress(body) if status == 200 else b""
            if text.count(b"\nlatitudesh_billing_price{") >= projects:
                full.append(body)
            return bool(full)

        self._wait(every_project, timeout, f"all {projects} projects in /metrics")
        return time.monotonic() - self.child.started, full[0]

    def _wait(self, condition: Callable[[], bool], timeout: float | None, what: str) -> None:
        try:
            wait_for(condition, self.patience if timeout is None else timeout, what, step=0.05)
        except WaitTimeout as exc:
            raise WaitTimeout(f"{exc}; the exporter's log ends: {self.child.tail()}") from None

    def rss(self) -> float:
        return rss_mib(self.pid)

    def peak(self) -> float:
        return peak_rss_mib(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def log_count(self, text: str) -> int:
        return self.child.log.read_text(errors="replace").count(text)

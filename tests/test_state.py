"""The state store: real SQLite files, real processes. What it keeps, that it survives a
kill -9 at any moment, that no bad file costs the service, and the warm start."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.state import STATE_ERROR_REASONS, StoredAnswer
from exporter.state.sqlite import SCHEMA_VERSION, SqliteState
from testing.fakeapi import FakeApi, Fault
from testing.waits import wait_for
from tests.conftest import (
    ROOT,
    TOKEN,
    ExporterProcess,
    api_env,
    frozen_account,
    http_get,
    parse_samples,
    require_binary,
    run_cli,
    sample,
)

MAX = 16 * 1024 * 1024


class Statuses:
    """What a backend told the exporter: (up, reason) in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, str | None]] = []

    def __call__(self, up: bool, reason: str | None) -> None:
        self.seen.append((up, reason))

    @property
    def reasons(self) -> list[str]:
        return [r for _, r in self.seen if r is not None]

    @property
    def up(self) -> bool:
        return self.seen[-1][0]


def answer(project: str = "p1", team: str = "default", at: float = 1000.0) -> StoredAnswer:
    body = json.dumps({"data": {"attributes": {"price": 1234, "project": {"id": project}}}})
    return StoredAnswer(team, project, body.encode(), at, "USD", "slug", "Name", "acme")


def backend(path: Path, statuses: Statuses | None = None, **kwargs: Any) -> SqliteState:
    return SqliteState(
        path, on_status=statuses or Statuses(), max_body_bytes=MAX, flush_seconds=0.05, **kwargs
    )


def kept(path: Path) -> list[StoredAnswer]:
    return list(backend(path).load())


# --- what it keeps ---------------------------------------------------------------------


def test_answers_round_trip_newest_per_project_and_forgetting(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = backend(path)
    assert not state.load()
    state.start()
    state.keep(answer("p1", at=1.0))
    state.keep(answer("p1", at=2.0))  # the newest wins
    state.keep(answer("p2", at=3.0))
    state.keep(answer("p3", team="other", at=4.0))
    state.close(timeout=10)
    stored = {(a.team, a.project_id): a for a in kept(path)}
    assert set(stored) == {("default", "p1"), ("default", "p2"), ("other", "p3")}
    assert stored[("default", "p1")] == answer("p1", at=2.0)
    state = backend(path)
    state.load()
    state.start()
    state.keep_only("default", ["p2"])  # p1 gone from the config; other team untouched
    state.close(timeout=10)
    assert {(a.team, a.project_id) for a in kept(path)} == {("default", "p2"), ("other", "p3")}
    assert path.stat().st_mode & 0o777 == 0o600  # billing data: the owner's only


def test_the_file_keeps_no_token_and_no_counter(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = backend(path)
    state.load()
    state.start()
    state.keep(answer())
    state.close(timeout=10)
    with sqlite3.connect(path) as db:
        tables = {
            table: {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        version = db.execute("PRAGMA user_version").fetchone()[0]
    answers = {
        "team",
        "project_id",
        "received_at",
        "currency",
        "slug",
        "name",
        "team_name",
        "body",
        "period_start",
        "summary",
    }
    curves = {"team", "project_id", "period_start", "points"}
    assert tables == {"answers": answers, "closed_periods": answers, "curves": curves}
    assert version == SCHEMA_VERSION
    assert TOKEN.encode() not in path.read_bytes()


def test_a_stored_answer_bigger_than_a_live_one_is_never_kept_or_served(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    statuses = Statuses()
    state = SqliteState(path, on_status=statuses, max_body_bytes=100, flush_seconds=0.05)
    state.load()
    state.start()
    state.keep(answer())  # ~90 bytes: kept
    big = StoredAnswer("default", "big", b"x" * 101, 1.0, "USD")
    state.keep(big)
    state.close(timeout=10)
    assert [a.project_id for a in kept(path)] == ["p1"]
    # one written under a larger cap is not read back under a smaller one
    smaller = SqliteState(path, on_status=statuses, max_body_bytes=50)
    assert not smaller.load()
    assert "invalid_answer" in statuses.reasons


# --- no bad file costs the service -------------------------------------------------------


def moved_aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.bad-*"))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"not a database at all\n" * 100),
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 3]),
    ],
    ids=["garbage", "truncated"],
)
def test_an_unreadable_file_is_moved_aside_and_a_new_one_made(tmp_path: Path, damage: Any) -> None:
    path = tmp_path / "state.db"
    state = backend(path)
    state.load()
    state.start()
    for i in range(200):  # a file of several pages, so that a cut leaves a header
        state.keep(answer(f"p{i}"))
    state.close(timeout=10)
    damage(path)
    before = path.read_bytes()
    statuses = Statuses()
    assert not backend(path, statuses).load()
    (aside,) = moved_aside(path)
    assert aside.read_bytes() == before  # kept, never deleted
    assert statuses.reasons == ["unreadable"] and statuses.up
    state = backend(path, statuses)
    state.load()
    state.start()
    state.keep(answer())
    state.close(timeout=10)
    assert [a.project_id for a in kept(path)] == ["p1"]  # the new file works


def test_a_file_of_a_newer_version_is_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.execute("CREATE TABLE future (x)")
    before = path.read_bytes()
    statuses = Statuses()
    state = backend(path, statuses)
    assert not state.load()
    state.start()
    state.keep(answer())
    state.close(timeout=10)
    assert statuses.seen == [(False, "newer_version")]
    assert path.read_bytes() == before and not moved_aside(path)


def on_private_tmpfs(disk: Path, options: str, code: str) -> str:
    """Python `code` run in a child whose mount namespace is its own, with a tmpfs
    mounted at `disk` with `options`; the last line it printed."""
    unshare = require_binary("unshare")
    script = (
        f"mount -t tmpfs -o {options} tmpfs {disk} && "
        f"exec {sys.executable} -c {shlex.quote(textwrap.dedent(code))}"
    )
    result = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-1]


def test_a_read_only_directory_means_memory_only(tmp_path: Path) -> None:
    """A real read-only file system (a tmpfs mounted ro in a mount namespace of the
    child's own: root writes through any mode bits)."""
    disk = tmp_path / "ro"
    disk.mkdir()
    code = f"""
        import json
        from pathlib import Path
        from exporter.state.sqlite import SqliteState
        seen = []
        state = SqliteState(Path({str(disk / "state.db")!r}), max_body_bytes=10**6,
                            on_status=lambda up, reason: seen.append((up, reason)))
        print(json.dumps([list(state.load()), seen]))
    """
    loaded, seen = json.loads(on_private_tmpfs(disk, "ro", code))
    assert loaded == [] and seen == [[False, "read_only"]]


def test_a_write_lock_held_by_another_process_is_counted_and_the_file_left(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    first = backend(path)
    first.load()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another exporter mid-write, for ever
    try:
        statuses = Statuses()
        state = backend(path, statuses)
        state.load()  # readers are not blocked in WAL mode
        state.start()
        state.keep(answer())
        wait_for(lambda: "locked" in statuses.reasons, message="the write to fail locked")
        assert not statuses.up and not moved_aside(path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_for(lambda: statuses.up, message="the next write to succeed")  # retried
    state.close(timeout=10)
    assert [a.project_id for a in kept(path)] == ["p1"]


def test_a_full_disk_is_counted_and_writing_resumes_when_there_is_room(tmp_path: Path) -> None:
    """A real full disk: a 256 KiB tmpfs in a mount namespace of the child's own. The
    noise is forgotten (`keep_only`) at the worst moment: while the write that failed
    still holds it (from the failure's own report). Before, that write put the noise
    back and retried it for ever: the disk never had room again (seen in a loaded
    CI run, where the forget came late)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    code = f"""
        import json, os
        from pathlib import Path
        from exporter.state import StoredAnswer
        from exporter.state.sqlite import SqliteState
        seen = []
        def on_status(up, reason):
            if reason == "disk_full" and (False, "disk_full") not in seen:
                state.keep_only("t", [])  # room again: the next write forgets the noise
            seen.append((up, reason))
        state = SqliteState(Path({str(disk / "state.db")!r}), max_body_bytes=10**8,
                            on_status=on_status, flush_seconds=0.05)
        state.load()
        state.start()
        for i in range(40):  # 40 x 20 KB of noise: more than the disk holds
            state.keep(StoredAnswer("t", f"p{{i}}", os.urandom(20_000), 1.0, "USD"))
        import time
        deadline = time.monotonic() + 20
        while (False, "disk_full") not in seen and time.monotonic() < deadline:
            time.sleep(0.05)
        while seen[-1] != (True, None) and time.monotonic() < deadline:
            time.sleep(0.05)
        state.close(timeout=10)
        print(json.dumps(seen))
    """
    seen = [tuple(s) for s in json.loads(on_private_tmpfs(disk, "size=256k", code))]
    assert (False, "disk_full") in seen, seen
    assert seen[-1] == (True, None), seen  # written again once there was room


def test_a_kill_9_at_any_moment_never_leaves_a_file_that_fails_to_load(tmp_path: Path) -> None:
    """100 kills while a writer commits answers as fast as it can, four files at a time:
    each file loads cleanly after every kill (WAL, atomic commits). Each writer is a
    fork of a parent that imported the store once (a fresh interpreter per kill cost
    more than the writing)."""
    writers = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from exporter.state import StoredAnswer
        from exporter.state.sqlite import SqliteState
        while sys.stdin.readline():  # a round: fork a writer, say when it is dead
            ready, said = os.pipe()
            pid = os.fork()
            if pid == 0:
                state = SqliteState(Path(sys.argv[1]), on_status=lambda up, reason: None,
                                    max_body_bytes=10**7, flush_seconds=0.001)
                state.load()
                state.start()
                os.write(said, b"w")
                i = 0
                while True:
                    state.keep(StoredAnswer("t", f"p{i % 50}", os.urandom(5000), float(i), "USD"))
                    i += 1
            os.read(ready, 1)
            os.close(ready)
            os.close(said)
            print(pid, flush=True)
            _, status = os.waitpid(pid, 0)
            print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else "exited", flush=True)
        """
    )
    rng = random.Random(1234)
    files = [tmp_path / f"state-{n}.db" for n in range(4)]
    parents = [
        subprocess.Popen(
            [sys.executable, "-c", writers, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        for path in files
    ]
    kills = 0
    try:
        while kills < 100:
            pids = []
            for parent in parents:
                assert parent.stdin is not None and parent.stdout is not None
                parent.stdin.write("go\n")
                parent.stdin.flush()
                pids.append(int(parent.stdout.readline()))  # the writer is writing
            time.sleep(rng.uniform(0.01, 0.2))  # a random moment of the writing
            for parent, pid in zip(parents, pids, strict=True):
                os.kill(pid, signal.SIGKILL)
                assert parent.stdout is not None
                assert parent.stdout.readline() == f"{signal.SIGKILL.value}\n"
                kills += 1
            for path in files:
                statuses = Statuses()
                assert backend(path, statuses).load() is not None
                assert statuses.reasons == [] and statuses.up, (kills, statuses.seen)
                assert not moved_aside(path)
    finally:
        for parent in parents:
            assert parent.stdin is not None
            parent.stdin.close()
            parent.wait(10)
            assert parent.stdout is not None
            parent.stdout.close()
    assert kills == 100


# --- the warm start, against the real exporter ------------------------------------------


def state_env(api: FakeApi, folder: Path, **extra: str) -> dict[str, str]:
    return api_env(api, XDG_STATE_HOME=str(folder), **extra)


def metrics(exporter: ExporterProcess) -> dict[Any, float]:
    status, _, body = http_get(exporter.url + "/metrics")
    assert status == 200
    return parse_samples(body.decode())


@pytest.fixture
def warmed(tmp_path: Path) -> Iterator[tuple[FakeApi, Path]]:
    """A state file holding the demo account's four projects, from a first run."""
    with FakeApi(frozen_account(token=TOKEN)) as api:
        exporter = ExporterProcess([], env=state_env(api, tmp_path), cwd=tmp_path, tmp=tmp_path)
        try:
            exporter.wait_ready()
            wait_for(
                lambda: "warm start" in exporter.output() and len(kept(state_file(tmp_path))) == 4,
                timeout=30,
                message="every answer written",
            )
        finally:
            assert exporter.stop() == 0
        yield api, tmp_path


def state_file(folder: Path) -> Path:
    return folder / "latitudesh-exporter" / "state.db"


@pytest.mark.slow
def test_a_restart_with_the_api_down_serves_every_project_at_once(
    warmed: tuple[FakeApi, Path],
) -> None:
    api, folder = warmed
    stored = {a.project_id: a for a in kept(state_file(folder))}
    api.inject(Fault("delay", delay=60), times=None)  # the API hangs from now on
    exporter = ExporterProcess([], env=state_env(api, folder), cwd=folder, tmp=folder)
    try:
        samples = wait_for(
            lambda: (
                (found := metrics(exporter))
                and sample(found, "latitudesh_billing_price", project_id="proj_demo_gpu")
                and found
            ),
            timeout=30,
            message="the stored figures served",
        )
        expected = json.loads(stored["proj_demo_gpu"].body)["data"]["attributes"]["price"] / 100
        assert sample(samples, "latitudesh_billing_price", project_id="proj_demo_gpu") == expected
        for project, answer_ in stored.items():
            # freshness ages honestly: the time the answer was received, not now
            assert sample(
                samples, "latitudesh_last_success_timestamp_seconds", project_id=project
            ) == pytest.approx(answer_.received_at)
            # no poll of this process is claimed: `up` is absent until an outcome
            assert sample(samples, "latitudesh_up", project_id=project) is None
        assert sample(samples, "latitudesh_state_up") == 1.0
        assert 'msg="warm start"' in exporter.output() and "projects=4" in exporter.output()
        # ready at once: the hanging API does not hide what the exporter already knows
        assert http_get(exporter.url + "/readyz")[0] == 200
    finally:
        api.clear_faults()
        exporter.stop()


@pytest.mark.slow
def test_a_project_dropped_from_the_config_is_not_served(warmed: tuple[FakeApi, Path]) -> None:
    api, folder = warmed
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({"currency": "USD", "projects": [{"id": "proj_demo_gpu"}]}))
    api.inject(Fault("delay", delay=60), times=None)
    exporter = ExporterProcess(
        ["--config.file", str(config)], env=state_env(api, folder), cwd=folder, tmp=folder
    )
    try:
        samples = wait_for(
            lambda: (
                (found := metrics(exporter))
                and sample(found, "latitudesh_billing_price", project_id="proj_demo_gpu")
                and found
            ),
            timeout=30,
            message="the configured project served",
        )
        assert sample(samples, "latitudesh_billing_price", project_id="proj_demo_web") is None
    finally:
        api.clear_faults()
        exporter.stop()
    assert [a.project_id for a in kept(state_file(folder))] == ["proj_demo_gpu"]


@pytest.mark.parametrize(
    ("damage", "reason", "said"),
    [
        (lambda p: p.write_bytes(b"garbage" * 1000), "unreadable", "moved aside"),
        (
            lambda p: sqlite3.connect(p).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 9}"),
            "newer_version",
            "newer latitudesh-exporter",
        ),
    ],
    ids=["garbage", "newer"],
)
def test_a_bad_file_at_start_is_one_line_and_a_metric_and_polls_go_on(
    fake_api: FakeApi, tmp_path: Path, damage: Any, reason: str, said: str
) -> None:
    path = state_file(tmp_path)
    path.parent.mkdir(parents=True)
    damage(path)
    exporter = ExporterProcess([], env=state_env(fake_api, tmp_path), cwd=tmp_path, tmp=tmp_path)
    try:
        exporter.wait_ready()
        samples = metrics(exporter)
        assert sample(samples, "latitudesh_up", project_id="proj_demo_gpu") == 1.0  # polls
        assert sample(samples, "latitudesh_state_errors_total", reason=reason) == 1.0
        for other in STATE_ERROR_REASONS:
            if other != reason:
                assert sample(samples, "latitudesh_state_errors_total", reason=other) == 0.0
        assert sample(samples, "latitudesh_state_up") == (1.0 if reason == "unreadable" else 0.0)
        lines = [line for line in exporter.output().splitlines() if "state file" in line]
        assert len(lines) == 1 and said in lines[0], lines
        print(lines[0])  # the closing note quotes them
    finally:
        exporter.stop()


def test_off_is_off(fake_api: FakeApi, tmp_path: Path) -> None:
    env = state_env(fake_api, tmp_path, LATITUDESH_EXPORTER_STATE__ENABLED="false")
    exporter = ExporterProcess([], env=env, cwd=tmp_path, tmp=tmp_path)
    try:
        exporter.wait_ready()
        samples = metrics(exporter)
        assert sample(samples, "latitudesh_state_up") is None
    finally:
        assert exporter.stop() == 0
    for args in (["--once"], ["--check-config"]):
        assert run_cli(*args, env=state_env(fake_api, tmp_path)).returncode == 0
    assert not (tmp_path / "latitudesh-exporter").exists()  # nothing written anywhere

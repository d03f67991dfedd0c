"""Truthful in time: however many teams, whatever the others do, through a paused process,
a stepped wall clock or a hanging API, polling goes on and late data says so.

The daemon runs as a real process against the fake API over real sockets; the API's
request log is the witness of when polls happen.
"""

from __future__ import annotations

import glob
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from exporter.client import LatitudeClient
from exporter.schedule import Schedule
from exporter.simulation import DemoAccount, DemoTeam, default_projects
from exporter.store import SnapshotStore
from exporter.watchdog import Team, Watchdog
from testing.fakeapi import FakeApi, Fault
from testing.waits import wait_for
from tests.conftest import (
    FIXED_NOW,
    IN_CI,
    ExporterProcess,
    api_env,
    new_poller,
    require_binary,
    sample,
)

TEAMS = 30  # three times APScheduler's ten default workers
SLOW = 10

pytestmark = pytest.mark.slow  # daemons under load: left out of `make quick`


def key(index: int) -> str:
    return f"lat_team_{index:02d}_0123456789"


def team_account(index: int) -> DemoAccount:
    """A team of one project, billed in USD, behind its own key."""
    (project,) = [p for p in default_projects() if p.id == "proj_demo_gpu"]
    project.id = f"proj_team_{index:02d}"
    return DemoAccount(
        [project],
        token=key(index),
        team=DemoTeam(f"team-{index:02d}", f"Team {index}", "USD"),
        clock=lambda: FIXED_NOW,
    )


@pytest.fixture
def many_teams() -> Iterator[FakeApi]:
    with FakeApi([team_account(i) for i in range(TEAMS)]) as api:
        yield api


def teams_config(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    config = {
        "poll": {"interval_seconds": 1, "concurrency": 2},
        "teams": [
            {
                "name": f"team-{i:02d}",
                "token_env": f"KEY_{i:02d}",
                "currency": "USD",
                "requests_per_minute": 600,
                "projects": [{"id": f"proj_team_{i:02d}"}],
            }
            for i in range(TEAMS)
        ],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, {f"KEY_{i:02d}": key(i) for i in range(TEAMS)}


def polls(api: FakeApi, index: int) -> int:
    return api.request_count("/billing/usage", key=key(index))


def test_every_team_polls_on_its_schedule_however_many_and_whatever_the_others_do(
    many_teams: FakeApi, tmp_path: Path
) -> None:
    """Thirty teams, ten of them behind an API that takes 3 s an answer: every team is
    polled again and again (before: the eleventh and later teams never polled, and a
    fast team beside slow ones froze after its first poll with `up` 1)."""
    for index in range(SLOW):
        many_teams.inject(Fault("delay", delay=3.0), key=key(index), times=None)
    config, keys = teams_config(tmp_path)
    env = {
        **keys,
        "LATITUDESH_EXPORTER_API__BASE_URL": many_teams.url,
        "LATITUDESH_EXPORTER_API__TIMEOUT_SECONDS": "10",
    }
    exporter = ExporterProcess(["--config.file", str(config)], env=env, cwd=tmp_path, tmp=tmp_path)
    try:
        wait_for(
            lambda: all(polls(many_teams, i) >= 4 for i in range(SLOW, TEAMS)),
            timeout=60,
            message="four polls of every fast team",
        )
        wait_for(
            lambda: all(polls(many_teams, i) >= 2 for i in range(SLOW)),
            timeout=60,
            message="two polls of every slow team",
        )
        exporter.wait_ready()
        samples = exporter.scrape()
        for index in range(TEAMS):
            up = sample(samples, "latitudesh_up", project_id=f"proj_team_{index:02d}")
            assert up == 1.0, index
    finally:
        exporter.stop()


def requests_after(api: FakeApi, moment: float) -> int:
    return sum(1 for at in api.times("/billing/usage") if at > moment)


def demo_env(api: FakeApi, interval: int = 1) -> dict[str, str]:
    return api_env(
        api,
        LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS=str(interval),
        LATITUDESH_EXPORTER_API__TIMEOUT_SECONDS="2",
    )


def test_polling_resumes_at_once_after_the_process_is_stopped_and_continued(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    """SIGSTOP (a suspended VM, `docker pause`, a frozen cgroup) for longer than the
    interval: before, APScheduler found the run "missed" and polling never resumed,
    with `up` 1 and /readyz 200 forever."""
    exporter = ExporterProcess([], env=demo_env(fake_api), cwd=tmp_path, tmp=tmp_path)
    try:
        exporter.wait_ready()
        wait_for(lambda: len(fake_api.times("/billing/usage")) >= 8, message="two refreshes")
        exporter.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        # The pause itself is the scenario: three intervals with the process stopped.
        while time.monotonic() - stopped < 3.0:
            time.sleep(0.1)
        exporter.proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        wait_for(
            lambda: requests_after(fake_api, resumed) >= 8,
            timeout=20,
            message="polling to resume",
        )
        samples = exporter.scrape()
        assert sample(samples, "latitudesh_up", project_id="proj_demo_web") == 1.0
        assert sample(samples, "latitudesh_schedule_restarts_total", team="demo-us") == 0.0
    finally:
        os.kill(exporter.proc.pid, signal.SIGCONT)
        exporter.stop()


def faketime_library() -> str:
    """libfaketime (Debian's `faketime` package), or a skip/failure saying so."""
    require_binary("faketime")
    found = glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
    if not found:
        if IN_CI:
            pytest.fail("libfaketimeMT.so.1 is missing; CI must have the faketime package")
        pytest.skip("libfaketimeMT.so.1 is missing (apt-get install faketime)")
    return found[0]


def test_a_step_of_the_wall_clock_changes_timestamps_never_the_schedule(
    fake_api: FakeApi, tmp_path: Path
) -> None:
    """The wall clock stepped an hour back, then ten minutes forward (NTP, a VM
    restored from a snapshot): polls go on one interval apart (before: an hour of
    silence after the step back), and the timestamps follow the clock."""
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    env = {
        # Three seconds: longer than one refresh, so that the next is scheduled (the
        # old scheduler ran shorter waits in the same job, away from the wall clock).
        **demo_env(fake_api, interval=3),
        "LD_PRELOAD": faketime_library(),
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    exporter = ExporterProcess([], env=env, cwd=tmp_path, tmp=tmp_path)
    try:
        exporter.wait_ready()
        wait_for(lambda: len(fake_api.times("/billing/usage")) >= 8, 60, "two refreshes")
        for step, shift in (("-1h", -3600.0), ("+10m", 600.0)):
            offset.write_text(f"{step}\n")
            stepped = time.monotonic()
            wait_for(
                lambda moment=stepped: requests_after(fake_api, moment) >= 8,  # type: ignore[misc]
                timeout=90,
                message=f"polls after a step of {step}",
            )
            after = [t for t in fake_api.times("/billing/usage") if t > stepped]
            busiest = max(sum(1 for u in after if t <= u < t + 1.0) for t in after)
            assert busiest <= 4, "a step of the clock must not bring a burst of polls"

            def stamped(shift: float = shift) -> bool:
                last = sample(
                    exporter.scrape(),
                    "latitudesh_last_success_timestamp_seconds",
                    project_id="proj_demo_web",
                )
                return last is not None and abs(last - (time.time() + shift)) < 30

            wait_for(stamped, timeout=30, message=f"timestamps on the stepped clock ({step})")
        assert "was missed" not in exporter.output()
    finally:
        exporter.stop()


def test_a_hanging_api_shows_queued_projects_stalled_long_before_their_polls_end(
    fake_api: FakeApi, make_client: Callable[..., LatitudeClient]
) -> None:
    """Twenty projects, two at a time, an API that hangs: the projects queued behind
    the hanging polls show `up` 0 (reason stalled) within their interval plus the
    margin, instead of `up` 1 until their own poll ends (30 s later, here)."""
    account = fake_api.account
    base = account.projects["proj_demo_gpu"]
    for index in range(20):
        account.projects[f"proj_q_{index:02d}"] = replace(
            base, id=f"proj_q_{index:02d}", slug=f"q-{index}", name=f"Q {index}"
        )
    for pid in [p for p in account.projects if not p.startswith("proj_q_")]:
        del account.projects[pid]
    store = SnapshotStore()
    client = make_client(fake_api.url, timeout=3.0, max_retries=0)
    poller = new_poller(client, store, interval=1.0, concurrency=2, grace=3.0)
    schedule = Schedule(poller.team, poller.refresh, poller.effective_interval)
    watchdog = Watchdog([Team(poller, schedule)], store, margin=3.0, tick=0.1)
    assert poller.refresh()
    fake_api.inject(Fault("delay", delay=60.0), times=None)  # the API hangs from now on
    schedule.start()
    watchdog.start()
    try:
        last = "proj_q_19"

        def stalled() -> bool:
            status = next(p for p in store.view().projects if p.project_id == last)
            return not status.up and status.last_error == "stalled"

        wait_for(stalled, timeout=30, message="the last project marked stalled")
        # Its own poll has not even been sent: it waits behind the hanging ones.
        assert fake_api.request_count("/billing/usage", last) == 1
        status = next(p for p in store.view().projects if p.project_id == last)
        assert status.usage is not None  # the last good figures are kept
    finally:
        watchdog.stop()
        schedule.stop()
        fake_api.stopping.set()
        poller.stop(timeout=0)

"""`store.SnapshotStore`, tested directly: teams (added, ranked, renamed with their
figures), the projects each team tracks and who owns a project two teams see, every
`record_*`, the view (cached, versioned), the listeners (every change, in order, outside
the lock, one at a time), and the figures `collector.py` renders from all of it."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from exporter.errors import POLL_ERROR_REASONS
from exporter.models import ENDPOINTS
from exporter.snapshot import ProjectStatus, ReloadStatus, UsageSnapshot
from exporter.store import STALLED, Claims, SnapshotStore
from tests.conftest import parse_samples, reference_exposition, usage_of

NO_ERRORS = (0,) * len(POLL_ERROR_REASONS)


def usage(project: str, price: int = 100) -> UsageSnapshot:
    return usage_of({"data": {"attributes": {"price": price}}}, project)


def errors(**counts: int) -> tuple[int, ...]:
    """A counts tuple in the order of POLL_ERROR_REASONS."""
    assert set(counts) <= set(POLL_ERROR_REASONS)
    return tuple(counts.get(reason, 0) for reason in POLL_ERROR_REASONS)


def ids(store: SnapshotStore) -> list[str]:
    return [p.project_id for p in store.view().projects]


def owners(store: SnapshotStore) -> dict[str, str]:
    return {p.project_id: p.team for p in store.view().projects}


def status(store: SnapshotStore, project: str) -> ProjectStatus:
    (found,) = [p for p in store.view().projects if p.project_id == project]
    return found


def team_store(*teams: str) -> SnapshotStore:
    store = SnapshotStore()
    for team in teams:
        store.add_team(team)
    return store


class Recorder:
    """A listener that writes down each call, as (kind, project ids)."""

    def __init__(self, name: str = "", log: list[tuple[str, str, tuple[str, ...]]] | None = None):
        self.name = name
        self.log: list[tuple[str, str, tuple[str, ...]]] = [] if log is None else log
        self.statuses: list[ProjectStatus] = []

    def project_changed(self, status: ProjectStatus) -> None:
        self.statuses.append(status)
        self.log.append((self.name, "project", (status.project_id,)))

    def projects_changed(self, projects: Sequence[ProjectStatus]) -> None:
        self.log.append((self.name, "projects", tuple(p.project_id for p in projects)))

    @property
    def calls(self) -> list[tuple[str, tuple[str, ...]]]:
        return [(kind, pids) for _, kind, pids in self.log]


# --- teams ---------------------------------------------------------------------------


def test_teams_appear_in_the_order_they_are_added_with_zeroed_figures() -> None:
    store = team_store("a", "b")
    a, b = store.view().teams
    assert (a.name, b.name) == ("a", "b")
    assert a.discovery_errors == NO_ERRORS
    assert dict(a.api_requests) == {(endpoint, "200"): 0 for endpoint in ENDPOINTS}
    assert (a.refreshed, a.stalled, a.restarts, a.refused_ids) == (False, False, 0, 0)


def test_adding_a_team_twice_changes_nothing() -> None:
    store = team_store("a")
    store.record_request("a", "/projects", "200")
    before = store.view()
    store.add_team("a")
    assert store.view() is before
    assert dict(store.view().teams[0].api_requests)[("/projects", "200")] == 1


def test_projects_follow_the_team_order_then_each_teams_listing() -> None:
    store = team_store("a", "b")
    store.set_projects("b", [("z", "")])
    store.set_projects("a", [("y", ""), ("x", "")])
    assert ids(store) == ["y", "x", "z"]
    store.set_projects("a", [("x", ""), ("y", "")])
    assert ids(store) == ["x", "y", "z"]


def test_a_renamed_team_keeps_its_figures_projects_place_and_rank() -> None:
    store = team_store("first", "default", "last")
    store.set_projects("default", [("p", "")])
    store.record_success("default", usage("p"), duration=1.5, now=100.0)
    store.record_request("default", "/projects", "429")
    store.record_discovery_failure("default", "timeout")
    store.record_refresh("default", duration=2.0, effective_interval=300.0, currency="EUR")
    store.rename_team("default", "acme")
    teams = store.view().teams
    assert [t.name for t in teams] == ["first", "acme", "last"]
    acme = teams[1]
    assert dict(acme.api_requests)[("/projects", "429")] == 1
    assert acme.discovery_errors == errors(timeout=1)
    assert (acme.effective_interval, acme.refresh_duration, acme.currency) == (300.0, 2.0, "EUR")
    p = status(store, "p")
    assert (p.team, p.last_success, p.up) == ("acme", 100.0, True)
    # writes keep naming the team by its key: the client's request counter, wired
    # before discovery learned the name, goes on counting under the team
    store.record_request("default", "/projects", "429")
    assert dict(store.view().teams[1].api_requests)[("/projects", "429")] == 2
    store.record_failure("default", "p", "timeout", duration=1.0)
    assert not status(store, "p").up
    # the new name is a label, not a key: writes under it reach nothing
    store.record_success("acme", usage("p"), duration=1.0, now=200.0)
    assert not status(store, "p").up
    # its rank (second) is kept: it still loses to the first team, beats the last
    store.set_projects("last", [("q", "")])
    assert store.set_projects("default", [("p", ""), ("q", "")]).refused == []
    assert store.set_projects("first", [("q", "")]).taken == ["q"]


@pytest.mark.parametrize(
    ("old", "new"), [("a", "a"), ("missing", "z"), ("a", "b")], ids=["same", "unknown", "taken"]
)
def test_a_rename_that_cannot_apply_changes_nothing(old: str, new: str) -> None:
    store = team_store("a", "b")
    store.set_projects("a", [("p", "")])
    before = store.view()
    store.rename_team(old, new)
    assert store.view() is before
    assert [t.name for t in store.view().teams] == ["a", "b"]
    assert owners(store) == {"p": "a"}


# --- the projects a team tracks ----------------------------------------------------------


def test_new_projects_appear_unpolled_with_their_slug() -> None:
    store = team_store("t")
    claims = store.set_projects("t", [("p", "web"), ("q", "")])
    assert claims == Claims(taken=["p", "q"], refused=[])
    p = status(store, "p")
    assert (p.team, p.slug, p.project_slug) == ("t", "web", "web")
    assert (p.usage, p.up, p.polled, p.last_success, p.poll_duration, p.last_error) == (
        None,
        False,
        False,
        None,
        None,
        None,
    )
    assert p.errors == NO_ERRORS


def test_gone_projects_vanish_and_kept_ones_keep_their_figures() -> None:
    store = team_store("t")
    store.set_projects("t", [("a", ""), ("b", "")])
    store.record_success("t", usage("b", 250), duration=1.0, now=10.0)
    store.set_projects("t", [("b", ""), ("c", "")])
    assert ids(store) == ["b", "c"]
    b = status(store, "b")
    assert b.usage is not None and b.usage.price == 2.5
    assert (b.up, b.last_success) == (True, 10.0)
    store.set_projects("t", [])
    assert ids(store) == []


def test_a_project_listed_twice_is_tracked_once_with_its_first_slug() -> None:
    store = team_store("t")
    assert store.set_projects("t", [("p", "one"), ("p", "two")]).taken == ["p"]
    assert [(p.project_id, p.slug) for p in store.view().projects] == [("p", "one")]


def test_a_new_slug_replaces_the_old_and_an_empty_one_does_not() -> None:
    store = team_store("t")
    store.set_projects("t", [("p", "old"), ("q", "")])
    store.set_projects("t", [("p", ""), ("q", "")])
    assert status(store, "p").slug == "old"
    store.set_projects("t", [("p", "new"), ("q", "")])
    store.record_failure("t", "q", "timeout", duration=1.0)  # any change: a fresh view
    assert status(store, "p").slug == "new"


def test_a_new_slug_is_a_change_the_view_shows_at_once() -> None:
    store = team_store("t")
    store.set_projects("t", [("p", "old")])
    before = store.view()
    store.set_projects("t", [("p", "new")])
    after = store.view()
    assert after.version > before.version
    assert after.projects[0].slug == "new"


# --- who owns a project two teams see -------------------------------------------------


def test_among_discovering_teams_the_lower_rank_wins_whoever_lands_first() -> None:
    first_lands_first = team_store("one", "two")
    first_lands_first.set_projects("one", [("p", "")])
    assert first_lands_first.set_projects("two", [("p", "")]) == Claims([], ["p"])
    second_lands_first = team_store("one", "two")
    second_lands_first.set_projects("two", [("p", "")])
    assert second_lands_first.set_projects("one", [("p", "")]) == Claims(["p"], [])
    assert owners(first_lands_first) == owners(second_lands_first) == {"p": "one"}


def test_an_explicit_rank_decides_not_the_order_of_adding() -> None:
    store = SnapshotStore()
    store.add_team("added-first", rank=5)
    store.add_team("added-second", rank=2)
    store.set_projects("added-first", [("p", "")])
    assert store.set_projects("added-second", [("p", "")]).taken == ["p"]
    assert owners(store) == {"p": "added-second"}


def test_an_explicit_rank_of_zero_is_first_not_the_default() -> None:
    store = SnapshotStore()
    store.add_team("ranked-one", rank=1)
    store.add_team("ranked-zero", rank=0)
    store.set_projects("ranked-one", [("p", "")])
    assert store.set_projects("ranked-zero", [("p", "")]).taken == ["p"]
    assert owners(store) == {"p": "ranked-zero"}


def test_equal_claims_leave_the_project_with_its_owner() -> None:
    store = SnapshotStore()
    store.add_team("a", rank=0)
    store.add_team("b", rank=0)
    store.set_projects("a", [("p", "")])
    assert store.set_projects("b", [("p", "")]).refused == ["p"]
    store.set_projects("a", [("q", "")], configured=True)
    assert store.set_projects("b", [("q", "")], configured=True).refused == ["q"]
    assert owners(store) == {"q": "a"}


def test_configured_beats_discovered_whatever_the_rank() -> None:
    store = team_store("one", "two")
    store.set_projects("one", [("p", "")])  # discovered by the better-ranked team
    store.record_success("one", usage("p", 700), duration=1.0, now=5.0)
    claims = store.set_projects("two", [("p", "slug")], configured=True)
    assert claims == Claims(["p"], [])
    moved = status(store, "p")
    assert (moved.team, moved.slug, moved.last_success) == ("two", "slug", 5.0)
    assert moved.usage is not None and moved.usage.price == 7.0  # the project's figures
    # and a discovery cannot take it back
    assert store.set_projects("one", [("p", "")]) == Claims([], ["p"])
    assert owners(store) == {"p": "two"}


def test_a_discovery_cannot_take_a_configured_project_even_ranked_first() -> None:
    store = team_store("one", "two")
    store.set_projects("two", [("p", "")], configured=True)
    assert store.set_projects("one", [("p", "")]).refused == ["p"]
    assert owners(store) == {"p": "two"}


def test_a_configured_project_goes_to_the_lower_rank_among_configured() -> None:
    store = team_store("one", "two")
    store.set_projects("two", [("p", "")], configured=True)
    assert store.set_projects("one", [("p", "")], configured=True).taken == ["p"]
    assert owners(store) == {"p": "one"}


def test_the_team_a_project_was_taken_from_no_longer_drops_it() -> None:
    store = team_store("one", "two")
    store.set_projects("two", [("p", ""), ("q", "")])
    store.set_projects("one", [("p", "")])
    store.set_projects("two", [("q", "")])  # two's listing without p: p stays one's
    assert owners(store) == {"p": "one", "q": "two"}
    assert ids(store) == ["p", "q"]


def test_a_project_its_owner_drops_is_free_for_any_claim() -> None:
    store = team_store("one", "two")
    store.set_projects("one", [("p", "")], configured=True)
    store.set_projects("one", [])
    assert store.set_projects("two", [("p", "")]).taken == ["p"]
    assert owners(store) == {"p": "two"}


def test_writes_from_a_team_that_does_not_own_the_project_are_ignored() -> None:
    store = team_store("one", "two")
    store.set_projects("one", [("p", "")])
    store.record_success("one", usage("p"), duration=1.0, now=1.0)
    recorder = Recorder()
    store.subscribe(recorder)
    before = store.view()
    store.record_success("two", usage("p", 999), duration=9.0, now=9.0)
    store.record_failure("two", "p", "timeout", duration=9.0)
    assert store.record_stalled("two", ["p"]) == 0
    store.record_success("one", usage("elsewhere"), duration=1.0, now=1.0)  # not tracked
    assert store.view() is before
    assert recorder.calls == [("projects", ("p",))]  # the replay on subscribe only


# --- polls -----------------------------------------------------------------------------


def test_a_success_sets_every_figure_of_the_poll() -> None:
    store = team_store("t")
    store.set_projects("t", [("p", "")])
    store.record_failure("t", "p", "network", duration=3.0)
    polled = usage("p", 1234)
    store.record_success("t", polled, duration=0.75, now=1_000.0)
    p = status(store, "p")
    assert p.usage is polled
    assert (p.up, p.polled, p.last_success, p.poll_duration, p.last_error) == (
        True,
        True,
        1_000.0,
        0.75,
        None,
    )
    assert p.errors == errors(network=1)  # counters never go back


def test_a_failure_keeps_the_last_usage_and_counts_its_reason() -> None:
    store = team_store("t")
    store.set_projects("t", [("p", "")])
    polled = usage("p")
    store.record_success("t", polled, duration=0.5, now=50.0)
    store.record_failure("t", "p", "rate_limited", duration=4.0)
    store.record_failure("t", "p", "rate_limited", duration=5.0)
    store.record_failure("t", "p", "redirected", duration=6.0)
    p = status(store, "p")
    assert p.usage is polled
    assert (p.up, p.polled, p.last_success, p.poll_duration, p.last_error) == (
        False,
        True,
        50.0,
        6.0,
        "redirected",
    )
    assert p.errors == errors(rate_limited=2, redirected=1)


@pytest.mark.parametrize("reason", POLL_ERROR_REASONS)
def test_each_reason_is_counted_in_its_own_place(reason: str) -> None:
    store = team_store("t")
    store.set_projects("t", [("p", "")])
    store.record_failure("t", "p", reason, duration=1.0)
    assert status(store, "p").errors == errors(**{reason: 1})


def test_a_first_failure_polls_a_project_without_usage() -> None:
    store = team_store("t")
    store.set_projects("t", [("p", "")])
    store.record_failure("t", "p", "not_found", duration=0.1)
    p = status(store, "p")
    assert (p.usage, p.up, p.polled, p.last_success) == (None, False, True, None)


def test_stalled_marks_once_per_episode_and_returns_how_many() -> None:
    store = team_store("t")
    store.set_projects("t", [("a", ""), ("b", "")])
    store.record_success("t", usage("a"), duration=2.0, now=7.0)
    assert store.record_stalled("t", ["a", "b", "gone"]) == 2
    a = status(store, "a")
    assert (a.up, a.last_error, a.errors) == (False, STALLED, errors(stalled=1))
    assert (a.polled, a.poll_duration, a.last_success) == (True, 2.0, 7.0)  # kept
    assert store.record_stalled("t", ["a", "b"]) == 0  # the same episode
    assert status(store, "a").errors == errors(stalled=1)
    store.record_success("t", usage("a"), duration=1.0, now=8.0)
    store.record_failure("t", "b", "timeout", duration=1.0)
    assert store.record_stalled("t", ["a", "b"]) == 2  # an outcome since: a new episode
    assert status(store, "a").errors == errors(stalled=2)
    assert status(store, "b").errors == errors(stalled=2, timeout=1)


def test_a_team_stalled_marks_its_projects_and_counts_a_restart() -> None:
    store = team_store("t", "u")
    store.set_projects("t", [("a", ""), ("b", "")])
    store.set_projects("u", [("c", "")])
    assert store.record_team_stalled("t") == 2
    t, u = store.view().teams
    assert (t.stalled, t.restarts) == (True, 1)
    assert (u.stalled, u.restarts) == (False, 0)
    assert [p.last_error for p in store.view().projects] == [STALLED, STALLED, None]
    assert store.record_team_stalled("t") == 0  # projects already stalled
    assert store.view().teams[0].restarts == 2
    assert store.record_team_stalled("nobody") == 0


# --- the exporter's own figures ------------------------------------------------------------


def test_a_refresh_start_sets_the_interval_and_ends_a_stall() -> None:
    store = team_store("t")
    store.record_refresh("t", duration=3.0, effective_interval=60.0, currency="USD")
    store.record_team_stalled("t")
    store.record_refresh("t", duration=None, effective_interval=90.0)
    (t,) = store.view().teams
    assert (t.effective_interval, t.refresh_duration, t.refreshed) == (90.0, 3.0, True)
    assert (t.currency, t.stalled) == ("USD", False)


def test_a_refresh_end_sets_its_duration_and_leaves_a_stall() -> None:
    store = team_store("t")
    store.record_refresh("t", duration=None, effective_interval=60.0)
    (started,) = store.view().teams
    assert (started.refreshed, started.refresh_duration) == (False, None)
    store.record_team_stalled("t")
    store.record_refresh("t", duration=4.5, effective_interval=60.0, currency="BRL")
    (t,) = store.view().teams
    assert (t.refreshed, t.refresh_duration, t.currency, t.stalled) == (True, 4.5, "BRL", True)


def test_requests_are_counted_by_endpoint_and_code_in_first_order() -> None:
    store = team_store("t")
    for endpoint, code in [
        ("/billing/usage", "200"),
        ("/billing/usage", "429"),
        ("/projects", "timeout"),
        ("/billing/usage", "429"),
    ]:
        store.record_request("t", endpoint, code)
    store.record_request("nobody", "/projects", "200")  # ignored
    (t,) = store.view().teams
    assert t.api_requests == (
        (("/billing/usage", "200"), 1),
        (("/projects", "200"), 0),
        (("/billing/usage", "429"), 2),
        (("/projects", "timeout"), 1),
    )


def test_discovery_outcomes() -> None:
    store = team_store("t")
    store.record_discovery_failure("t", "unauthorized")
    store.record_discovery_failure("t", "unauthorized")
    store.record_discovery_failure("t", "invalid_response")
    store.record_discovery_success("t", 123.0, refused_ids=3)
    (t,) = store.view().teams
    assert t.discovery_errors == errors(unauthorized=2, invalid_response=1)
    assert (t.discovery_success, t.refused_ids) == (123.0, 3)
    store.record_discovery_success("t", 456.0)
    assert (store.view().teams[0].discovery_success, store.view().teams[0].refused_ids) == (
        456.0,
        0,
    )


def test_a_refused_reload_keeps_the_last_success_time() -> None:
    store = SnapshotStore()
    assert store.view().reload == ReloadStatus(successful=True, last_success=None)
    store.record_reload(successful=True, now=10.0)
    assert store.view().reload == ReloadStatus(True, 10.0)
    store.record_reload(successful=False, now=20.0)
    assert store.view().reload == ReloadStatus(False, 10.0)
    store.record_reload(successful=True, now=30.0)
    assert store.view().reload == ReloadStatus(True, 30.0)


# --- readiness ------------------------------------------------------------------------------


def test_not_ready_without_teams_before_a_first_refresh_and_while_stalled() -> None:
    store = SnapshotStore()
    assert store.view().not_ready == "no team is configured yet"
    store.add_team("a")
    store.add_team("b")
    store.record_refresh("a", duration=1.0, effective_interval=60.0)
    assert store.view().not_ready == ("the first refresh has not been attempted yet (teams: b)")
    store.record_refresh("b", duration=1.0, effective_interval=60.0)
    assert store.view().ready and store.view().not_ready is None
    store.record_team_stalled("b")
    assert store.view().not_ready == "polling stalled and is being restarted (teams: b)"
    assert not store.view().ready
    store.record_refresh("b", duration=None, effective_interval=60.0)
    assert store.view().ready


# --- the view -------------------------------------------------------------------------------


def test_the_view_is_cached_until_a_change_and_every_change_moves_the_version() -> None:
    store = SnapshotStore()
    seen = [store.view()]
    assert store.view() is seen[0]

    def changed() -> None:
        view = store.view()
        assert view is not seen[-1]
        assert view.version > seen[-1].version
        assert store.view() is view
        seen.append(view)

    store.add_team("t")
    changed()
    store.set_projects("t", [("p", "")])
    changed()
    store.record_success("t", usage("p"), duration=1.0, now=1.0)
    changed()
    store.record_failure("t", "p", "timeout", duration=1.0)
    changed()
    store.record_stalled("t", ["p"])
    changed()
    store.record_team_stalled("t")
    changed()
    store.record_refresh("t", duration=None, effective_interval=1.0)
    changed()
    store.record_request("t", "/projects", "200")
    changed()
    store.record_discovery_failure("t", "network")
    changed()
    store.record_discovery_success("t", 1.0)
    changed()
    store.record_reload(successful=False, now=1.0)
    changed()
    store.rename_team("t", "u")
    changed()


def test_a_write_that_changes_nothing_keeps_the_view() -> None:
    store = team_store("t")
    store.set_projects("t", [("p", "")])
    before = store.view()
    store.set_projects("t", [("p", "")])
    store.record_stalled("t", [])
    store.record_stalled("t", ["unknown"])
    assert store.view() is before


def test_a_view_is_a_moment_later_writes_do_not_touch() -> None:
    store = team_store("t")
    store.set_projects("t", [("p", "")])
    before = store.view()
    store.record_failure("t", "p", "timeout", duration=1.0)
    store.set_projects("t", [("q", "")])
    assert [p.project_id for p in before.projects] == ["p"]
    assert before.projects[0].errors == NO_ERRORS


# --- listeners -------------------------------------------------------------------------------


def test_subscribing_replays_the_current_projects() -> None:
    store = team_store("t")
    empty = Recorder()
    store.subscribe(empty)
    assert empty.calls == [("projects", ())]
    store.set_projects("t", [("a", ""), ("b", "")])
    late = Recorder()
    store.subscribe(late)
    assert late.calls == [("projects", ("a", "b"))]


def test_listeners_are_told_of_every_project_change_in_order() -> None:
    recorder = Recorder()
    store = SnapshotStore([recorder])
    store.add_team("t")
    store.record_request("t", "/projects", "200")  # team figures: no project changed
    store.record_refresh("t", duration=1.0, effective_interval=1.0)
    store.record_reload(successful=True, now=1.0)
    assert recorder.calls == []
    store.set_projects("t", [("a", ""), ("b", "")])
    store.record_success("t", usage("a"), duration=1.0, now=1.0)
    store.record_failure("t", "b", "timeout", duration=1.0)
    store.record_team_stalled("t")
    store.rename_team("t", "u")
    store.set_projects("t", [("b", "")])  # still the team's key
    assert recorder.calls == [
        ("projects", ("a", "b")),
        ("project", ("a",)),
        ("project", ("b",)),
        ("project", ("a",)),
        ("project", ("b",)),
        ("projects", ("a", "b")),
        ("projects", ("b",)),
    ]
    success, failure, stall_a, stall_b = recorder.statuses
    assert (success.up, failure.last_error, stall_a.last_error) == (True, "timeout", STALLED)
    assert stall_b.errors == errors(timeout=1, stalled=1)


def test_every_listener_is_told_each_change_before_the_next() -> None:
    log: list[tuple[str, str, tuple[str, ...]]] = []
    first, second = Recorder("first", log), Recorder("second", log)
    store = SnapshotStore([first])
    store.subscribe(second)
    store.add_team("t")
    store.set_projects("t", [("a", "")])
    store.record_success("t", usage("a"), duration=1.0, now=1.0)
    assert log == [
        ("second", "projects", ()),
        ("first", "projects", ("a",)),
        ("second", "projects", ("a",)),
        ("first", "project", ("a",)),
        ("second", "project", ("a",)),
    ]


def test_listeners_are_told_outside_the_lock_and_see_the_change() -> None:
    store = team_store("t")
    seen: list[tuple[bool, Any]] = []

    class Reader:
        def project_changed(self, status: ProjectStatus) -> None:
            free = store._lock.acquire(blocking=False)
            if free:
                store._lock.release()
            view = store.view() if free else None
            seen.append((free, view.projects[0] if view else None))

        def projects_changed(self, projects: Sequence[ProjectStatus]) -> None:
            free = store._lock.acquire(blocking=False)
            if free:
                store._lock.release()
            seen.append((free, None))

    store.subscribe(Reader())
    store.set_projects("t", [("p", "")])
    store.record_failure("t", "p", "timeout", duration=1.0)
    assert [free for free, _ in seen] == [True, True, True]
    assert seen[-1][1] is not None and seen[-1][1].last_error == "timeout"


def test_a_change_made_by_a_listener_is_told_after_the_current_one() -> None:
    store = team_store("t")
    store.set_projects("t", [("a", ""), ("b", "")])
    depth = [0]
    order: list[str] = []
    deepest = [0]

    class Writer:
        def project_changed(self, status: ProjectStatus) -> None:
            depth[0] += 1
            deepest[0] = max(deepest[0], depth[0])
            order.append(f"{status.project_id}:{status.last_error}")
            if status.project_id == "a":
                store.record_failure("t", "b", "network", duration=1.0)
                order.append("a-done")
            depth[0] -= 1

        def projects_changed(self, projects: Sequence[ProjectStatus]) -> None:
            pass

    store.subscribe(Writer())
    store.record_failure("t", "a", "timeout", duration=1.0)
    assert order == ["a:timeout", "a-done", "b:network"]
    assert deepest[0] == 1


def test_listeners_are_told_one_change_at_a_time_across_threads() -> None:
    store = team_store("t")
    store.set_projects("t", [("a", ""), ("b", "")])
    entered, release = threading.Event(), threading.Event()
    inside = [0]
    overlapped: list[bool] = []
    told: list[str] = []

    class Slow:
        def project_changed(self, status: ProjectStatus) -> None:
            inside[0] += 1
            overlapped.append(inside[0] > 1)
            told.append(status.project_id)
            if status.project_id == "a":
                entered.set()
                assert release.wait(10)
            inside[0] -= 1

        def projects_changed(self, projects: Sequence[ProjectStatus]) -> None:
            pass

    store.subscribe(Slow())
    writer = threading.Thread(
        target=store.record_failure, args=("t", "a", "timeout"), kwargs={"duration": 1.0}
    )
    writer.start()
    try:
        assert entered.wait(10)
        # a's listener is busy: b's write returns at once, its change left to the teller
        store.record_failure("t", "b", "network", duration=1.0)
        assert told == ["a"]
        assert status(store, "b").last_error == "network"  # the write itself is done
    finally:
        release.set()
        writer.join(10)
    assert not writer.is_alive()
    assert told == ["a", "b"]
    assert overlapped == [False, False]


# --- the figures the collector renders from the store -----------------------------------------

Labels = frozenset[tuple[str, str]]


def rendered(store: SnapshotStore) -> dict[str, dict[Labels, float]]:
    found: dict[str, dict[Labels, float]] = {}
    for (name, ls), value in parse_samples(reference_exposition(store).decode()).items():
        found.setdefault(name, {})[ls] = value
    return found


def test_the_status_figures_of_each_project() -> None:
    store = team_store("t")
    store.set_projects("t", [("ok", ""), ("bad", ""), ("new", "")])
    store.record_success("t", usage("ok"), duration=0.5, now=1_700_000_000.0)
    store.record_success("t", usage("bad"), duration=0.25, now=1_600_000_000.0)
    store.record_failure("t", "bad", "server_error", duration=2.0)
    store.record_failure("t", "bad", "server_error", duration=3.0)
    store.record_failure("t", "bad", "forbidden", duration=4.0)
    found = rendered(store)
    ok, bad, new = (frozenset({("project_id", p)}) for p in ("ok", "bad", "new"))
    # a project with no outcome yet has no `up`: not a false 0 at every start
    assert found["latitudesh_up"] == {ok: 1.0, bad: 0.0}
    assert new not in found["latitudesh_up"]
    assert found["latitudesh_last_success_timestamp_seconds"] == {
        ok: 1_700_000_000.0,
        bad: 1_600_000_000.0,
    }
    assert found["latitudesh_poll_duration_seconds"] == {ok: 0.5, bad: 4.0}
    bad_errors = {
        dict(ls)["reason"]: value
        for ls, value in found["latitudesh_poll_errors_total"].items()
        if ("project_id", "bad") in ls
    }
    assert bad_errors == {
        reason: {"server_error": 2.0, "forbidden": 1.0}.get(reason, 0.0)
        for reason in POLL_ERROR_REASONS
    }
    assert "latitudesh_billing_price" in found
    assert {dict(ls)["project_id"] for ls in found["latitudesh_billing_price"]} == {"ok", "bad"}


def test_the_figures_of_each_team_and_of_the_reload() -> None:
    store = team_store("a", "b")
    store.record_discovery_failure("a", "timeout")
    store.record_discovery_failure("a", "timeout")
    store.record_discovery_success("a", 1_111.0, refused_ids=3)
    store.record_request("a", "/billing/usage", "429")
    store.record_refresh("a", duration=7.5, effective_interval=330.0)
    store.record_team_stalled("a")
    store.record_team_stalled("a")
    store.record_reload(successful=True, now=2_222.0)
    store.record_reload(successful=False, now=3_333.0)
    found = rendered(store)
    a, b = frozenset({("team", "a")}), frozenset({("team", "b")})
    assert found["latitudesh_discovery_last_success_timestamp_seconds"] == {a: 1_111.0}
    assert found["latitudesh_poll_effective_interval_seconds"] == {a: 330.0}
    assert found["latitudesh_refresh_duration_seconds"] == {a: 7.5}
    assert found["latitudesh_schedule_restarts_total"] == {a: 2.0, b: 0.0}
    assert found["latitudesh_discovery_refused_projects"] == {a: 3.0, b: 0.0}
    discovery = found["latitudesh_discovery_errors_total"]
    assert discovery[a | {("reason", "timeout")}] == 2.0
    assert sum(discovery.values()) == 2.0 and len(discovery) == 2 * len(POLL_ERROR_REASONS)
    requests = found["latitudesh_api_requests_total"]
    assert requests[a | {("endpoint", "/billing/usage"), ("code", "429")}] == 1.0
    assert requests[a | {("endpoint", "/projects"), ("code", "200")}] == 0.0
    assert sum(requests.values()) == 1.0 and len(requests) == 5
    assert found["latitudesh_config_last_reload_successful"] == {frozenset(): 0.0}
    assert found["latitudesh_config_last_reload_success_timestamp_seconds"] == {
        frozenset(): 2_222.0
    }

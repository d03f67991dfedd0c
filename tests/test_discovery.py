"""Discovery on its own: a fake API behind it, a real store in front.

A team's targets are its configured projects or every project /projects lists; its
currency and name are learned from /projects only when the config does not give them;
the team's key in the store never changes (a rename changes its label); ids longer than
`MAX_ID_CHARS` are refused and counted; a failure is counted under its reason and keeps
the last targets; `requests()` is the pages one discovery reads, at the page boundary.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import httpx
import pytest
from pydantic import ValidationError

from exporter import errors
from exporter.client import LatitudeClient
from exporter.config import ProjectSettings
from exporter.discovery import Discovery, Target, discovery_needed
from exporter.errors import POLL_ERROR_REASONS
from exporter.models import (
    MAX_ID_CHARS,
    PROJECTS_PAGE_SIZE,
    ProjectResource,
    ProjectsPage,
    parse_document,
)
from exporter.snapshot import TeamStatus
from exporter.store import SnapshotStore
from tests.transports import StreamingTransport

KEY = "default"
NOW = 1_795_000_000.0


def project(
    pid: str, *, slug: str | None = None, team: str | None = "acme", currency: str | None = "USD"
) -> dict[str, Any]:
    attributes: dict[str, Any] = {"slug": slug or f"slug-{pid}", "name": f"Name {pid}"}
    if team is not None or currency is not None:
        attributes["team"] = {"slug": team, "currency": {"code": currency}}
    return {"id": pid, "attributes": attributes}


def resources(*items: dict[str, Any]) -> list[ProjectResource]:
    return parse_document(ProjectsPage, json.dumps({"data": list(items)}).encode()).data


class Source:
    """/projects from a script: each call answers the next entry (the last one again
    once the script is spent); an exception is raised."""

    def __init__(self, *answers: list[ProjectResource] | BaseException) -> None:
        self.answers = list(answers)
        self.calls = 0

    def projects(self) -> list[ProjectResource]:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def billing_usage(
        self, project_id: str, *, plan: str | None = None, products: Sequence[str] = ()
    ) -> NoReturn:
        raise AssertionError("discovery never polls")


def make(
    source: Source | LatitudeClient,
    store: SnapshotStore | None = None,
    *,
    team: str = KEY,
    named: bool = False,
    targets: Sequence[Target] = (),
    currency: str | None = None,
    hint: Callable[[str], str] = lambda reason: f"hint for {reason}",
) -> tuple[Discovery, SnapshotStore]:
    if store is None:
        store = SnapshotStore()
        store.add_team(team)
    discovery = Discovery(
        source,
        store,
        team=team,
        named=named,
        targets=targets,
        currency=currency,
        now=lambda: NOW,
        hint=hint,
    )
    return discovery, store


def team_status(store: SnapshotStore, name: str) -> TeamStatus:
    (found,) = [t for t in store.view().teams if t.name == name]
    return found


def tracked(store: SnapshotStore) -> dict[str, tuple[str, str]]:
    """project id → (team label, slug) of every project the store holds."""
    return {p.project_id: (p.team, p.slug) for p in store.view().projects}


# --- when /projects is read -----------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "currency", "needed"),
    [
        (True, "USD", False),  # both in the config: never asked, no request
        (True, None, True),  # the currency is the team's
        (True, "", True),
        (False, "USD", True),  # the projects are the team's
        (False, None, True),
    ],
)
def test_discovery_is_needed_unless_projects_and_currency_are_configured(
    configured: bool, currency: str | None, needed: bool
) -> None:
    assert discovery_needed(configured=configured, currency=currency) is needed
    targets = [Target("proj_a")] if configured else []
    discovery, _ = make(Source(resources()), targets=targets, currency=currency)
    assert discovery.needed is needed
    assert discovery.requests() == (1 if needed else 0)


def test_configured_projects_are_claimed_at_once_and_kept_whatever_projects_lists() -> None:
    source = Source(resources(project("proj_a", slug="a-slug"), project("proj_other")))
    targets = [Target("proj_a", plan="c2-small", products=("si_1",)), Target("proj_b")]
    discovery, store = make(source, targets=targets)
    # Before any request: the configured projects are in the store, unpolled.
    assert tracked(store) == {"proj_a": (KEY, ""), "proj_b": (KEY, "")}
    assert source.calls == 0
    assert discovery.run()
    # The configured targets stay (filters included); /projects only names them and
    # gives the currency. A project it lists that the config does not is not polled.
    assert [(t.project_id, t.plan, t.products, t.slug) for t in discovery.targets] == [
        ("proj_a", "c2-small", ("si_1",), "a-slug"),
        ("proj_b", None, (), None),
    ]
    assert discovery.targets[0].name == "Name proj_a"
    assert set(tracked(store)) == {"proj_a", "proj_b"}
    assert tracked(store)["proj_a"][1] == "a-slug"
    assert discovery.currency == "USD"


def test_discovered_targets_are_every_project_listed_once_in_order() -> None:
    listed = resources(
        project("proj_b"),
        project("proj_a"),
        project("proj_b", slug="second-b"),  # the same id again: the first one counts
        {"id": "", "attributes": {"slug": "no-id"}},  # no id: nothing to poll
        {"attributes": {"slug": "missing-id"}},
    )
    discovery, store = make(Source(listed, resources(project("proj_a"))))
    assert [t.project_id for t in discovery.targets] == []
    assert discovery.run()
    assert [t.project_id for t in discovery.targets] == ["proj_b", "proj_a"]
    assert discovery.targets[0].slug == "slug-proj_b"
    assert tracked(store) == {"proj_b": ("acme", "slug-proj_b"), "proj_a": ("acme", "slug-proj_a")}
    assert team_status(store, "acme").discovery_success == NOW
    assert discovery.run()  # proj_b is gone from the account
    assert [t.project_id for t in discovery.targets] == ["proj_a"]
    assert set(tracked(store)) == {"proj_a"}


# --- currency and name ----------------------------------------------------------------


def test_the_currency_is_the_first_one_listed_unless_configured() -> None:
    listed = resources(project("proj_a", currency=None), project("proj_b", currency="BRL"))
    learned, _ = make(Source(listed))
    assert learned.currency is None
    assert learned.run()
    assert learned.currency == "BRL"
    # An answer without any currency keeps the one learned before.
    learned._source = Source(resources(project("proj_a", currency=None)))
    assert learned.run()
    assert learned.currency == "BRL"
    configured, _ = make(Source(listed), currency="EUR")
    assert configured.run()
    assert configured.currency == "EUR"


def test_the_team_is_renamed_to_its_slug_and_keeps_its_key() -> None:
    discovery, store = make(Source(resources(project("proj_a", team="acme-corp"))))
    assert discovery.run()
    assert (discovery.key, discovery.team) == (KEY, "acme-corp")
    assert [t.name for t in store.view().teams] == ["acme-corp"]
    assert tracked(store) == {"proj_a": ("acme-corp", "slug-proj_a")}
    # Writes still go by the key: a discovery failure lands on the renamed team.
    discovery._source = Source(errors.ServerError("boom", status=500))
    assert not discovery.run()
    assert discovery.key == KEY
    errors_of = team_status(store, "acme-corp").discovery_errors
    assert errors_of[POLL_ERROR_REASONS.index("server_error")] == 1
    # The team renamed again on Latitude.sh: the label follows, the key stays.
    discovery._source = Source(resources(project("proj_a", team="acme-inc")))
    assert discovery.run()
    assert (discovery.key, discovery.team) == (KEY, "acme-inc")
    assert [t.name for t in store.view().teams] == ["acme-inc"]
    assert tracked(store) == {"proj_a": ("acme-inc", "slug-proj_a")}


def test_a_named_team_keeps_its_name() -> None:
    discovery, store = make(
        Source(resources(project("proj_a", team="acme-corp"))), team="billing", named=True
    )
    assert discovery.run()
    assert (discovery.key, discovery.team) == ("billing", "billing")
    assert [t.name for t in store.view().teams] == ["billing"]


# --- ids ------------------------------------------------------------------------------


def test_ids_up_to_max_id_chars_are_kept_and_longer_ones_refused_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exact = "p" * MAX_ID_CHARS
    over = "q" * (MAX_ID_CHARS + 1)
    listed = resources(project(exact), project(over), project("r" * (MAX_ID_CHARS + 50)))
    discovery, store = make(Source(listed))
    with caplog.at_level(logging.WARNING, logger="exporter.discovery"):
        assert discovery.run()
    assert [t.project_id for t in discovery.targets] == [exact]
    assert set(tracked(store)) == {exact}
    assert team_status(store, "acme").refused_ids == 2
    (record,) = caplog.records
    assert record.getMessage() == "project ids refused: longer than the API's ids can be"
    assert (record.count, record.max_chars) == (2, MAX_ID_CHARS)  # type: ignore[attr-defined]
    # The count is the last discovery's, not a running total.
    discovery._source = Source(resources(project(exact)))
    assert discovery.run()
    assert team_status(store, "acme").refused_ids == 0


def test_a_project_another_team_configured_is_left_to_it_and_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = SnapshotStore()
    store.add_team("first")
    store.add_team(KEY)
    make(Source(resources()), store, team="first", named=True, targets=[Target("proj_shared")])
    listed = resources(project("proj_shared"), project("proj_mine"))
    discovery, _ = make(Source(listed), store, team=KEY, named=True)
    with caplog.at_level(logging.WARNING, logger="exporter.discovery"):
        assert discovery.run()
        assert discovery.run()
    assert [t.project_id for t in discovery.targets] == ["proj_mine"]
    assert tracked(store) == {"proj_shared": ("first", ""), "proj_mine": (KEY, "slug-proj_mine")}
    warnings = [r for r in caplog.records if "another team" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].projects == "proj_shared"  # type: ignore[attr-defined]


# --- failures -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (errors.ServerError("HTTP 503", status=503), "server_error"),
        (errors.Forbidden("HTTP 403", status=403), "forbidden"),
        (errors.Timeout("slow"), "timeout"),
        (errors.InvalidResponse("no list"), "invalid_response"),
        (KeyError("a bug"), "invalid_response"),  # anything unforeseen is counted too
    ],
)
def test_a_failure_is_counted_under_its_reason_and_the_last_targets_are_kept(
    failure: BaseException, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    listed = resources(project("proj_a"), project("proj_b"))
    discovery, store = make(Source(listed, failure))
    assert discovery.run()
    before = discovery.targets
    with caplog.at_level(logging.WARNING, logger="exporter.discovery"):
        assert not discovery.run()
    assert discovery.targets == before
    assert set(tracked(store)) == {"proj_a", "proj_b"}
    status = team_status(store, "acme")
    assert status.discovery_errors[POLL_ERROR_REASONS.index(reason)] == 1
    assert sum(status.discovery_errors) == 1
    assert status.discovery_success == NOW  # the last success still stands
    (record,) = caplog.records
    assert record.getMessage() == "project discovery failed"
    assert record.reason == reason  # type: ignore[attr-defined]
    assert record.hint == f"hint for {reason}"  # type: ignore[attr-defined]
    assert record.known_projects == 2  # type: ignore[attr-defined]


def test_a_discovery_cancelled_by_a_stop_counts_nothing() -> None:
    discovery, store = make(Source(errors.Cancelled("shutting down")))
    assert not discovery.run()
    status = team_status(store, KEY)
    assert sum(status.discovery_errors) == 0 and status.discovery_success is None


# --- requests: the pages one discovery reads ------------------------------------------


def paged_client(make_client: Callable[..., LatitudeClient], count: int) -> LatitudeClient:
    ids = [f"proj_{i:05d}" for i in range(count)]

    def answer(request: httpx.Request) -> httpx.Response:
        number = int(request.url.params["page[number]"])
        size = int(request.url.params["page[size]"])
        page = ids[(number - 1) * size : number * size]
        return httpx.Response(200, json={"data": [project(pid) for pid in page]})

    return make_client("https://api.example", transport=StreamingTransport(answer))


@pytest.mark.parametrize(
    ("count", "pages"),
    [
        (0, 1),
        (PROJECTS_PAGE_SIZE - 1, 1),
        (PROJECTS_PAGE_SIZE, 2),  # a full page: the next one, empty, ends the list
        (PROJECTS_PAGE_SIZE + 1, 2),
        (2 * PROJECTS_PAGE_SIZE, 3),
    ],
)
def test_requests_are_the_pages_the_client_reads_at_the_page_boundary(
    make_client: Callable[..., LatitudeClient], count: int, pages: int
) -> None:
    """The budget plans a refresh's span with `requests()`: one too few at exactly a
    page's worth of projects makes every refresh overrun its plan by one request."""
    requests: list[str] = []
    client = paged_client(make_client, count)
    client._on_request = lambda endpoint, code: requests.append(endpoint)
    discovery, _ = make(client)
    assert discovery.run()
    assert len(discovery.targets) == count
    assert len(requests) == pages
    assert discovery.requests() == pages


def test_requests_count_every_page_read_even_for_a_configured_team(
    make_client: Callable[..., LatitudeClient],
) -> None:
    """A configured team without a currency reads every page of the key's projects to
    learn it: the budget plans what /projects lists, not the team's targets. Once the
    currency is known, discovery is no longer needed and costs nothing."""
    requests: list[str] = []
    client = paged_client(make_client, 3 * PROJECTS_PAGE_SIZE)
    client._on_request = lambda endpoint, code: requests.append(endpoint)
    discovery, _ = make(client, targets=[Target("proj_00000")], currency=None)
    assert discovery.requests() == 1  # the estimate before any answer
    assert discovery.run()
    assert len(requests) == 4
    assert discovery.currency and not discovery.needed and discovery.requests() == 0


def test_requests_count_the_pages_listed_not_the_projects_kept(
    make_client: Callable[..., LatitudeClient],
) -> None:
    requests: list[str] = []
    client = paged_client(make_client, 3 * PROJECTS_PAGE_SIZE)
    client._on_request = lambda endpoint, code: requests.append(endpoint)
    discovery, store = make(client, targets=(), currency=None)
    store.add_team("first", rank=-1)  # a team listed first takes some of the projects
    store.set_projects("first", [(f"proj_{i:05d}", "") for i in range(150)], configured=True)
    assert discovery.run()
    assert len(discovery.targets) == 150  # kept: the others belong to the first team
    assert discovery.requests() == len(requests) == 4  # read: every page


def test_a_configured_id_of_exactly_max_id_chars_is_accepted_and_one_more_refused() -> None:
    """The config holds the same bound as discovery: an id is never cut."""
    assert ProjectSettings(id="p" * MAX_ID_CHARS).id == "p" * MAX_ID_CHARS
    with pytest.raises(ValidationError, match="at most 128 characters"):
        ProjectSettings(id="p" * (MAX_ID_CHARS + 1))

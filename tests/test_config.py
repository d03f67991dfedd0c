"""Settings: YAML, env overrides, teams, the token's sources, and every validation message
as one line naming the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from exporter import errors
from exporter.config import (
    ConfigError,
    Settings,
    TokenSource,
    clean_token,
    is_loopback,
    load_settings,
    resolve_teams,
)
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("LATITUDESH_EXPORTER_", "LATITUDESH_AUTH")):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_match_the_design() -> None:
    settings = load_settings(None)
    assert settings.api.base_url == "https://api.latitude.sh"
    assert settings.api.timeout_seconds == 15
    assert settings.api.max_retries == 3
    assert settings.api.requests_per_minute == 50
    assert settings.api.max_response_bytes == 16 * 1024 * 1024
    assert settings.poll.interval_seconds == 300
    assert settings.poll.concurrency == 4
    assert settings.projects == []
    assert settings.teams is None
    assert settings.currency is None
    assert settings.max_products_per_project == 1000
    assert settings.max_servers_per_project == 1000
    assert settings.max_tags_per_server == 20


def test_yaml_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
api: {timeout_seconds: 5, base_url: "http://localhost:1234/"}
currency: EUR
poll: {interval_seconds: 60}
projects:
  - id: proj_a
    plan: c2-small-x86
    products: [si_1, si_2]
""",
    )
    settings = load_settings(path, explicit=True)
    assert settings.api.timeout_seconds == 5
    assert settings.api.base_url == "http://localhost:1234"
    assert settings.currency == "EUR"
    (project,) = settings.projects
    assert (project.id, project.plan, project.products) == (
        "proj_a",
        "c2-small-x86",
        ["si_1", "si_2"],
    )


def test_env_beats_yaml_and_merges_into_nested_sections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "poll: {interval_seconds: 60, concurrency: 8}\n")
    monkeypatch.setenv("LATITUDESH_EXPORTER_POLL__INTERVAL_SECONDS", "120")
    monkeypatch.setenv("LATITUDESH_EXPORTER_CURRENCY", "BRL")
    settings = load_settings(path, explicit=True)
    assert settings.poll.interval_seconds == 120
    assert settings.poll.concurrency == 8  # kept from YAML
    assert settings.currency == "BRL"


def test_the_example_config_is_valid_and_documents_every_key() -> None:
    example = ROOT / "config.example.yaml"
    settings = load_settings(example, explicit=True)
    assert isinstance(settings, Settings)
    text = example.read_text()
    content = yaml.safe_load(text)
    for name, field in Settings.model_fields.items():
        assert name in content, f"{name} missing from config.example.yaml"
        nested = field.annotation
        if isinstance(nested, type) and hasattr(nested, "model_fields"):
            for sub in nested.model_fields:
                assert f"{sub}:" in text, f"{name}.{sub} missing from config.example.yaml"
    for key in ("- name:", "token_env:", "# token_file:", "requests_per_minute:"):
        assert key in text, f"teams[].{key} missing from config.example.yaml"
    for line in text.splitlines():
        stripped = line.strip()
        if (
            stripped
            and not stripped.startswith("#")
            and ":" in stripped
            and not stripped.startswith("- ")
        ):
            assert "#" in line or stripped.endswith(":"), f"uncommented key: {line!r}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "poll: {interval_seconds: 0}",
            "poll.interval_seconds: Input should be greater than or equal to 1",
        ),
        ("poll: {concurrency: 0}", "poll.concurrency: Input should be greater than or equal"),
        ("poll: {intervl: 3}", "poll.intervl: unknown field"),
        ("api: {base_url: ftp://x}", "api.base_url: must start with http:// or https://"),
        ("api: {base_url: 'https://'}", "api.base_url: has no host"),
        ("api: {base_url: 'https://api:99999'}", "api.base_url: is not a valid URL"),
        ("api: {base_url: 'https://api:0'}", "api.base_url: port must be between"),
        ("api: {base_url: 'https://u:p@api'}", "api.base_url: must not hold credentials"),
        ("api: {base_url: 'https://api/?x=1'}", "api.base_url: must not have a query"),
        ("api: {base_url: 'https://a pi'}", "api.base_url: must not contain spaces"),
        ("api: {base_url: 'http://[::1'}", "api.base_url: is not a valid URL"),
        ("api: {timeout_seconds: -1}", "api.timeout_seconds: Input should be greater than 0"),
        ("api: {max_retries: 99}", "api.max_retries: Input should be less than or equal to 10"),
        ("api: {requests_per_minute: 0}", "api.requests_per_minute: Input should be greater"),
        (
            "api: {token: abc}",
            "api: the API token is never read from the config file; set the "
            "LATITUDESH_AUTH_TOKEN environment variable or api.token_file",
        ),
        ("currency: dollars", "currency: String should match pattern"),
        ("projects: [{plan: x}]", "projects[#1].id: Field required"),
        ("projects: [{id: a}, {id: a}]", "projects: project id 'a' is listed twice"),
        ("max_products_per_project: 0", "max_products_per_project: Input should be greater"),
        ("bogus: 1", "bogus: unknown field"),
        ("- a list", "the top level must be a mapping"),
        ("poll: {interval_seconds: [", "line 1"),
        ("teams: []", "teams: List should have at least 1 item"),
        (
            "teams: [{name: a}]",
            "teams[a]: Value error, needs exactly one of token_env or token_file",
        ),
        ("teams: [{name: a, token_env: X, token_file: /t}]", "needs exactly one of"),
        (
            "teams: [{name: a, token: secret}]",
            "teams[a]: the API token is never read from the config file",
        ),
        (
            "teams: [{name: a, token_env: A}, {name: a, token_env: B}]",
            "team name 'a' is used twice",
        ),
        (
            "teams: [{name: a, token_env: A, projects: [{id: p}]},"
            " {name: b, token_env: B, projects: [{id: p}]}]",
            "project id 'p' is listed twice (teams 'a' and 'b')",
        ),
        (
            "projects: [{id: p}]\nteams: [{name: a, token_env: A}]",
            "top-level projects cannot be used with teams",
        ),
        ("teams: [{name: 'bad name', token_env: A}]", "teams[#1].name: String should match"),
        ("teams: [{name: a, token_env: '1X'}]", "teams[a].token_env: String should match"),
    ],
)
def test_every_validation_error_is_one_line_naming_the_field(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), explicit=True)
    assert message.replace("Value error, ", "") in str(caught.value)
    assert "\n" not in str(caught.value)


def test_deep_or_exploding_yaml_is_refused(tmp_path: Path) -> None:
    deep = "a: " + "[" * 5000 + "]" * 5000
    with pytest.raises(ConfigError, match="nested"):
        load_settings(write(tmp_path, deep), explicit=True)
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in "bcdefgh":
        previous = chr(ord(level) - 1)
        laughs.append(f"{level}: &{level} [" + ", ".join([f"*{previous}"] * 10) + "]")
    with pytest.raises(ConfigError, match="more than 100000 values"):
        load_settings(write(tmp_path, "\n".join(laughs)), explicit=True)


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config.file: .*missing.yaml: no such file"):
        load_settings(tmp_path / "missing.yaml", explicit=True)


def test_the_default_config_file_is_optional(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "config.yaml").poll.interval_seconds == 300


def test_a_misspelt_env_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATITUDESH_EXPORTER_POL__INTERVAL_SECONDS", "1")
    with pytest.raises(ConfigError, match="LATITUDESH_EXPORTER_POL__INTERVAL_SECONDS: unknown"):
        load_settings(None)


def test_bad_env_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATITUDESH_EXPORTER_POLL__CONCURRENCY", "many")
    with pytest.raises(
        ConfigError,
        match=r"^LATITUDESH_EXPORTER_POLL__CONCURRENCY \(poll\.concurrency\): Input should be a "
        "valid integer",
    ):
        load_settings(None)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LATITUDESH_EXPORTER_TEAMS", '[{"name": "a",'),
        ("LATITUDESH_EXPORTER_PROJECTS", "not json"),
        ("LATITUDESH_EXPORTER_API", "{"),
        ("LATITUDESH_EXPORTER_TEAMS", "[" * 10_000 + "]" * 10_000),
    ],
)
def test_bad_json_in_the_environment_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert str(caught.value).startswith(f"{name}: ")
    assert "\n" not in str(caught.value)


def test_teams_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LATITUDESH_EXPORTER_TEAMS",
        '[{"name": "prod", "token_env": "KEY_PROD", "requests_per_minute": 20},'
        ' {"name": "br", "token_env": "KEY_BR", "currency": "BRL",'
        '  "projects": [{"id": "proj_x"}]}]',
    )
    monkeypatch.setenv("KEY_PROD", "key-one")
    monkeypatch.setenv("KEY_BR", "Bearer key-two")
    prod, br = resolve_teams(load_settings(None))
    assert (prod.name, prod.requests_per_minute, prod.currency, prod.projects) == (
        "prod",
        20,
        None,
        (),
    )
    assert prod.token.get().get_secret_value() == "key-one"
    assert (br.name, br.requests_per_minute, br.currency) == ("br", 50, "BRL")
    assert br.token.get().get_secret_value() == "key-two"
    assert [p.id for p in br.projects] == ["proj_x"]


def test_a_team_whose_variable_is_unset_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATITUDESH_EXPORTER_TEAMS", '[{"name": "a", "token_env": "NOPE_KEY"}]')
    with pytest.raises(ConfigError, match=r"teams\[[a-z]+\]\.token_env: NOPE_KEY is not set"):
        resolve_teams(load_settings(None))


def test_one_team_without_teams_is_named_by_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    (team,) = resolve_teams(load_settings(None), {"LATITUDESH_AUTH_TOKEN": "k"})
    assert team.name is None and team.label == "default"


def test_token_from_env_strips_a_pasted_bearer_prefix() -> None:
    (team,) = resolve_teams(load_settings(None), {"LATITUDESH_AUTH_TOKEN": " Bearer abc123 \n"})
    assert team.token.get().get_secret_value() == "abc123"
    assert "abc123" not in repr(team.token.get()) and "abc123" not in repr(team.token)


def test_token_env_wins_over_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file")
    path = write(tmp_path, f"api: {{token_file: {token_file}}}")
    (team,) = resolve_teams(
        load_settings(path, explicit=True), {"LATITUDESH_AUTH_TOKEN": "from-env"}
    )
    assert team.token.get().get_secret_value() == "from-env"


def test_token_file_is_read_again_at_every_request(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    token_file.chmod(0o600)
    source = TokenSource(path=token_file)
    assert source.get().get_secret_value() == "first-token"
    token_file.write_text("second-token-longer\n")
    os.utime(token_file, (1, 1))  # make sure the stamp differs even on coarse clocks
    assert source.get().get_secret_value() == "second-token-longer"
    assert source.permission_warning() is None
    stamp = token_file.stat()
    token_file.write_text("third-token-sameish\n")  # same size
    os.utime(token_file, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # same mtime
    assert source.get().get_secret_value() == "third-token-sameish"


def test_a_vanished_or_broken_token_file_at_run_time_is_token_unreadable(
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("good-token")
    source = TokenSource(path=token_file)
    assert source.current() == "good-token"
    token_file.unlink()
    with pytest.raises(errors.TokenUnavailable, match="no such file"):
        source.get()
    token_file.write_bytes("tökén".encode())
    with pytest.raises(errors.TokenUnavailable, match="non-ASCII"):
        source.get()
    token_file.write_bytes(b"\xff\xfe")
    with pytest.raises(errors.TokenUnavailable, match="not text"):
        source.get()
    token_file.write_text("")
    with pytest.raises(errors.TokenUnavailable, match="empty"):
        source.get()
    token_file.write_text("back-again")
    assert source.get().get_secret_value() == "back-again"


def test_world_readable_token_file_is_flagged(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("t")
    token_file.chmod(0o644)
    warning = TokenSource(path=token_file).permission_warning()
    assert warning is not None and warning.mode == 0o644


def test_missing_token_says_how_to_provide_it() -> None:
    with pytest.raises(
        ConfigError,
        match=r"no API token: set the LATITUDESH_AUTH_TOKEN "
        r"environment variable or api\.token_file",
    ):
        resolve_teams(load_settings(None), {})


def test_missing_token_file_at_start_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"api.token_file: .*nope"):
        TokenSource(path=tmp_path / "nope")


@pytest.mark.parametrize(
    "raw", ["", "   ", "Bearer ", "two words", "tab\there", "ключ", "x" * 5000]
)
def test_empty_or_malformed_tokens_are_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match="LATITUDESH_AUTH_TOKEN: the API token"):
        clean_token(raw, "LATITUDESH_AUTH_TOKEN")


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://localhost", True),
        ("http://[::1]:1", True),
        ("http://api.example", False),
        ("http://10.0.0.1", False),
    ],
)
def test_loopback_is_recognised_for_the_plain_http_warning(url: str, loopback: bool) -> None:
    assert is_loopback(url) is loopback


def test_a_misspelt_nested_env_variable_is_named_by_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: reported by its dotted key (`poll.intervalseconds`), a name the operator
    never wrote."""
    monkeypatch.setenv("LATITUDESH_EXPORTER_POLL__INTERVALSECONDS", "5")
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert str(caught.value) == (
        "LATITUDESH_EXPORTER_POLL__INTERVALSECONDS (poll.intervalseconds): unknown field "
        "(check the spelling against the documentation)"
    )


def test_a_team_in_an_env_json_is_named_by_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "LATITUDESH_EXPORTER_TEAMS",
        '[{"name": "prod", "token_env": "A"}, {"name": "br", "token_env": "B", '
        '"requests_per_minute": -1}]',
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(None)
    assert str(caught.value).startswith(
        "LATITUDESH_EXPORTER_TEAMS (teams[br].requests_per_minute): Input should be greater"
    )

"""Settings from the YAML file and `LATITUDESH_EXPORTER_*` env vars; the API token sources.

The models here are the schema, the validator and the reference documentation of the
config file. Env beats YAML beats defaults, as pydantic-settings orders its sources.
The token is deliberately not a setting: it comes from an environment variable
(`LATITUDESH_AUTH_TOKEN`, the one Latitude.sh's Terraform provider reads, or a team's
`token_env`) or from a file, never from the YAML, so a config file can be committed and
shared without leaking it. Every problem is one `ConfigError` line naming the field.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.exceptions import SettingsError

from exporter.errors import TokenUnavailable
from exporter.files import FileUnreadable, read_file
from exporter.models import MAX_ID_CHARS

ENV_PREFIX = "LATITUDESH_EXPORTER_"
TOKEN_ENV = "LATITUDESH_AUTH_TOKEN"  # noqa: S105 (a variable name, not a secret)
#: The `team` label of a single team that is not named and has no slug from /projects.
DEFAULT_TEAM = "default"
_TOKEN_KEYS = frozenset({"token", "auth_token", "api_token", "api_key", TOKEN_ENV.lower()})
_TOKEN_HINT = f"set the {TOKEN_ENV} environment variable or api.token_file"
#: A config file holds a few dozen values; anything much larger is a mistake or an attack
#: (YAML aliases can make a small file expand to billions of values).
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 32
#: What Latitude.sh allows one API key: GET requests a minute.
API_REQUESTS_PER_MINUTE = 60
#: Longest token accepted: keys are ~40 characters; this bounds a file read by mistake.
MAX_TOKEN_CHARS = 4096


class ConfigError(Exception):
    """A config problem, phrased as one line that names the field."""


class Section(BaseModel):
    """A section of a config file: unknown keys are errors (a typo must not be ignored),
    values are frozen. The web config's sections share it."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _refuse_inline_token(data: Any, hint: str) -> Any:
    if isinstance(data, dict) and _TOKEN_KEYS & {str(k).lower() for k in data}:
        raise ValueError(f"the API token is never read from the config file; {hint}")
    return data


def check_base_url(value: str) -> str:
    """An http(s) URL with a host and a port in range, nothing that could carry secrets."""
    if any(ch.isspace() for ch in value) or not value.isprintable():
        raise ValueError("must not contain spaces or control characters")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:  # a port out of range, brackets that don't close
        raise ValueError(f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not parts.hostname:
        raise ValueError("has no host")
    if port == 0:
        raise ValueError("port must be between 1 and 65535")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not hold credentials (the token is sent in a header)")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value.rstrip("/")


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiSettings(Section):
    base_url: str = Field("https://api.latitude.sh", description="Root of the Latitude.sh API.")
    timeout_seconds: float = Field(
        15.0,
        gt=0,
        le=300,
        description="Bound on one HTTP request, end to end: connect, headers and the whole body.",
    )
    max_retries: int = Field(
        3,
        ge=0,
        le=10,
        description="Retries of one request on 429, 5xx, timeouts and connection errors.",
    )
    requests_per_minute: float = Field(
        50,
        gt=0,
        le=100_000,
        description=(
            f"Request budget for the API key. Latitude.sh allows {API_REQUESTS_PER_MINUTE} "
            "GET/min per key; the default leaves headroom for other users of the same key."
        ),
    )
    max_retry_wait_seconds: float = Field(
        120.0,
        gt=0,
        le=3600,
        description="Cap on the wait a 429 asks for: a longer one is cut to this, then retried.",
    )
    max_response_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=256 * 1024 * 1024,
        description="Answers larger than this, decoded, are refused as invalid_response.",
    )
    token_file: Path | None = Field(
        None,
        description=(
            "File holding the API token (Docker/Kubernetes secret). Read again at every "
            f"request. Used when {TOKEN_ENV} is not set."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _no_inline_token(cls, data: Any) -> Any:
        return _refuse_inline_token(data, _TOKEN_HINT)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_base_url(value)


class PollSettings(Section):
    interval_seconds: float = Field(
        300,
        ge=1,
        le=86400,
        description="How often every project is polled. Usage changes slowly; don't hammer.",
    )
    concurrency: int = Field(4, ge=1, le=64, description="Projects polled at once, per team.")


class StateSettings(Section):
    enabled: bool = Field(
        True,
        description="Keep the last answer of every project in a file, so that a restart "
        "serves them at once; false: in memory only.",
    )
    path: Path | None = Field(
        None,
        description="The state file (SQLite). Default: state.db in the per-user state "
        "directory ($XDG_STATE_HOME or ~/.local/state)/latitudesh-exporter; the image "
        "sets /var/lib/latitudesh-exporter/state.db.",
    )

    def resolved_path(self, environ: Mapping[str, str], *, demo: bool = False) -> Path:
        """The file in use: `path`, or the per-user default (the demo's own file beside
        it, so a demo never mixes with a real account)."""
        if self.path is not None:
            return self.path
        base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "latitudesh-exporter" / ("demo.db" if demo else "state.db")


class ProjectSettings(Section):
    id: str = Field(
        min_length=1, max_length=MAX_ID_CHARS, description="Project id, e.g. proj_r0MK4O4kDa95w."
    )
    plan: str | None = Field(None, max_length=128, description="Optional filter[plan].")
    products: list[str] = Field(
        default_factory=list,
        max_length=1000,
        description="Optional filter[products][] (product ids).",
    )


_CURRENCY = r"^[A-Z]{3}$"


class TeamSettings(Section):
    """One API key: a team of Latitude.sh, polled in isolation from the others."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="The `team` label; unique."
    )
    token_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding this team's key.",
    )
    token_file: Path | None = Field(None, description="File holding this team's key.")
    requests_per_minute: float | None = Field(
        None,
        gt=0,
        le=100_000,
        description="This key's own budget (default: api.requests_per_minute).",
    )
    currency: str | None = Field(
        None,
        pattern=_CURRENCY,
        description="ISO 4217 code; null takes the team's.",
    )
    projects: list[ProjectSettings] = Field(
        default_factory=list,
        description="Projects to poll; empty discovers the team's.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_inline_token(cls, data: Any) -> Any:
        return _refuse_inline_token(data, "use token_env or token_file")

    @model_validator(mode="after")
    def _one_token_source(self) -> TeamSettings:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("needs exactly one of token_env or token_file")
        return self


#: Shares of a budget (percent) at which its alerts warn, when a budget names none.
DEFAULT_BUDGET_LEVELS = (50.0, 75.0, 90.0, 100.0)


class BudgetSettings(Section):
    """An amount a team, one of its projects or one of its tags may spend per billing
    period, and the shares of it at which to warn."""

    team: str | None = Field(
        None,
        max_length=63,
        description="The team (teams[].name, or default); may be left out with one team.",
    )
    project: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_ID_CHARS,
        description="A project id or slug: the budget is that project's spend.",
    )
    tag: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="A tag: the spend of the team's servers carrying it, across projects.",
    )
    amount: float = Field(
        gt=0,
        le=1e12,
        allow_inf_nan=False,
        description="Per billing period, in the team's currency (main units, not cents).",
    )
    levels: tuple[float, ...] = Field(
        DEFAULT_BUDGET_LEVELS,
        min_length=1,
        max_length=10,
        description="Percentages of the amount at which to warn, e.g. [50, 75, 90, 100].",
    )

    @field_validator("levels")
    @classmethod
    def _levels_are_percentages(cls, levels: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < level <= 1000 for level in levels):
            raise ValueError("each level is a percentage above 0 and at most 1000")
        if len(set(levels)) != len(levels):
            raise ValueError("a level is listed twice")
        return tuple(sorted(levels))

    @model_validator(mode="after")
    def _one_scope(self) -> BudgetSettings:
        if self.project is not None and self.tag is not None:
            raise ValueError("names a project and a tag: a budget has one scope (or neither)")
        return self

    @property
    def scope(self) -> tuple[str, str]:
        """("project", id or slug), ("tag", tag) or ("team", "")."""
        if self.project is not None:
            return "project", self.project
        if self.tag is not None:
            return "tag", self.tag
        return "team", ""


class Settings(BaseSettings):
    """The whole config; see config.example.yaml for a commented copy."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )
    api: ApiSettings = Field(default_factory=ApiSettings)
    currency: str | None = Field(
        None,
        pattern=_CURRENCY,
        description="ISO 4217 code for the `currency` label; null takes the team's.",
    )
    poll: PollSettings = Field(default_factory=PollSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    projects: list[ProjectSettings] = Field(
        default_factory=list,
        description="Projects to poll; empty discovers every project of the team.",
    )
    teams: list[TeamSettings] | None = Field(
        None,
        min_length=1,
        max_length=100,
        description="Several teams (one API key each); absent means one team as above.",
    )
    max_products_per_project: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Cardinality guard: cheaper products beyond this fold into __other__.",
    )
    max_servers_per_project: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Cardinality guard: cheaper servers beyond this fold into __other__.",
    )
    max_tags_per_server: int = Field(
        20,
        ge=1,
        le=1000,
        description="Cardinality guard: a server's tags beyond this fold into __other__.",
    )
    budgets: list[BudgetSettings] = Field(
        default_factory=list,
        max_length=1000,
        description="Spending budgets per period: a team's, a project's or a tag's.",
    )

    @field_validator("projects")
    @classmethod
    def _unique_ids(cls, projects: list[ProjectSettings]) -> list[ProjectSettings]:
        _no_duplicate_projects(projects, {})
        return projects

    @model_validator(mode="after")
    def _budgets_name_known_teams(self) -> Settings:
        teams = [team.name for team in self.teams] if self.teams is not None else [DEFAULT_TEAM]
        seen: dict[tuple[str, str, str], int] = {}
        for index, budget in enumerate(self.budgets, start=1):
            where = f"budgets[#{index}].team"
            if budget.team is None and len(teams) > 1:
                raise ValueError(f"{where}: required with several teams ({', '.join(teams)})")
            team = budget.team if budget.team is not None else teams[0]
            if team not in teams:
                raise ValueError(f"{where}: no team is named {team!r} ({', '.join(teams)})")
            key = (team, *budget.scope)
            if key in seen:
                raise ValueError(
                    f"budgets[#{index}]: the same scope as budgets[#{seen[key]}] "
                    "(one budget a scope: its series would be the same)"
                )
            seen[key] = index
        return self

    @model_validator(mode="after")
    def _teams_are_consistent(self) -> Settings:
        if self.teams is None:
            return self
        if self.projects:
            raise ValueError(
                "top-level projects cannot be used with teams: list them under each team's projects"
            )
        names: set[str] = set()
        owners: dict[str, str] = {}
        for team in self.teams:
            if team.name in names:
                raise ValueError(f"team name {team.name!r} is used twice")
            names.add(team.name)
            _no_duplicate_projects(team.projects, owners, team.name)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        content = _YAML_CONTENT.get()
        if content:
            # The file as `_check_yaml` read and checked it: read once, so that what
            # is validated is what was checked, and the read is bounded.
            sources.append(InitSettingsSource(settings_cls, init_kwargs=content))
        return tuple(sources)


def _no_duplicate_projects(
    projects: list[ProjectSettings], owners: dict[str, str], team: str = ""
) -> None:
    for project in projects:
        if project.id in owners:
            where = f" (teams {owners[project.id]!r} and {team!r})" if team else ""
            raise ValueError(f"project id {project.id!r} is listed twice{where}")
        owners[project.id] = team


#: The YAML file's content `Settings` reads, for the duration of one `load_settings` call.
_YAML_CONTENT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "yaml_content", default=None
)
#: A config file holds a few kilobytes; this bounds a read of the wrong file.
MAX_CONFIG_BYTES = 4 * 1024 * 1024


def load_settings(path: Path | None, *, explicit: bool = False) -> Settings:
    """Read the YAML file (if any) and the environment into validated Settings.

    `explicit` says the user named the file, so its absence is an error; the default
    `config.yaml` is optional.
    """
    content = None
    if path is not None and (explicit or path.exists()):
        content = _check_yaml(path)
    _check_env(os.environ)
    token = _YAML_CONTENT.set(content)
    try:
        return Settings()
    except ValidationError as exc:
        raw = {**(content or {}), **_env_values(os.environ)}
        raise ConfigError(format_validation_error(exc, raw=raw, environ=os.environ)) from None
    except SettingsError:
        # _check_env has read every complex value already; this is a last resort.
        raise ConfigError(f"{ENV_PREFIX}*: a value is not valid JSON") from None
    finally:
        _YAML_CONTENT.reset(token)


def _is_complex(annotation: Any) -> bool:
    """Whether pydantic-settings reads the field's env value as JSON."""
    if get_origin(annotation) in (Union, type(int | None)):
        return any(_is_complex(arg) for arg in get_args(annotation))
    if get_origin(annotation) in (list, dict):
        return True
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _check_env(environ: Mapping[str, str]) -> None:
    """pydantic-settings ignores unknown prefixed variables and tracebacks on bad JSON;
    both must be one line naming the variable."""
    for name, value in environ.items():
        if not name.upper().startswith(ENV_PREFIX):
            continue
        field = name[len(ENV_PREFIX) :].split("__", 1)[0].lower()
        if field not in Settings.model_fields:
            raise ConfigError(f"{name}: unknown setting (check the spelling against the README)")
        if "__" in name or not _is_complex(Settings.model_fields[field].annotation):
            continue
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            raise ConfigError(f"{name}: not valid JSON") from None
        _check_size(parsed, name)


def read_yaml(path: Path, *, field: str, max_bytes: int) -> Any:
    """A YAML file read with a bound (`files.read_file`) and parsed safely; every problem
    one line naming `field` and the file: unreadable, too large, not UTF-8, nested too
    deeply, invalid YAML (with its line). The config and the web config both read so."""
    where = f"{field}: {path}"
    try:
        raw = read_file(path, max_bytes=max_bytes)
    except FileUnreadable as exc:
        raise ConfigError(f"{field}: {exc}") from None
    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not UTF-8 text") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{where}:{line}: {problem}") from None


def _check_yaml(path: Path) -> dict[str, Any] | None:
    """The config file's mapping; files too deep or too large for a config refused
    before anything walks them."""
    content = read_yaml(path, field="config.file", max_bytes=MAX_CONFIG_BYTES)
    if content is not None and not isinstance(content, dict):
        raise ConfigError(f"config.file: {path}: the top level must be a mapping")
    _check_size(content, f"config.file: {path}")
    return content


def _check_size(content: Any, where: str) -> None:
    """Depth and expanded size, each shared (aliased) node counted once per use."""
    sizes: dict[int, int] = {}

    def size(node: Any, depth: int) -> int:
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_CONFIG_DEPTH} levels deep")
        if not isinstance(node, dict | list):
            return 1
        known = sizes.get(id(node))
        if known is None:
            children = node.values() if isinstance(node, dict) else node
            known = 1 + sum(size(child, depth + 1) for child in children)
            if known > MAX_CONFIG_VALUES:
                raise ConfigError(f"{where}: more than {MAX_CONFIG_VALUES} values")
            sizes[id(node)] = known
        return known

    size(content, 0)


def format_validation_error(
    exc: ValidationError,
    prefix: str = "",
    *,
    raw: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """All problems on one line, each naming its field as a dotted path: a list item by
    its `name` when it has one (`teams[prod].token_env`), else by its place counted from
    1 (`projects[#2].id`); a value that came from an environment variable by that variable."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error["loc"])
        field = _field_path(loc, raw) or "config"
        variable = _variable_of(loc, environ) if environ is not None else None
        if variable is not None:
            field = f"{variable} ({field})"
        message = " ".join(error["msg"].removeprefix("Value error, ").split())
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling against the documentation)"
        parts.append(f"{prefix}{field}: {message}")
    return "; ".join(parts)


def _field_path(loc: tuple[int | str, ...], raw: Mapping[str, Any] | None) -> str:
    path = ""
    node: Any = raw
    for index, part in enumerate(loc):
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            about_the_name = loc[index + 1 : index + 2] == ("name",)
            named = isinstance(name, str) and name.isprintable() and not about_the_name
            path += f"[{name}]" if named else f"[#{part + 1}]"
            node = item
        else:
            path += f".{part}" if path else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return path


def _variable_of(loc: tuple[int | str, ...], environ: Mapping[str, str]) -> str | None:
    """The `LATITUDESH_EXPORTER_*` variable that set the value at `loc`, if one did: the
    nested one (`..._POLL__INTERVAL_SECONDS`) or the JSON of a whole field (`..._TEAMS`)."""
    names = {name.upper(): name for name in environ}
    keys = [str(p) for p in loc if not isinstance(p, int)]
    for depth in range(len(keys), 0, -1):
        wanted = (ENV_PREFIX + "__".join(keys[:depth])).upper()
        if wanted in names:
            return names[wanted]
    return None


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The whole-field JSON values of the environment, for naming list items."""
    values: dict[str, Any] = {}
    for name, value in environ.items():
        if name.upper().startswith(ENV_PREFIX) and "__" not in name[len(ENV_PREFIX) :]:
            try:
                values[name[len(ENV_PREFIX) :].lower()] = json.loads(value)
            except (ValueError, RecursionError):
                continue
    return values


@dataclass(frozen=True, slots=True)
class TokenFileWarning:
    path: Path
    mode: int


class TokenSource:
    """Hands the client the current token, read again from its file at every request.

    Re-reading lets an operator rotate a Kubernetes/Docker secret without a restart.
    Each read is bounded (`files.read_file`: a regular file, read within
    `files.READ_SECONDS`), so a hung secret mount fails a poll as `token_unreadable`
    instead of holding it. No lock is held across a read: the log redactor asks
    `current()` for the last token read and never waits on the file. At run time a
    token that cannot be read raises `TokenUnavailable` (counted, retried: a secret
    being rotated can vanish for a moment); at start-up it is a `ConfigError`.
    """

    def __init__(
        self,
        *,
        static: SecretStr | None = None,
        path: Path | None = None,
        field: str = "api.token_file",
        origin: str | None = None,
    ) -> None:
        if static is None and path is None:
            raise ConfigError(f"no API token: {_TOKEN_HINT}")
        self._static = static
        self._path = path
        self._field = field
        self._origin = origin or (f"the file {path} ({field})" if path else "the environment")
        #: The last token read: replaced whole, never mutated, so readers need no lock.
        self._cached: SecretStr | None = static
        if path is not None:
            try:
                self.get()
            except TokenUnavailable as exc:
                raise ConfigError(str(exc)) from None

    def __repr__(self) -> str:
        return f"TokenSource(path={self._path!r})" if self._path else "TokenSource(static)"

    @property
    def path(self) -> Path | None:
        return self._path

    @property
    def field(self) -> str:
        """The setting the token comes from, as errors name it."""
        return self._field

    @property
    def origin(self) -> str:
        """Where the key comes from, in words (`the environment variable KEY_BR`, `the
        file /run/secrets/key (teams.br.token_file)`): what a hint tells the operator
        to fix."""
        return self._origin

    def get(self) -> SecretStr:
        if self._static is not None:
            return self._static
        assert self._path is not None
        try:
            raw = read_file(self._path, max_bytes=MAX_TOKEN_CHARS)
        except FileUnreadable as exc:
            raise TokenUnavailable(f"{self._field}: {exc}") from None
        try:
            token = clean_token(raw.decode("utf-8"), self._field)
        except UnicodeDecodeError:
            raise TokenUnavailable(f"{self._field}: the API token is not text") from None
        except ConfigError as exc:
            raise TokenUnavailable(str(exc)) from None
        cached = self._cached
        if cached is None or cached.get_secret_value() != token:
            self._cached = cached = SecretStr(token)
        return cached

    def current(self) -> str | None:
        """The last token read, without touching the file: for the log redactor."""
        cached = self._cached
        return cached.get_secret_value() if cached is not None else None

    def reload(self) -> None:
        """SIGHUP: nothing to forget, the file is read at every request; kept so that
        every source of secrets answers the same call."""

    def permission_warning(self) -> TokenFileWarning | None:
        """Set when the token file can be read by every user of the machine."""
        if self._path is None:
            return None
        try:
            mode = self._path.stat().st_mode
        except OSError:
            return None
        if mode & stat.S_IROTH:
            return TokenFileWarning(self._path, stat.S_IMODE(mode))
        return None


def clean_token(raw: str, field: str) -> str:
    """Strip whitespace and a pasted `Bearer ` prefix: the API wants the raw token,
    which goes into an HTTP header, so it must be printable ASCII without spaces."""
    if len(raw) > MAX_TOKEN_CHARS:
        raise ConfigError(f"{field}: the API token is longer than {MAX_TOKEN_CHARS} characters")
    token = re.sub(r"(?i)^\s*bearer(\s+|$)", "", raw).strip()
    if not token:
        raise ConfigError(f"{field}: the API token is empty; {_TOKEN_HINT}")
    if not token.isascii():
        raise ConfigError(f"{field}: the API token holds non-ASCII characters")
    if any(ch.isspace() for ch in token) or not token.isprintable():
        raise ConfigError(f"{field}: the API token contains whitespace or control characters")
    return token


@dataclass(frozen=True, slots=True)
class TeamConfig:
    """One API key and what to poll with it, resolved from the settings and env."""

    #: The `team` label; None takes the team's slug from /projects (DEFAULT_TEAM without).
    name: str | None
    token: TokenSource
    requests_per_minute: float
    currency: str | None
    projects: tuple[ProjectSettings, ...]

    @property
    def label(self) -> str:
        return self.name or DEFAULT_TEAM


def resolve_teams(settings: Settings, environ: Mapping[str, str] | None = None) -> list[TeamConfig]:
    """Every team with its token source; a missing token is a ConfigError naming it."""
    environ = os.environ if environ is None else environ
    if settings.teams is None:
        raw = environ.get(TOKEN_ENV)
        if raw is not None and raw.strip():
            token = TokenSource(
                static=SecretStr(clean_token(raw, TOKEN_ENV)),
                origin=f"the environment variable {TOKEN_ENV}",
            )
        else:
            token = TokenSource(path=settings.api.token_file)
        return [
            TeamConfig(
                None,
                token,
                settings.api.requests_per_minute,
                settings.currency,
                tuple(settings.projects),
            )
        ]
    teams = []
    for team in settings.teams:
        field = f"teams[{team.name}]"
        if team.token_env is not None:
            raw = environ.get(team.token_env)
            if raw is None or not raw.strip():
                raise ConfigError(f"{field}.token_env: {team.token_env} is not set")
            token = TokenSource(
                static=SecretStr(clean_token(raw, f"{field}.token_env ({team.token_env})")),
                origin=f"the environment variable {team.token_env}",
            )
        else:
            token = TokenSource(path=team.token_file, field=f"{field}.token_file")
        teams.append(
            TeamConfig(
                team.name,
                token,
                team.requests_per_minute or settings.api.requests_per_minute,
                team.currency,
                tuple(team.projects),
            )
        )
    return teams

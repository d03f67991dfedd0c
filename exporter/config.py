"""Settings from the YAML file and `LATITUDESH_EXPORTER_*` env vars; the API token source.

The models here are the schema, the validator and the reference documentation of the
config file. Env beats YAML beats defaults, as pydantic-settings orders its sources.
The token is deliberately not a setting: it comes from `LATITUDESH_AUTH_TOKEN` (the
variable Latitude.sh's Terraform provider reads) or from `api.token_file`, never from
the YAML, so a config file can be committed and shared without leaking it.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

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
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "LATITUDESH_EXPORTER_"
TOKEN_ENV = "LATITUDESH_AUTH_TOKEN"  # noqa: S105 (a variable name, not a secret)
DEFAULT_CONFIG_FILE = Path("config.yaml")
_TOKEN_KEYS = frozenset({"token", "auth_token", "api_token", "api_key", TOKEN_ENV.lower()})
_TOKEN_HINT = f"set the {TOKEN_ENV} environment variable or api.token_file"


class ConfigError(Exception):
    """A config problem, phrased as one line that names the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiSettings(_Section):
    base_url: str = Field(
        "https://api.latitude.sh", description="Root of the Latitude.sh API."
    )
    timeout_seconds: float = Field(
        15.0, gt=0, le=300, description="Timeout of one HTTP request (connect and read)."
    )
    max_retries: int = Field(
        3, ge=0, le=10,
        description="Retries of one request on 429, 5xx, timeouts and connection errors.",
    )
    requests_per_minute: float = Field(
        50, gt=0,
        description=(
            "Request budget for the API key. Latitude.sh allows 60 GET/min per key; "
            "the default leaves headroom for other users of the same key."
        ),
    )
    max_retry_wait_seconds: float = Field(
        120.0, gt=0, le=3600,
        description="Cap on the wait a 429 asks for; a longer wait fails the poll instead.",
    )
    max_response_bytes: int = Field(
        64 * 1024 * 1024, ge=1024,
        description="Answers larger than this are refused as invalid_response.",
    )
    token_file: Path | None = Field(
        None,
        description=(
            "File holding the API token (Docker/Kubernetes secret). Re-read when it "
            f"changes. Used when {TOKEN_ENV} is not set."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _refuse_inline_token(cls, data: Any) -> Any:
        if isinstance(data, dict) and _TOKEN_KEYS & {str(k).lower() for k in data}:
            raise ValueError(f"the API token is never read from the config file; {_TOKEN_HINT}")
        return data

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


class PollSettings(_Section):
    interval_seconds: float = Field(
        300, ge=1, le=86400,
        description="How often every project is polled. Usage changes slowly; don't hammer.",
    )
    concurrency: int = Field(4, ge=1, le=64, description="Projects polled at once.")


class ProjectSettings(_Section):
    id: str = Field(min_length=1, description="Project id, e.g. proj_r0MK4O4kDa95w.")
    plan: str | None = Field(None, description="Optional filter[plan].")
    products: list[str] = Field(
        default_factory=list, description="Optional filter[products][] (product ids)."
    )


class Settings(BaseSettings):
    """The whole config; see config.example.yaml for a commented copy."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )
    _yaml_file: ClassVar[Path | None] = None

    api: ApiSettings = Field(default_factory=ApiSettings)
    currency: str | None = Field(
        None, pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code for the `currency` label; null takes the team's.",
    )
    poll: PollSettings = Field(default_factory=PollSettings)
    projects: list[ProjectSettings] = Field(
        default_factory=list,
        description="Projects to poll; empty discovers every project of the team.",
    )
    max_products_per_project: int = Field(
        1000, ge=1,
        description="Cardinality guard: cheaper products beyond this fold into __other__.",
    )

    @field_validator("projects")
    @classmethod
    def _unique_ids(cls, projects: list[ProjectSettings]) -> list[ProjectSettings]:
        seen: set[str] = set()
        for project in projects:
            if project.id in seen:
                raise ValueError(f"project id {project.id!r} is listed twice")
            seen.add(project.id)
        return projects

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
        if cls._yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls._yaml_file))
        return tuple(sources)


def load_settings(path: Path | None, *, explicit: bool = False) -> Settings:
    """Read the YAML file (if any) and the environment into validated Settings.

    `explicit` says the user named the file, so its absence is an error; the default
    `config.yaml` is optional.
    """
    if path is not None and not path.is_file():
        if explicit:
            raise ConfigError(f"config.file: {path}: no such file")
        path = None
    if path is not None:
        _check_yaml(path)
    _check_env_names(os.environ)
    bound: type[Settings] = type("Settings", (Settings,), {"_yaml_file": path})
    try:
        return bound()
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def _check_env_names(environ: Mapping[str, str]) -> None:
    """pydantic-settings ignores unknown prefixed variables; a typo there must not."""
    for name in environ:
        if not name.upper().startswith(ENV_PREFIX):
            continue
        field = name[len(ENV_PREFIX):].split("__", 1)[0].lower()
        if field not in Settings.model_fields:
            raise ConfigError(f"{name}: unknown setting (check the spelling against the README)")


def _check_yaml(path: Path) -> None:
    """pydantic-settings parses the file again; this turns YAML errors into one line."""
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config.file: {path}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config.file: {path}:{where}: {problem}") from None
    if content is not None and not isinstance(content, dict):
        raise ConfigError(f"config.file: {path}: the top level must be a mapping")


def format_validation_error(exc: ValidationError) -> str:
    """All problems on one line, each naming its field as a dotted path."""
    parts = []
    for error in exc.errors(include_url=False):
        field = ".".join(str(p) for p in error["loc"]) or "config"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field (check the spelling against config.example.yaml)"
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


TlsVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
ClientAuth = Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                     "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"]


class TlsServerConfig(_Section):
    """`tls_server_config` of the Prometheus exporter-toolkit web-config.yml format."""

    cert_file: Path
    key_file: Path
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: TlsVersion = "TLS12"
    max_version: TlsVersion | None = None

    @field_validator("cert_file", "key_file", "client_ca_file")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path}: no such file")
        return path

    @model_validator(mode="after")
    def _ca_when_verifying(self) -> TlsServerConfig:
        if "Verify" in self.client_auth_type and self.client_ca_file is None:
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        return self


class HttpServerConfig(_Section):
    headers: dict[str, str] = Field(default_factory=dict)
    #: Accepted for compatibility with exporter-toolkit files; this server speaks HTTP/1.1.
    http2: bool = True


class WebConfig(_Section):
    """The `--web.config.file`: TLS and basic auth, as Prometheus exporters configure them."""

    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig = Field(default_factory=HttpServerConfig)
    basic_auth_users: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, hashed in users.items():
            if not hashed.get_secret_value().startswith(("$2a$", "$2b$", "$2y$")):
                raise ValueError(f"user {name!r}: the password must be a bcrypt hash "
                                 "(htpasswd -nBC 10 \"\" | tr -d ':\\n')")
        return users


def load_web_config(path: Path) -> WebConfig:
    if not path.is_file():
        raise ConfigError(f"web.config.file: {path}: no such file")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"web.config.file: {path}: {' '.join(str(exc).split())}") from None
    try:
        return WebConfig.model_validate(content)
    except ValidationError as exc:
        raise ConfigError(f"web.config.file: {format_validation_error(exc)}") from None


@dataclass(frozen=True, slots=True)
class TokenFileWarning:
    path: Path
    mode: int


class TokenSource:
    """Hands the client the current token, re-reading `token_file` when it changes.

    Re-reading lets an operator rotate a Kubernetes/Docker secret without a restart;
    the mtime+size check keeps it to one stat() per request.
    """

    def __init__(self, *, static: SecretStr | None = None, path: Path | None = None) -> None:
        if static is None and path is None:
            raise ConfigError(f"no API token: {_TOKEN_HINT}")
        self._static = static
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._cached: SecretStr | None = None
        if path is not None:
            self.get()

    @classmethod
    def from_environment(
        cls, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> TokenSource:
        environ = os.environ if environ is None else environ
        raw = environ.get(TOKEN_ENV)
        if raw is not None and raw.strip():
            return cls(static=SecretStr(clean_token(raw, TOKEN_ENV)))
        return cls(path=settings.api.token_file)

    @property
    def path(self) -> Path | None:
        return self._path

    def get(self) -> SecretStr:
        if self._static is not None:
            return self._static
        assert self._path is not None
        try:
            info = self._path.stat()
        except OSError as exc:
            raise ConfigError(f"api.token_file: {self._path}: {exc.strerror}") from None
        stamp = (info.st_mtime, info.st_size)
        with self._lock:
            if stamp != self._stamp or self._cached is None:
                try:
                    raw = self._path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise ConfigError(f"api.token_file: {self._path}: cannot read: {exc}") from None
                self._cached = SecretStr(clean_token(raw, "api.token_file"))
                self._stamp = stamp
            return self._cached

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
    """Strip whitespace and a pasted `Bearer ` prefix: the API wants the raw token."""
    token = re.sub(r"(?i)^\s*bearer(\s+|$)", "", raw).strip()
    if not token:
        raise ConfigError(f"{field}: the API token is empty; {_TOKEN_HINT}")
    if any(ch.isspace() for ch in token) or not token.isprintable():
        raise ConfigError(f"{field}: the API token contains whitespace or control characters")
    return token

"""The exporter-toolkit `web-config.yml`: TLS, basic auth and headers, validated at load.

The format is the one every Prometheus exporter reads (node_exporter's `web.yml` works
here), so every documented key is accepted: what Python's `ssl` can apply is applied,
the rest is named in one warning at start-up. Everything is checked when the file is
loaded, never at the first request: certificates and keys are loaded (an encrypted
key is an error, never a terminal prompt), bcrypt hashes are verified, response
headers are refused when they could split or frame a response. Errors name the file.
"""

from __future__ import annotations

import re
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.config import ConfigError, Section, format_validation_error, read_yaml
from exporter.files import FileUnreadable, read_file

TlsVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]
ClientAuth = Literal[
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
]

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
#: Go's names of the TLS 1.2 suites it allows (crypto/tls CipherSuites()) → OpenSSL's.
#: The TLS 1.3 suites are accepted and, as in Go, not configurable.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
CURVES = frozenset({"CurveP256", "CurveP384", "CurveP521", "X25519", "X25519MLKEM768"})
#: Headers that frame or route a response: set by the server, never by configuration.
FRAMING_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "content-encoding",
        "content-type",
        "host",
        "proxy-connection",
        "www-authenticate",
        "vary",
        "date",
        "server",
    }
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BCRYPT = re.compile(r"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
#: Costs over this make every uncached login take seconds (exporter-toolkit caches too).
MAX_BCRYPT_COST = 14
MIN_BCRYPT_COST = 4
#: What `hash-password` makes: about 50 ms a check, once per client (verified pairs are kept).
DEFAULT_BCRYPT_COST = 10
#: bcrypt reads at most this many bytes of a password; exporter-toolkit refuses longer.
MAX_PASSWORD_BYTES = 72
#: A web config, a certificate chain or a key is a few kilobytes; this bounds a read
#: of the wrong file.
MAX_FILE_BYTES = 1024 * 1024
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class WebConfigError(Exception):
    """A web config problem, as one line that names the file and the field."""


class TlsServerConfig(Section):
    """`tls_server_config` of the exporter-toolkit format."""

    cert: SecretStr | None = None
    key: SecretStr | None = None
    client_ca: str | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    client_auth_type: ClientAuth = "NoClientCert"
    client_ca_file: Path | None = None
    client_allowed_sans: list[str] = Field(default_factory=list)
    min_version: TlsVersion = "TLS12"
    max_version: TlsVersion | None = None
    cipher_suites: list[str] = Field(default_factory=list)
    prefer_server_cipher_suites: bool = True
    curve_preferences: list[str] = Field(default_factory=list)

    @field_validator("cipher_suites")
    @classmethod
    def _known_suites(cls, suites: list[str]) -> list[str]:
        unknown = [s for s in suites if s not in CIPHER_SUITES]
        if unknown:
            raise ValueError(f"unknown or insecure cipher suite {unknown[0]!r}")
        return suites

    @field_validator("curve_preferences")
    @classmethod
    def _known_curves(cls, curves: list[str]) -> list[str]:
        unknown = [c for c in curves if c not in CURVES]
        if unknown:
            raise ValueError(f"unknown curve {unknown[0]!r}")
        return curves

    @model_validator(mode="after")
    def _consistent(self) -> TlsServerConfig:
        if (self.cert is None) == (self.cert_file is None):
            raise ValueError("needs exactly one of cert and cert_file")
        if (self.key is None) == (self.key_file is None):
            raise ValueError("needs exactly one of key and key_file")
        if self.client_ca is not None and self.client_ca_file is not None:
            raise ValueError("client_ca and client_ca_file cannot both be set")
        verifying = self.client_auth_type != "NoClientCert"
        if verifying and self.client_ca is None and self.client_ca_file is None:
            # Python verifies any client certificate it asks for against a CA.
            raise ValueError(f"client_auth_type {self.client_auth_type} needs client_ca_file")
        if self.client_allowed_sans and self.client_auth_type not in (
            "RequireAnyClientCert",
            "RequireAndVerifyClientCert",
        ):
            raise ValueError(
                "client_allowed_sans needs client_auth_type "
                "RequireAnyClientCert or RequireAndVerifyClientCert"
            )
        if self.max_version is not None and (
            TLS_VERSIONS[self.min_version] > TLS_VERSIONS[self.max_version]
        ):
            raise ValueError(
                f"min_version {self.min_version} is above max_version {self.max_version}"
            )
        return self


class HttpServerConfig(Section):
    headers: dict[str, str] = Field(default_factory=dict)
    #: exporter-toolkit's default; this server speaks HTTP/1.1 only (said at start-up).
    http2: bool | None = None

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        for name, value in headers.items():
            if not _TOKEN.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in FRAMING_HEADERS:
                raise ValueError(f"{name} is set by the server and cannot be configured")
            if any(ch in value for ch in "\r\n\0"):
                raise ValueError(f"{name}: a header value cannot hold line breaks")
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError(f"{name}: a header value must be Latin-1") from None
        return headers


class RateLimitConfig(Section):
    interval: str | float = 0
    burst: int = Field(0, ge=0)

    @field_validator("interval")
    @classmethod
    def _duration(cls, value: str | float) -> str | float:
        seconds(value)
        return value


class WebConfigFile(Section):
    """The `--web.config.file` as written."""

    tls_server_config: TlsServerConfig | None = None
    http_server_config: HttpServerConfig = Field(default_factory=HttpServerConfig)
    basic_auth_users: dict[str, SecretStr] = Field(default_factory=dict)
    rate_limit: RateLimitConfig | None = None

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt_hashes(cls, users: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, hashed in users.items():
            check_bcrypt_hash(name, hashed.get_secret_value())
        return users


def seconds(value: str | float) -> float:
    """A Go duration ("1m30s", "250ms") or a number of seconds."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    text = value.strip()
    if text == "0":
        return 0.0
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration like 1s or 250ms")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def check_bcrypt_hash(user: str, hashed: str) -> int:
    """The hash's cost, once bcrypt itself has accepted the hash."""
    match = _BCRYPT.match(hashed)
    if match is None:
        raise ValueError(
            f"user {user!r}: the password must be a bcrypt hash "
            "(make one with: latitudesh-exporter hash-password)"
        )
    cost = int(match.group(1))
    if not MIN_BCRYPT_COST <= cost <= MAX_BCRYPT_COST:
        raise ValueError(
            f"user {user!r}: bcrypt cost {cost} is outside {MIN_BCRYPT_COST}..{MAX_BCRYPT_COST}"
        )
    try:
        bcrypt.checkpw(b"", hashed.encode())
    except ValueError:
        raise ValueError(f"user {user!r}: bcrypt cannot read this hash") from None
    return cost


def make_bcrypt_hash(password: bytes, cost: int = DEFAULT_BCRYPT_COST) -> str:
    """A hash for `basic_auth_users`, as `htpasswd -nBC 10` makes one."""
    if not password:
        raise ValueError("the password is empty")
    if len(password) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return bcrypt.hashpw(password, bcrypt.gensalt(rounds=cost)).decode()


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The web config as the server uses it: a ready TLS context, users, headers."""

    path: Path | None = None
    ssl_context: ssl.SSLContext | None = None
    allowed_sans: frozenset[str] = frozenset()
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: tuple[tuple[str, str], ...] = ()
    #: (seconds between requests, burst) of exporter-toolkit's token bucket.
    rate_limit: tuple[float, int] | None = None
    #: Keys that were accepted but cannot be applied here; logged once at start-up.
    unapplied: tuple[str, ...] = ()

    def client_allowed(self, peercert: Mapping[str, Any] | None) -> bool:
        """A client certificate with one of `client_allowed_sans`, when any are set."""
        if not self.allowed_sans:
            return True
        names = {str(value) for _, value in (peercert or {}).get("subjectAltName", ())}
        return bool(names & self.allowed_sans)


class _NoPrompt(Exception):
    """Raised by the password callback: an encrypted key must not prompt on a terminal."""


def _no_password() -> bytes:
    raise _NoPrompt


def load_web_config(path: Path) -> WebSettings:
    """Read, validate and apply `path`; raises `WebConfigError` naming the file.

    Every file is read with a bound (`files.read_file`), so a hung mount fails a start
    or a reload instead of holding it. An empty file is refused: it would mean no TLS
    and no users, and is far more often a file caught half-written (truncated, then
    written again) than a wish; `{}` says that wish explicitly.
    """
    where = f"web.config.file: {path}"
    try:
        content = read_yaml(path, field="web.config.file", max_bytes=MAX_FILE_BYTES)
    except ConfigError as exc:
        raise WebConfigError(str(exc)) from None
    if content is None:
        raise WebConfigError(
            f"{where}: the file is empty (it would serve without TLS and basic auth; "
            "write {} to mean that)"
        )
    if not isinstance(content, dict):
        raise WebConfigError(f"{where}: the top level must be a mapping")
    try:
        parsed = WebConfigFile.model_validate(content)
    except ValidationError as exc:
        raise WebConfigError(f"{where}: {format_validation_error(exc)}") from None
    try:
        return _apply(parsed, path)
    except _FileError as exc:
        raise WebConfigError(f"{where}: {exc}") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise WebConfigError(f"{where}: tls_server_config: {exc}") from None


def _apply(parsed: WebConfigFile, path: Path) -> WebSettings:
    unapplied = []
    tls = parsed.tls_server_config
    context = None
    if tls is not None:
        context = _tls_context(tls)
        if tls.curve_preferences:
            unapplied.append("tls_server_config.curve_preferences (OpenSSL's defaults apply)")
    if parsed.http_server_config.http2:
        unapplied.append("http_server_config.http2 (HTTP/1.1 is served)")
    rate = parsed.rate_limit
    interval = seconds(rate.interval) if rate is not None else 0.0
    return WebSettings(
        path=path,
        ssl_context=context,
        allowed_sans=frozenset(tls.client_allowed_sans) if tls else frozenset(),
        users={
            name: hashed.get_secret_value().encode()
            for name, hashed in parsed.basic_auth_users.items()
        },
        headers=tuple(parsed.http_server_config.headers.items()),
        rate_limit=(interval, max(rate.burst, 1)) if rate is not None and interval > 0 else None,
        unapplied=tuple(unapplied),
    )


def _tls_context(tls: TlsServerConfig) -> ssl.SSLContext:
    """A server context as tls_server_config describes it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    if tls.max_version is not None:
        context.maximum_version = TLS_VERSIONS[tls.max_version]
    with tempfile.TemporaryDirectory(prefix="latitudesh-web-") as scratch:
        # ssl loads certificates from files only, and would read them without a bound:
        # both go through a private directory that is removed at once, read from
        # their files with a bound or taken from inline PEM.
        cert = _write(Path(scratch) / "cert.pem", _pem(tls.cert, tls.cert_file, "cert_file"))
        key = _write(Path(scratch) / "key.pem", _pem(tls.key, tls.key_file, "key_file"))
        try:
            context.load_cert_chain(cert, key, password=_no_password)
        except _NoPrompt:
            raise ValueError(
                "the key is encrypted; decrypt it (openssl pkey -in KEY "
                "-out KEY.plain): exporters read unencrypted keys"
            ) from None
    context.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
    if tls.client_ca is not None or tls.client_ca_file is not None:
        ca = _pem(
            SecretStr(tls.client_ca) if tls.client_ca is not None else None,
            tls.client_ca_file,
            "client_ca_file",
        )
        context.load_verify_locations(cadata=ca.get_secret_value())
    suites = [cipher for s in tls.cipher_suites if (cipher := CIPHER_SUITES[s])]
    if suites:
        context.set_ciphers(":".join(suites))
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


class _FileError(Exception):
    """A file the web config names could not be read: one line naming its field."""


def _pem(inline: SecretStr | None, path: Path | None, field: str) -> SecretStr:
    """Inline PEM, or the file's, read with a bound."""
    if inline is not None:
        return inline
    assert path is not None
    try:
        raw = read_file(path, max_bytes=MAX_FILE_BYTES)
    except FileUnreadable as exc:
        raise _FileError(f"tls_server_config.{field}: {exc}") from None
    try:
        return SecretStr(raw.decode("ascii"))
    except UnicodeDecodeError:
        raise _FileError(f"tls_server_config.{field}: {path}: not PEM text") from None


def _write(path: Path, secret: SecretStr) -> Path:
    path.touch(mode=0o600)
    path.write_text(secret.get_secret_value())
    return path

"""The exporter-toolkit web config: every documented key accepted, everything checked at
load (certificates, keys, bcrypt hashes, headers), every error one line naming the file."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml

from exporter.webconfig import WebConfigError, load_web_config, seconds
from tests.conftest import tls_web_config

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()


def load(tmp_path: Path, content: dict[str, Any]) -> Any:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(content))
    return load_web_config(path)


def refused(tmp_path: Path, content: dict[str, Any]) -> str:
    with pytest.raises(WebConfigError) as caught:
        load(tmp_path, content)
    message = str(caught.value)
    assert message.startswith(f"web.config.file: {tmp_path / 'web.yml'}: ")
    assert "\n" not in message
    return message


def test_a_node_exporter_web_yml_loads_whole(tmp_path: Path, certs: dict[str, Path]) -> None:
    web = load(
        tmp_path,
        {
            **tls_web_config(
                certs,
                client_auth_type="RequireAndVerifyClientCert",
                client_ca_file=str(certs["ca"]),
                client_allowed_sans=["prometheus@example"],
                min_version="TLS12",
                max_version="TLS13",
                cipher_suites=[
                    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                ],
                prefer_server_cipher_suites=True,
                curve_preferences=["CurveP256", "X25519"],
            ),
            "http_server_config": {
                "http2": True,
                "headers": {
                    "X-Frame-Options": "deny",
                    "Strict-Transport-Security": "max-age=31536000",
                },
            },
            "basic_auth_users": {"prometheus": HASH},
            "rate_limit": {"interval": "100ms", "burst": 10},
        },
    )
    assert isinstance(web.ssl_context, ssl.SSLContext)
    assert web.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert web.ssl_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert web.allowed_sans == {"prometheus@example"}
    assert web.users == {"prometheus": HASH.encode()}
    assert ("X-Frame-Options", "deny") in web.headers
    assert web.rate_limit == (0.1, 10)
    assert any("curve_preferences" in key for key in web.unapplied)
    assert any("http2" in key for key in web.unapplied)


def test_inline_certificate_key_and_ca_are_loaded(tmp_path: Path, certs: dict[str, Path]) -> None:
    web = load(
        tmp_path,
        {
            "tls_server_config": {
                "cert": certs["cert"].read_text(),
                "key": certs["key"].read_text(),
                "client_ca": certs["ca"].read_text(),
                "client_auth_type": "VerifyClientCertIfGiven",
            }
        },
    )
    assert web.ssl_context is not None and web.ssl_context.verify_mode == ssl.CERT_OPTIONAL


def test_client_allowed_sans_match_exactly() -> None:
    from exporter.webconfig import WebSettings

    web = WebSettings(allowed_sans=frozenset({"prometheus@example", "10.0.0.1"}))
    assert web.client_allowed({"subjectAltName": (("email", "prometheus@example"),)})
    assert web.client_allowed({"subjectAltName": (("IP Address", "10.0.0.1"),)})
    assert not web.client_allowed({"subjectAltName": (("DNS", "mallory"),)})
    assert not web.client_allowed(None)
    assert WebSettings().client_allowed(None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"basic_auth_users": {"bob": "plain"}},
            "basic_auth_users: user 'bob': the password must be a bcrypt hash",
        ),
        (
            {"basic_auth_users": {"bob": "$2b$10$" + "x" * 53}},
            "basic_auth_users: user 'bob': bcrypt cannot read this hash",
        ),
        ({"basic_auth_users": {"bob": HASH.replace("$04$", "$31$")}}, "bcrypt cost 31 is outside"),
        (
            {"tls_server_config": {"cert_file": "/nope.crt", "key_file": "/nope.key"}},
            "tls_server_config.cert_file: Value error, /nope.crt: no such file",
        ),
        ({"cipher_suites": []}, "cipher_suites: unknown field"),
        (
            {"http_server_config": {"headers": {"X-Evil": "a\r\nSet-Cookie: x=1"}}},
            "a header value cannot hold line breaks",
        ),
        ({"http_server_config": {"headers": {"X-Name": "café ☕"}}}, "must be Latin-1"),
        (
            {"http_server_config": {"headers": {"Content-Length": "0"}}},
            "Content-Length is set by the server",
        ),
        ({"http_server_config": {"headers": {"Bad Name": "x"}}}, "is not a valid header name"),
        ({"rate_limit": {"interval": "soon", "burst": 1}}, "is not a duration"),
    ],
)
def test_bad_web_config_is_one_line_naming_the_file_and_field(
    tmp_path: Path, content: dict[str, Any], message: str
) -> None:
    assert message.replace("Value error, ", "") in refused(tmp_path, content)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"min_version": "TLS13", "max_version": "TLS12"},
            "min_version TLS13 is above max_version TLS12",
        ),
        ({"min_version": "SSL3"}, "tls_server_config.min_version"),
        ({"client_auth_type": "RequireAndVerifyClientCert"}, "needs client_ca_file"),
        ({"client_allowed_sans": ["x"]}, "client_allowed_sans needs client_auth_type"),
        ({"cipher_suites": ["TLS_RSA_WITH_RC4_128_SHA"]}, "unknown or insecure cipher suite"),
        ({"curve_preferences": ["CurveP999"]}, "unknown curve 'CurveP999'"),
    ],
)
def test_bad_tls_settings_are_refused(
    tmp_path: Path, certs: dict[str, Path], extra: dict[str, Any], message: str
) -> None:
    assert message in refused(tmp_path, tls_web_config(certs, **extra))


def test_an_encrypted_key_is_an_error_never_a_prompt(
    tmp_path: Path, certs: dict[str, Path]
) -> None:
    content = {
        "tls_server_config": {"cert_file": str(certs["cert"]), "key_file": str(certs["encrypted"])}
    }
    assert "the key is encrypted" in refused(tmp_path, content)


def test_an_unusable_certificate_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate")
    content = {"tls_server_config": {"cert_file": str(junk), "key_file": str(junk)}}
    assert "tls_server_config:" in refused(tmp_path, content)


def test_a_missing_or_broken_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match="no such file"):
        load_web_config(tmp_path / "nope.yml")
    path = tmp_path / "web.yml"
    path.write_text("a: " + "[" * 5000)
    with pytest.raises(WebConfigError, match=str(path)):
        load_web_config(path)


@pytest.mark.parametrize(
    ("text", "value"), [("1s", 1.0), ("250ms", 0.25), ("1m30s", 90.0), ("0", 0.0), (2, 2.0)]
)
def test_go_durations(text: str | int, value: float) -> None:
    assert seconds(text) == value

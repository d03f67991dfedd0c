"""Log formatting (logfmt, JSON) and the redactor that keeps every API token out of it.

One line per event, always: every control character a value may hold (an API's error
text, a file name) is escaped, so no value can forge a second log line or break a
terminal. Every value is passed through the redactor before it is escaped, so a token
cannot hide behind an escape either.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

REDACTED = "<redacted>"
#: A token's fragment this long is redacted too: an error text cut in the middle of an
#: echoed token must not leave its first half in the log.
FRAGMENT = 8
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_QUOTE = re.compile('[\\s="\\\\\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]')
_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}


class Redactor:
    """Replaces every known secret, and any long fragment of one, with `<redacted>`.

    Sources are asked for their current secret at each use, so a rotated token is
    known as soon as it has been read; old ones are remembered.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: list[Callable[[], str | None]] = []
        self._secrets: dict[str, frozenset[str]] = {}

    def watch(self, source: Callable[[], str | None]) -> None:
        with self._lock:
            self._sources.append(source)

    def __call__(self, text: str) -> str:
        with self._lock:
            for source in self._sources:
                secret = source()
                if secret and secret not in self._secrets:
                    size = min(FRAGMENT, len(secret))
                    self._secrets[secret] = frozenset(
                        secret[i : i + size] for i in range(len(secret) - size + 1)
                    )
            secrets = list(self._secrets.items())
        for secret, fragments in secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
            text = _redact_fragments(text, fragments, min(FRAGMENT, len(secret)))
        return text


def _redact_fragments(text: str, fragments: frozenset[str], size: int) -> str:
    covered = [False] * len(text)
    hit = False
    for start in range(len(text) - size + 1):
        if text[start : start + size] in fragments:
            hit = True
            for i in range(start, start + size):
                covered[i] = True
    if not hit:
        return text
    out, i = [], 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(REDACTED)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def escape_controls(text: str) -> str:
    """Control characters, line separators and lone surrogates as `\\n` or `\\uXXXX`."""
    return _UNSAFE.sub(lambda m: _SHORT.get(m.group(0)) or f"\\u{ord(m.group(0)):04x}", text)


class StructuredFormatter(logging.Formatter):
    def __init__(self, redact: Callable[[str], str], *, as_json: bool) -> None:
        super().__init__()
        self._redact = redact
        self._json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower().replace("warning", "warn"),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                fields[key] = value
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        clean = {
            key: self._redact(str(value)) if not isinstance(value, int | float | bool) else value
            for key, value in fields.items()
        }
        if self._json:
            # ensure_ascii: no control character, separator or surrogate survives.
            return json.dumps(clean, default=str)
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in clean.items())


def _logfmt_value(value: Any) -> str:
    text = str(value)
    if text and not _QUOTE.search(text):
        return text
    return '"' + escape_controls(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def setup_logging(
    level: str, fmt: str, redact: Callable[[str], str], stream: TextIO | None = None
) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(StructuredFormatter(redact, as_json=fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = _LEVELS[level]
    root.setLevel(numeric)
    # httpx logs every request and APScheduler 3.x every job run at INFO.
    for chatty in ("httpx", "httpcore", "apscheduler", "asyncio"):
        logging.getLogger(chatty).setLevel(numeric if level == "debug" else logging.WARNING)

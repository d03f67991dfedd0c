"""Log lines: one per event whatever a value holds, and never a token or a piece of one."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.logs import Redactor, setup_logging
from tests.conftest import TOKEN


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    yield out
    logging.getLogger().handlers.clear()


def logged(stream: io.StringIO, fmt: str, *values: str, redact: Redactor | None = None) -> str:
    setup_logging("debug", fmt, redact or Redactor(), stream=stream)
    # This thread's records only: a thread another test left behind (an HTTP client
    # closing its connection) may log at debug level meanwhile, through the same root.
    me = threading.get_ident()
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: record.thread == me)
    log = logging.getLogger("exporter.test")
    for value in values:
        log.warning("poll failed", extra={"error": value, "project_id": value})
    return stream.getvalue()


FORGERIES = [
    "line\nts=2026 level=error msg=forged",
    "cr\rreturn",
    "nul\x00",
    "esc\x1b[31m",
    "sep\u2028line",
    "lone\ud800surrogate",
    'quote" level=error',
    "back\\slash",
]


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
@pytest.mark.parametrize("value", FORGERIES)
def test_no_value_can_forge_a_line_or_break_the_stream(
    stream: io.StringIO, fmt: str, value: str
) -> None:
    text = logged(stream, fmt, value)
    assert text.count("\n") == 1
    text.encode("utf-8")  # a lone surrogate would not even reach the terminal
    line = text.rstrip("\n")
    if fmt == "json":
        assert json.loads(line)["error"].replace("\ud800", "?") == value.replace("\ud800", "?")
    else:
        assert "level=error" not in line.replace(r"\"", "").split('"')[0]


@given(st.text(alphabet=st.characters() | st.characters(categories=["Cs", "Cc", "Zl", "Zp"])))
def test_any_text_makes_exactly_one_logfmt_line(value: str) -> None:
    out = io.StringIO()
    try:
        text = logged(out, "logfmt", value)
    finally:
        logging.getLogger().handlers.clear()
    assert text.count("\n") == 1 and "\r" not in text
    text.encode("utf-8")


def test_logs_redact_the_token_even_in_tracebacks_and_fields(stream: io.StringIO) -> None:
    redactor = Redactor()
    redactor.watch(lambda: TOKEN)
    setup_logging("debug", "logfmt", redactor, stream=stream)
    log = logging.getLogger("exporter.test")
    try:
        raise RuntimeError(f"boom with {TOKEN} inside")
    except RuntimeError:
        log.exception("failed", extra={"header": f"Authorization: {TOKEN}"})
    setup_logging("debug", "json", redactor, stream=stream)
    log.debug("again %s", TOKEN)
    text = stream.getvalue()
    assert "boom with <redacted> inside" in text
    assert "Authorization: <redacted>" in text
    assert TOKEN not in text


@pytest.mark.parametrize("cut", [6, 8, 12, 20])
def test_a_piece_of_a_token_is_redacted_too(stream: io.StringIO, cut: int) -> None:
    redactor = Redactor()
    redactor.watch(lambda: TOKEN)
    text = logged(
        stream, "logfmt", "echo: " + TOKEN[:cut], "tail: " + TOKEN[-cut:], redact=redactor
    )
    assert TOKEN[: max(cut, 8)] not in text and TOKEN[-max(cut, 8) :] not in text
    if cut >= 8:
        assert "<redacted>" in text


def test_every_teams_token_is_redacted_and_rotated_ones_are_remembered() -> None:
    current = {"a": "team-a-key-0123456789", "b": "team-b-key-abcdefghij"}
    redactor = Redactor()
    redactor.watch(lambda: current["a"])
    redactor.watch(lambda: current["b"])
    old = current["a"]
    assert redactor(f"{current['a']} {current['b']}") == "<redacted> <redacted>"
    current["a"] = "team-a-key-rotated-99"
    assert "team-a" not in redactor(f"{old} and {current['a']}")

"""Waiting for a condition, the one way the tests and the benchmarks do it.

Never a bare sleep: poll the condition every `step` seconds, and fail with a message
naming what was awaited once `timeout` seconds have passed (a bound far beyond what the
behaviour takes, so that a loaded machine never fails it by itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class WaitTimeout(AssertionError):
    """A condition that did not come true in time: a test failure, not an error."""


def wait_for(
    condition: Callable[[], Any], timeout: float = 10.0, message: str = "", step: float = 0.02
) -> Any:
    """Poll `condition` until it returns something truthy, and return that (typed Any:
    the truthy part of whatever the condition returns).

    A costly condition (a whole scrape of a large daemon) is asked again only after as
    long as it took, at least `step`: never more than half the time spent asking, so a
    wait burns no core of its own (the suite's CPU, issue 29)."""
    deadline = time.monotonic() + timeout
    while True:
        asked = time.monotonic()
        result = condition()
        if result:
            return result
        now = time.monotonic()
        if now > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {message or condition}")
        time.sleep(max(step, now - asked))

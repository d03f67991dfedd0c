"""The request budget: spaces API requests evenly under the per-key rate limit.

Latitude.sh allows 60 GET requests a minute per API key. Requests are handed out one
slot every `window / limit` seconds, so no window of `window` seconds ever holds more
than `limit` of them, however many threads ask at once, and the load on the API is
spread evenly instead of arriving in bursts at the top of each poll interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from exporter.errors import Cancelled


class RequestBudget:
    def __init__(
        self,
        limit: float,
        *,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        stop: threading.Event | None = None,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        """`sleep(seconds)` waits and returns True when the wait was cut short by a stop."""
        if limit <= 0 or window <= 0:
            raise ValueError("limit and window must be positive")
        self.limit = limit
        self.window = window
        self.spacing = window / limit
        self._clock = clock
        self._stop = stop or threading.Event()
        self._sleep = sleep or self._stop.wait
        self._lock = threading.Lock()
        self._next_slot: float | None = None

    def acquire(self) -> float:
        """Block until this caller may send one request; return how long it waited."""
        with self._lock:
            now = self._clock()
            slot = now if self._next_slot is None else max(now, self._next_slot)
            self._next_slot = slot + self.spacing
        wait = slot - now
        if self._stop.is_set() or (wait > 0 and self._sleep(wait)):
            raise Cancelled("shutting down")
        return wait

    def pause(self, seconds: float) -> None:
        """Hold every request back for `seconds`: the API said the key is over its limit."""
        with self._lock:
            resume = self._clock() + seconds
            if self._next_slot is None or self._next_slot < resume:
                self._next_slot = resume

    def seconds_for(self, requests: int) -> float:
        """How long `requests` requests take at this budget."""
        return requests * self.spacing

"""The request budget: spaces API requests evenly under the per-key rate limit.

Latitude.sh allows 60 GET requests a minute per API key. Requests are let through at
most one every `window / limit` seconds, so the load on the API is spread evenly instead
of arriving in bursts at the top of each poll interval. Spacing alone is not exact
(float sums drift, and a thread that wakes late squeezes the next gaps), so grants are
also checked against a sliding window of the actual grant times: no `window` seconds
ever hold more than `limit` requests, however many threads ask at once.

The budget also keeps the sum of the waits the API imposed on it (`pause`, a 429's
`Retry-After`): every request queued behind a pause is late by it, legitimately, and
the watchdog must not take that for a stall (see `paused_seconds`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
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
        self._next_slot = -math.inf
        self._granted: deque[float] = deque(maxlen=max(1, math.floor(limit)))
        self._paused = 0.0

    def acquire(self) -> float:
        """Block until this caller may send one request; return the time it was let through."""
        while True:
            with self._lock:
                now = self._clock()
                earliest = self._next_slot
                if len(self._granted) == self._granted.maxlen:
                    earliest = max(earliest, self._granted[0] + self.window)
                if now >= earliest and not self._stop.is_set():
                    self._granted.append(now)
                    self._next_slot = now + self.spacing
                    return now
            if self._stop.is_set() or self._sleep(max(earliest - now, 1e-6)):
                raise Cancelled("shutting down")

    def pause(self, seconds: float) -> None:
        """Hold every request back for `seconds`: the API said the key is over its limit."""
        with self._lock:
            now = self._clock()
            before = max(self._next_slot, now)
            self._next_slot = max(self._next_slot, now + seconds)
            # What the queue is set back by: pauses that overlap count once.
            self._paused += self._next_slot - before

    def paused_seconds(self) -> float:
        """Seconds the queue of requests has been set back by pauses, in all: the
        difference between two readings is how late the pauses in between made every
        request queued across them. Read without the lock (one float), so that the
        watchdog never waits on the budget."""
        return self._paused

    def seconds_for(self, requests: int) -> float:
        """How long `requests` requests take at this budget."""
        return requests * self.spacing

"""The request budget: spaces API requests evenly under the per-key rate limit.

Latitude.sh allows 60 GET requests a minute per API key. Requests are let through at
most one every `window / limit` seconds, so the load on the API is spread evenly instead
of arriving in bursts at the top of each poll interval. Spacing alone is not exact
(float sums drift, and a thread that wakes late squeezes the next gaps), so grants are
also checked against a sliding window of the actual grant times: no `window` seconds
ever hold more than `limit` requests, however many threads ask at once. A request let
through a little late (less than half a spacing: a thread woken late) leaves the next
slots where they were: a refresh of N requests takes N spacings, not N spacings plus
every wake-up's delay, and ends when the watchdog expects it to.

The budget also keeps when the waits the API imposed on it (`pause`, a 429's
`Retry-After`) held every request back: a request queued across a pause is late by
it, legitimately, and the watchdog must not take that for a stall (`paused_between`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from exporter.errors import Cancelled

#: Spans of pauses kept (contiguous ones are one): older ones concern no refresh still
#: waited on.
PAUSES_KEPT = 256


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
        self._grants = 0
        self._next_slot = -math.inf
        self._granted: deque[float] = deque(maxlen=max(1, math.floor(limit)))
        #: (start, end) of each span during which pauses held every request back.
        #: Replaced whole under the lock, read without it.
        self._pauses: tuple[tuple[float, float], ...] = ()

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
                    self._grants += 1
                    on_time = now - earliest < self.spacing / 2
                    self._next_slot = (earliest if on_time else now) + self.spacing
                    return now
            if self._stop.is_set() or self._sleep(max(earliest - now, 1e-6)):
                raise Cancelled("shutting down")

    def grants(self) -> int:
        """Requests let through so far: every request of the key, each retry and each
        redirect hop (each takes a slot). Read without the lock: one int."""
        return self._grants

    def pause(self, seconds: float) -> None:
        """Hold every request back for `seconds`: the API said the key is over its limit."""
        with self._lock:
            now = self._clock()
            # The queue is held back from its next slot (or now) to the pause's end:
            # pauses that overlap count once.
            start = max(self._next_slot, now)
            end = max(self._next_slot, now + seconds)
            self._next_slot = end
            if end <= start:
                return
            pauses = self._pauses
            if pauses and pauses[-1][1] >= start:
                self._pauses = (*pauses[:-1], (pauses[-1][0], end))
            else:
                self._pauses = (*pauses, (start, end))[-PAUSES_KEPT:]

    def paused_between(self, since: float, until: float) -> float:
        """Seconds between the monotonic times `since` and `until` during which pauses
        held every request back: how late they made a request queued across them.
        Takes no lock, so that the watchdog never waits on the budget."""
        return sum(max(0.0, min(end, until) - max(start, since)) for start, end in self._pauses)

    def seconds_for(self, requests: int) -> float:
        """How long `requests` requests take at this budget."""
        return requests * self.spacing

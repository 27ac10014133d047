"""A circuit breaker: stop calling a failing dependency, try again after a pause.

States: *closed* (calls go through), *open* after ``failures`` consecutive failures
(calls are refused at once, for ``reset_s`` seconds), then *half-open*: one trial call
goes through; success closes the breaker, failure opens it again.

>>> t = [0.0]
>>> b = CircuitBreaker(failures=2, reset_s=5, clock=lambda: t[0])
>>> b.record(False); b.record(False); b.allow()
False
>>> t[0] = 6; b.allow(), b.allow()
(True, False)
>>> b.record(True); b.allow()
True
"""

from __future__ import annotations

import time
from typing import Callable


class CircuitBreaker:
    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """True if a call may go out now (closed, or the single half-open trial)."""
        if self._opened_at is None:
            return True
        if not self._trial_in_flight and self.clock() - self._opened_at >= self.reset_s:
            self._trial_in_flight = True
            return True
        return False

    def record(self, ok: bool) -> None:
        self._trial_in_flight = False
        if ok:
            self._consecutive = 0
            self._opened_at = None
            return
        self._consecutive += 1
        if self._opened_at is not None or self._consecutive >= self.failures:
            self._opened_at = self.clock()

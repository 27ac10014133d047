"""A circuit breaker: stop calling a failing dependency, try again after a pause.

States: *closed* (calls go through), *open* after ``failures`` consecutive failures
(calls are refused at once, for ``reset_s`` seconds), then *half-open*: one trial call
goes through; success closes the breaker, failure opens it again.

Every call that :meth:`~CircuitBreaker.allow` let through ends in exactly one of
:meth:`~CircuitBreaker.record` (``True``: the dependency answered; ``False``: the
dependency failed) or :meth:`~CircuitBreaker.release` (the call said nothing about the
dependency: cut short by the caller's own deadline, cancelled, or timed out while the
caller itself was too busy to tell). Only ``record(False)`` moves the breaker towards
open; which failures are the dependency's is the caller's judgement
(:mod:`scorers.triton` documents its rule).

>>> t = [0.0]
>>> b = CircuitBreaker(failures=2, reset_s=5, clock=lambda: t[0])
>>> b.record(False); b.record(False); b.allow(), b.opened
(False, 1)
>>> t[0] = 6; b.allow(), b.allow()
(True, False)
>>> b.record(True); b.allow()
True

A half-open trial that tells nothing (``release``) leaves the breaker open and frees the
trial slot, so the next call is the new trial; failures in between are still counted:

>>> b.record(False); b.record(False); t[0] = 12; b.allow()
True
>>> b.release(); b.is_open, b.allow(), b.allow()
(True, True, False)
>>> b.record(True); b.release(); b.release(); b.is_open, b.opened
(False, 2)
"""

from __future__ import annotations

import time
from typing import Callable


class CircuitBreaker:
    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic):
        self.failures = failures
        self.reset_s = reset_s
        self.clock = clock
        self.opened = 0  # times the breaker went from closed to open (tests and logs)
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
        """The outcome of a call: ``ok`` if the dependency answered, else it failed."""
        self._trial_in_flight = False
        if ok:
            self._consecutive = 0
            self._opened_at = None
            return
        self._consecutive += 1
        if self._opened_at is not None or self._consecutive >= self.failures:
            if self._opened_at is None:
                self.opened += 1
            self._opened_at = self.clock()

    def release(self) -> None:
        """A call ended without telling whether the dependency works: no state change,
        except that a half-open trial slot is free again."""
        self._trial_in_flight = False

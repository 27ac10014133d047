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

Failures count in sequence, not in parallel: given ``started`` (when the call began, on
``clock``), a failed call that was already in flight when the last counted failure was
recorded is the same incident (one stall of the dependency times out every call in flight
at once) and is not counted again. So ``failures`` means that many failed calls one after
another, not that many requests that happened to be waiting together; and a straggler
from before the breaker opened neither re-opens it nor takes the half-open trial's slot:

>>> b = CircuitBreaker(failures=2, reset_s=5, clock=lambda: t[0])
>>> t[0] = 20
>>> for _ in range(30): b.record(False, started=19.9)
>>> b.is_open
False
>>> t[0] = 20.2; b.record(False, started=20.1); b.is_open, b.opened
(True, 1)
>>> t[0] = 26; trial = b.allow(); b.record(False, started=20.15); b.release(started=20.15)
>>> trial, b.allow(), b.is_open
(True, False, True)
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
        self._last_failure: float | None = None
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

    def record(self, ok: bool, started: float | None = None) -> None:
        """The outcome of a call: ``ok`` if the dependency answered, else it failed.
        ``started`` (on ``clock``): when the failed call began; a call that began before the
        last counted failure overlaps it and is not counted (``None``: always counted)."""
        if ok:
            self._trial_in_flight = False
            self._consecutive = 0
            self._opened_at = None
            return
        if started is not None and self._last_failure is not None and started < self._last_failure:
            return
        self._trial_in_flight = False
        self._last_failure = self.clock()
        self._consecutive += 1
        if self._opened_at is not None or self._consecutive >= self.failures:
            if self._opened_at is None:
                self.opened += 1
            self._opened_at = self._last_failure

    def release(self, started: float | None = None) -> None:
        """A call ended without telling whether the dependency works: no state change,
        except that a half-open trial slot is free again (unless ``started``, on ``clock``,
        says the call began before the breaker opened: then it was not the trial)."""
        if started is not None and self._opened_at is not None and started < self._opened_at:
            return
        self._trial_in_flight = False

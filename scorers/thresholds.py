"""Fraud thresholds that follow the live scores: a review queue that stays within its budget.

Fixed thresholds put whatever share of orders the score distribution says into ``review``: after a
shift (the River blend, a new model, a new shop), most orders of the demo. Here the thresholds
come from the recent live scores instead (:class:`RollingThresholds`, one per fraud worker):

* **decline** at the score above which ``FRAUD_DECLINE_RATE`` of the recent scores lie, or at the
  model's own decline threshold (its metadata: a calibrated probability at which declining is the
  cheapest decision) when that is lower: an order the model calls "decline" is declined, not sent to
  review, so a wave of high scores does not flood the review queue. But never below the lowest
  threshold whose **precision** on labelled recent orders (a label joined to the score served; an
  order silent for ``LABEL_WINDOW_S`` counts as legitimate) reaches ``FRAUD_DECLINE_PRECISION``, once
  ``FRAUD_THRESHOLD_MIN_LABELS`` labels are in. If no threshold reaches that precision, nothing is
  declined (:data:`NO_DECLINE`).
* **review** at the score above which ``FRAUD_REVIEW_RATE`` of the recent scores lie *besides*
  those already declined: the review share stays at the budget whatever the decline share.
* fail-safe: the review threshold is never above the model's own decline threshold, so an order
  that scores at or above what the model calls "decline" is never approved, however the budget
  moves (it is declined, or reviewed when the labels say declining it is not precise enough).
* before ``FRAUD_THRESHOLD_MIN_SCORES`` scores are seen, the model metadata's thresholds
  (:meth:`Thresholds.from_meta`), the safe default.

A quantile is the smallest score ``t`` of the window with at most ``k`` scores ``>= t`` (ties
at ``t`` pushed above it, so ties never overfill the queue). Both decision paths use the same
thresholds: the fraud workers compute them and store them in Redis (one JSON value under
``FeatureKeys.fraud_thresholds``), the HTTP service reads them every ``FRAUD_THRESHOLD_REFRESH_S``.
Several fraud workers (partitions split between them) each write theirs; the last write wins,
each from a window of the same live traffic.

>>> import random
>>> rng = random.Random(1)
>>> rt = RollingThresholds(window=1000, review_rate=0.05, decline_rate=0.01, min_scores=100,
...                        defaults=Thresholds(0.06, 0.85))
>>> rt.current().source
'meta'
>>> rt.add([rng.betavariate(2, 8) for _ in range(1000)])
>>> t = rt.current()
>>> t.source, t.review < t.decline <= 0.85
('live', True)
>>> scores = list(rt.scores)
>>> round(sum(t.review <= s < t.decline for s in scores) / len(scores), 3), sum(s >= t.decline for s in scores)
(0.05, 10)
"""

from __future__ import annotations

import json
import math
import time
from bisect import bisect_left
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Iterable

NO_DECLINE = 1.000001  # a decline threshold above every probability: nothing is declined
# How far the review (and decline) share of >= 2,000 verdicts decided with live thresholds may be from its
# budget: a quantile estimated from a window of 500-5,000 recent scores (~1 point of sampling error at 500),
# the binomial error of the share itself (~0.5 point at 2,000) and drift of the scores within the window.
SHARE_TOLERANCE = 0.03
MIN_DECLINE_POSITIVES = 5  # frauds above a precision threshold before it is trusted


@dataclass(frozen=True)
class Thresholds:
    """``score >= decline`` -> decline; ``>= review`` -> review; else approve. ``source``: ``meta``
    (the model's metadata, before enough live scores) or ``live``; ``n``: scores in the window,
    ``labelled``: labels behind the precision estimate."""

    review: float
    decline: float
    source: str = "meta"
    n: int = 0
    labelled: int = 0
    ts: float = 0.0

    def verdict(self, score: float) -> str:
        """
        >>> t = Thresholds(0.2, 0.9)
        >>> t.verdict(0.1), t.verdict(0.2), t.verdict(0.95)
        ('approve', 'review', 'decline')
        """
        if score >= self.decline:
            return "decline"
        if score >= self.review:
            return "review"
        return "approve"

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> "Thresholds":
        """
        >>> Thresholds.from_bytes(Thresholds(0.1, 0.5, "live", 10).to_bytes())
        Thresholds(review=0.1, decline=0.5, source='live', n=10, labelled=0, ts=0.0)
        """
        d = json.loads(raw)
        t = cls(float(d["review"]), float(d["decline"]), str(d.get("source", "live")), int(d.get("n", 0)),
                int(d.get("labelled", 0)), float(d.get("ts", 0.0)))
        if not (0.0 <= t.review <= t.decline <= NO_DECLINE):
            raise ValueError(f"thresholds out of order: {t}")
        return t

    @classmethod
    def from_meta(cls, meta: dict, fallback: "Thresholds") -> "Thresholds":
        """The model metadata's thresholds (``meta["thresholds"]``), else ``fallback``.

        >>> Thresholds.from_meta({"thresholds": {"review": 0.06, "decline": 0.85}}, Thresholds(0.1, 0.9))
        Thresholds(review=0.06, decline=0.85, source='meta', n=0, labelled=0, ts=0.0)
        >>> Thresholds.from_meta({}, Thresholds(0.1, 0.9)).review
        0.1
        """
        t = meta.get("thresholds") or {}
        if "review" in t and "decline" in t:
            return cls(float(t["review"]), float(t["decline"]))
        return fallback


def upper_quantile(sorted_scores: list[float], k: int) -> float:
    """The smallest threshold with at most ``k`` of ``sorted_scores`` (ascending) at or above it.

    >>> upper_quantile([0.1, 0.2, 0.3, 0.4], 1), upper_quantile([0.1, 0.2, 0.3, 0.4], 0)
    (0.4, 1.000001)
    >>> t = upper_quantile([0.1, 0.3, 0.3, 0.3], 1)  # ties at 0.3: all three above, or none
    >>> t > 0.3
    True
    """
    n = len(sorted_scores)
    if k <= 0 or n == 0:
        return NO_DECLINE
    if k >= n:
        return sorted_scores[0]
    t = sorted_scores[n - k]
    if n - bisect_left(sorted_scores, t) > k:  # ties at t: they go above it, together
        t = math.nextafter(t, math.inf)
    return t


def precision_threshold(labelled: Iterable[tuple[float, bool]], target: float,
                        min_positives: int = MIN_DECLINE_POSITIVES) -> float:
    """The lowest score threshold whose precision over ``labelled`` (score, is_fraud) pairs is at least
    ``target``, with at least ``min_positives`` frauds above it; :data:`NO_DECLINE` when none is.

    >>> pairs = [(0.9, True)] * 9 + [(0.9, False)] + [(0.5, True)] * 5 + [(0.5, False)] * 5 + [(0.1, False)] * 80
    >>> precision_threshold(pairs, 0.9), precision_threshold(pairs, 0.7), precision_threshold(pairs, 0.95)
    (0.9, 0.5, 1.000001)
    """
    ordered = sorted(labelled, key=lambda p: -p[0])
    best, tp, n, i = NO_DECLINE, 0, 0, 0
    while i < len(ordered):
        score = ordered[i][0]
        while i < len(ordered) and ordered[i][0] == score:  # a threshold takes all of its ties
            tp += ordered[i][1]
            n += 1
            i += 1
        if tp >= min_positives and tp / n >= target:
            best = score
    return best


class RollingThresholds:
    """Thresholds from the last ``window`` served scores (and the last ``window`` labelled ones)."""

    def __init__(self, window: int, review_rate: float, decline_rate: float, min_scores: int,
                 defaults: Thresholds, precision: float = 0.0, min_labels: int = 0, cap: float | None = None):
        """``defaults``: the model metadata's thresholds (used before ``min_scores``); ``cap``: the most
        a review threshold may be (default: the defaults' decline threshold)."""
        self.scores: deque[float] = deque(maxlen=window)
        self.labelled: deque[tuple[float, bool]] = deque(maxlen=window)
        self.review_rate, self.decline_rate = review_rate, decline_rate
        self.min_scores, self.precision, self.min_labels = min_scores, precision, min_labels
        self.defaults = defaults
        self.cap = defaults.decline if cap is None else cap
        self._current = defaults

    def set_defaults(self, defaults: Thresholds) -> None:
        """The served model's metadata thresholds (read at start): the defaults, and the review cap."""
        self.defaults, self.cap = defaults, defaults.decline
        if self._current.source != "live":
            self._current = defaults
        else:
            self._current = replace(self._current, review=min(self._current.review, self.cap))

    def resume(self, stored: Thresholds) -> None:
        """Start from thresholds stored earlier (a restart), until ``min_scores`` scores of our own.

        >>> rt = RollingThresholds(100, 0.05, 0.01, 10, Thresholds(0.06, 0.85))
        >>> rt.resume(Thresholds(0.9, 0.95, "live", 5000)); rt.current().review  # never above the model's decline
        0.85
        """
        self._current = replace(stored, review=min(stored.review, stored.decline, self.cap))

    def add(self, scores: Iterable[float]) -> None:
        """Served scores (a batch): the thresholds are recomputed once there are ``min_scores``."""
        self.scores.extend(scores)
        if len(self.scores) >= self.min_scores:
            self._current = self.compute()

    def add_labels(self, pairs: Iterable[tuple[float, bool]]) -> None:
        """(served score, is_fraud) of orders whose label came (or whose label window passed)."""
        self.labelled.extend(pairs)

    def current(self) -> Thresholds:
        return self._current

    def compute(self) -> Thresholds:
        s = sorted(self.scores)
        n = len(s)
        # the budget's quantile, or the model's own decline threshold when lower (a wave of high scores is
        # declined rather than queued for review) ...
        decline = min(upper_quantile(s, math.floor(self.decline_rate * n + 1e-9)), self.cap)
        labelled = len(self.labelled)  # ... unless the labels say declining there is not precise enough
        if self.precision > 0 and labelled >= max(1, self.min_labels):
            decline = max(decline, precision_threshold(self.labelled, self.precision))
        declined = n - bisect_left(s, decline)
        review = upper_quantile(s, declined + math.floor(self.review_rate * n + 1e-9))
        review = min(review, decline, self.cap)
        return Thresholds(review, decline, "live", n, labelled, time.time())

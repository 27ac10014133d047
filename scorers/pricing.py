"""Price adjustments per item: a demand model proposes, guardrails dispose.

The Triton model ``pricing`` returns expected 7-day demand at a few candidate price
multipliers; the proposal is the candidate with the highest expected margin
``(price * m - cost) * demand``. :func:`apply_guardrails` then enforces, whatever was
proposed:

* no change on an out-of-stock item;
* at most one change per item per hour of event time, of at most
  ``PRICE_MAX_CHANGE_PER_HOUR`` (relative), so no hour sees a larger move;
* floor ``cost * (1 + PRICE_MIN_MARGIN)``, ceiling ``ref_price * PRICE_MAX_MULTIPLIER``
  (``ref_price`` = the first catalog price seen for the item).

When Triton is unavailable the price is left alone (no adjustment is safer than a guess).
This is ``PRICING_POLICY=model``; the default policy is the bandit of
:mod:`scorers.pricing_bandit`, which uses the demand model only for the expected-revenue metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from features.definitions import HOUR
from scorers.triton import ScoringUnavailable, TritonScorer
from streamscore.settings import Settings


@dataclass(frozen=True)
class Adjustment:
    item_id: str
    old_price: float
    new_price: float
    reason: str
    guardrail: str | None
    model_version: str


def _cents_toward(value: float, reference: float) -> float:
    """Round to cents toward ``reference`` (never past a limit that was computed from it)."""
    cents = value * 100
    return (math.floor(cents + 1e-9) if value >= reference else math.ceil(cents - 1e-9)) / 100


def apply_guardrails(state: dict[str, float], proposed: float, ts: float, settings: Settings) -> tuple[float, str | None]:
    """Return (price to set, name of the guardrail that bound it or None).

    Prices are in cents, rounded toward the current price so that rounding never crosses
    a limit.

    >>> s = Settings()
    >>> st = {"price": 10.0, "cost": 6.0, "stock": 5, "ref_price": 10.0}
    >>> apply_guardrails(st, 20.0, 0, s)
    (11.0, 'max_change_per_hour')
    >>> apply_guardrails({**st, "stock": 0}, 11.0, 0, s)
    (10.0, 'out_of_stock')
    >>> apply_guardrails(st, 6.1, 0, s)
    (9.0, 'max_change_per_hour')
    >>> apply_guardrails({**st, "price": 6.5}, 6.0, 0, s)
    (6.3, 'floor')
    >>> apply_guardrails({**st, "price": 2.06, "cost": 1.0, "ref_price": 2.0}, 9.0, 0, s)  # 2.266 -> 2.26
    (2.26, 'max_change_per_hour')
    >>> apply_guardrails(st, float("nan"), 0, s)
    (10.0, 'invalid_proposal')
    """
    price = state["price"]
    if not math.isfinite(proposed) or proposed <= 0:
        return price, "invalid_proposal"
    if state.get("stock", 1) <= 0:
        return price, "out_of_stock"
    changed_at = state.get("price_changed_at")
    if changed_at is not None and ts - changed_at < HOUR:
        return price, "once_per_hour"
    step = settings.price_max_change_per_hour
    floor = math.ceil(state.get("cost", 0.0) * (1 + settings.price_min_margin) * 100 - 1e-9) / 100
    ceiling = math.floor(state.get("ref_price", price) * settings.price_max_multiplier * 100 + 1e-9) / 100
    new, bound = proposed, None
    if new > price * (1 + step):
        new, bound = price * (1 + step), "max_change_per_hour"
    elif new < price * (1 - step):
        new, bound = price * (1 - step), "max_change_per_hour"
    new = _cents_toward(new, price)
    if new < floor:
        new, bound = floor, "floor"
    if new > ceiling:
        new, bound = ceiling, "ceiling"
    # A floor above the hourly band (or a ceiling below it) cannot be met this hour: hold.
    if abs(new - price) > price * step + 1e-9 or new < floor - 1e-9 or new > ceiling + 1e-9:
        return price, "infeasible"
    return new, bound


class PricingScorer:
    def __init__(self, triton: TritonScorer, settings: Settings):
        self.triton = triton
        self.settings = settings

    async def demand(self, items: Sequence[str], vectors: dict[str, Sequence[float]], decides: bool = True):
        """One Triton call for all ``items``: (model version, multipliers per item, expected 7-day
        demand at each), or None when the demand model is unavailable (counted as degraded
        when the model ``decides`` the prices)."""
        x = np.asarray([vectors[i] for i in items], dtype=np.float32)
        try:
            result = await self.triton.infer(self.settings.model_pricing, {"FEATURES": x}, ["MULTIPLIERS", "DEMAND"])
        except ScoringUnavailable:
            if decides:
                self.triton.metrics.degraded.labels("pricing").inc(len(items))
            return None
        version = f"{self.settings.model_pricing}:{result.model_version}"
        return version, result.outputs["MULTIPLIERS"], result.outputs["DEMAND"]

    def record_expected_revenue(self, old: float, new: float, mult: np.ndarray, demand: np.ndarray) -> None:
        """Expected revenue per hour at the old and the new price, by the demand model (metrics only)."""
        hourly = demand / (7 * 24)
        self.triton.metrics.price_expected_revenue.labels("old").inc(old * float(hourly[int(np.argmin(np.abs(mult - 1.0)))]))
        self.triton.metrics.price_expected_revenue.labels("new").inc(
            new * float(hourly[int(np.argmin(np.abs(mult - new / old)))]))

    async def propose(self, states: dict[str, dict[str, float]], vectors: dict[str, Sequence[float]],
                      ts: float) -> list[Adjustment]:
        """``PRICING_POLICY=model``: the margin-maximising multiplier of the demand model, through
        the guardrails. One Triton call for all items; returns only items whose price changes."""
        if not states:
            return []
        items = list(states)
        predicted = await self.demand(items, vectors)
        if predicted is None:  # no adjustment is safer than a guess
            return []
        version, mults, demands = predicted
        out = []
        for row, item in enumerate(items):
            st = states[item]
            mult, demand = mults[row], demands[row]
            margin = (st["price"] * mult - st.get("cost", 0.0)) * demand
            best = float(mult[int(np.argmax(margin))])
            new, guard = apply_guardrails(st, st["price"] * best, ts, self.settings)
            if guard is not None:
                self.triton.metrics.price_guardrail_hits.labels(guard).inc()
            if abs(new - st["price"]) >= 0.005:
                self.record_expected_revenue(st["price"], new, mult, demand)
                out.append(Adjustment(item, st["price"], new, f"margin-max multiplier {best:.2f}", guard, version))
        return out

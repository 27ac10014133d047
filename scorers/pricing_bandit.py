"""Live bandit pricing: each item's :class:`~scorers.bandit.PricingBandit`, one decision period at a time.

``PRICING_POLICY=bandit`` (the default) prices items this way; the stream feeds it and keeps
its state (see :mod:`streams.processors`). An item's decision period:

1. **choose**: the item's bandit picks an arm (a multiplier of the item's reference price);
2. **walk**: at each evaluation (at most once per ``PRICE_EVAL_INTERVAL_S`` of event time) the
   price moves one hour's step towards the arm's price through
   :func:`scorers.pricing.apply_guardrails` (floor, ceiling, at most
   ``PRICE_MAX_CHANGE_PER_HOUR`` once an hour, no change out of stock);
3. **settle**: once the price has reached the arm's price (or the floor or ceiling stops it
   short), ``settled_at`` is that evaluation's event time;
4. **learn**: ``PRICE_BANDIT_PERIOD_S`` of event time after ``settled_at``, the reward is the
   item's sales value per hour over ``[settled_at, now)`` (``ss:i:{item}:revenue``: what the
   orders that followed paid), ``learn`` is called and the next arm chosen.

A period in which the item was seen out of stock is not learned (no sales for want of stock
says nothing about the price); a price that never settles within two periods is re-chosen
without learning. The whole state of an item (bandit + period) is one small Redis hash
(``ss:i:{item}:bandit``), read and written back at every evaluation: any worker can price any
item, and a crash loses no learning (the hourly guardrail bounds what two workers racing on
one item could do).

:meth:`BanditPricer.step` is pure (state in, state out), so it is tested directly:

>>> from streamscore.settings import Settings
>>> s = Settings(price_bandit_period_s=3 * 3600)
>>> pricer = BanditPricer(s)
>>> st = {"price": 10.0, "cost": 6.0, "stock": 5, "ref_price": 10.0}
>>> period, d, reward = pricer.step("item-1", st, None, None, ts=0.0)
>>> period.arm == d.multiplier and reward is None and period.learned == 0
True
>>> abs(d.price - 10.0) <= 1.0  # one hour's step at most
True
>>> period.stockout = False; period.settled_at = 0.0
>>> pricer.due(period, 3 * 3600)
True
>>> period, d, reward = pricer.step("item-1", {**st, "price": d.price}, period, 25.0 * 3, ts=3 * 3600)
>>> reward, period.learned, period.last_reward
(25.0, 1, 25.0)
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

from scorers.bandit import Decision, PricingBandit
from streamscore.settings import Settings

MODEL_VERSION = "pricing-bandit"


@dataclass
class Period:
    """One item's bandit and where its current decision period stands (event-time seconds)."""

    bandit: PricingBandit
    arm: float | None = None  # the multiplier being played (None: none chosen yet)
    chosen_at: float = 0.0
    settled_at: float | None = None  # when the price reached the arm's price
    stockout: bool = False  # seen out of stock during this period: do not learn from it
    learned: int = 0  # rewards learned so far
    last_reward: float | None = None  # revenue per hour of the last learned period
    last_window: tuple[float, float] | None = None  # its event-time window [from, to)

    def to_fields(self) -> dict[str, Any]:
        return {"model": self.bandit.to_bytes(), "arm": "" if self.arm is None else repr(self.arm),
                "chosen_at": repr(self.chosen_at), "settled_at": "" if self.settled_at is None else repr(self.settled_at),
                "stockout": int(self.stockout), "learned": self.learned,
                "last_reward": "" if self.last_reward is None else repr(self.last_reward),
                "last_window": "" if self.last_window is None else f"{self.last_window[0]!r} {self.last_window[1]!r}"}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> "Period":
        def num(name: str) -> float | None:
            raw = fields.get(name.encode(), b"")
            return float(raw) if raw else None

        return cls(bandit=PricingBandit.from_bytes(fields[b"model"]), arm=num("arm"),
                   chosen_at=num("chosen_at") or 0.0, settled_at=num("settled_at"),
                   stockout=fields.get(b"stockout", b"0") == b"1", learned=int(num("learned") or 0),
                   last_reward=num("last_reward"),
                   last_window=tuple(float(x) for x in fields[b"last_window"].split()) if fields.get(b"last_window") else None)


class BanditPricer:
    def __init__(self, settings: Settings):
        self.s = settings

    def new_period(self, item_id: str) -> Period:
        """A fresh bandit for ``item_id``, seeded from ``PRICE_BANDIT_SEED`` and the item id
        (deterministic: a replay makes the same choices)."""
        seed = (self.s.price_bandit_seed * 1_000_003 + zlib.crc32(item_id.encode())) % 2 ** 32
        return Period(PricingBandit(seed=seed))

    def due(self, period: Period, ts: float) -> bool:
        """Has the current arm been held (settled) for a whole period?"""
        return period.settled_at is not None and ts - period.settled_at >= self.s.price_bandit_period_s

    def stale(self, period: Period, ts: float) -> bool:
        """Never settled within two periods (e.g. a guardrail kept it away): choose again."""
        return period.settled_at is None and ts - period.chosen_at >= 2 * self.s.price_bandit_period_s

    def step(self, item_id: str, state: dict[str, float], period: Period | None, revenue: float | None,
             ts: float) -> tuple[Period, Decision, float | None]:
        """One evaluation of one item at event time ``ts``. ``revenue``: the item's sales value over
        ``[period.settled_at, ts)`` when :meth:`due` (else ignored). Returns the updated period,
        the guarded decision, and the reward learned now (None when nothing was learned)."""
        if period is None:
            period = self.new_period(item_id)
        reward = None
        if state.get("stock", 1) <= 0:
            period.stockout = True
            price = state["price"]
            return period, Decision(period.arm, price, price, price, "out_of_stock"), None
        if period.arm is None or self.due(period, ts) or self.stale(period, ts):
            if period.arm is not None and self.due(period, ts) and not period.stockout and revenue is not None:
                hours = (ts - period.settled_at) / 3600.0
                reward = revenue / hours
                period.bandit.learn(item_id, period.arm, reward)
                period.learned += 1
                period.last_reward, period.last_window = reward, (period.settled_at, ts)
            decision = period.bandit.propose(item_id, state, ts, self.s)
            period.arm, period.chosen_at, period.settled_at, period.stockout = decision.multiplier, ts, None, False
        else:
            decision = period.bandit.price_for(state, period.arm, ts, self.s)
        if period.settled_at is None and self.settled(decision):
            period.settled_at = ts
        return period, decision, reward

    @staticmethod
    def settled(d: Decision) -> bool:
        """The price is at the arm's price: this hour's step reached the target, or the floor or
        ceiling is as close as the guardrails allow."""
        if d.multiplier is None:
            return False
        if d.guardrail in ("floor", "ceiling"):
            return True
        return d.guardrail is None and math.isfinite(d.target) and abs(d.price - d.target) < 0.01 + 1e-9

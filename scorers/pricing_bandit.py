"""Live bandit pricing: each item's :class:`~scorers.bandit.PricingBandit`, evaluated hour by hour.

``PRICING_POLICY=bandit`` (the default) prices items this way; the stream feeds it and keeps
its state (see :mod:`streams.processors`). At each evaluation of an item (at most once per
``PRICE_EVAL_INTERVAL_S`` of event time, when orders or catalog updates touch it):

1. **learn** from the window since the last evaluation ``[last_eval, now)``: the item's sales
   value in it (``ss:i:{item}:revenue``: what the orders that followed paid) per hour, at the
   price that held over it, with its length and event time
   (``PricingBandit.learn(..., hours=, price=, ts=)``: the bandit's demand model takes the units
   sold as a Poisson count, so an hour without sales is evidence too). A window that began out
   of stock is not learned (no sales for want of stock says nothing about the price);
2. **decide**: every ``PRICE_BANDIT_PERIOD_S`` the bandit pulls an arm (a multiplier of the
   item's reference price), otherwise it keeps the current one;
3. **move**: one hour's step towards the arm's price through
   :func:`scorers.pricing.apply_guardrails` (floor, ceiling, at most
   ``PRICE_MAX_CHANGE_PER_HOUR`` once an hour, no change out of stock).

Windows are in event time and end at the evaluation's time (the newest event time of the batch
of items evaluated together): an order that reaches the worker after its item's window closed
(a partition lagging behind the others by more than the gap) is not learned. At an hourly
window that is rare; it biases nothing towards one price.

The whole state of an item (bandit + window) is one small Redis hash (``ss:i:{item}:bandit``),
read and written back at every evaluation: any worker can price any item, and a crash or restart
loses no learning (the hourly guardrail bounds what two workers racing on one item could do).

:meth:`BanditPricer.step` is pure (state in, state out), so it is tested directly:

>>> from streamscore.settings import Settings
>>> pricer = BanditPricer(Settings(price_bandit_period_s=3 * 3600))
>>> st = {"price": 10.0, "cost": 6.0, "stock": 5, "ref_price": 10.0}
>>> period, d, reward = pricer.step("item-1", st, None, None, ts=0.0)
>>> period.arm == d.multiplier and reward is None and period.learned == 0
True
>>> abs(d.price - 10.0) <= 1.0 and period.window_price == d.price  # one hour's step at most
True
>>> pricer.needs_revenue(period)  # from the last evaluation on
0.0
>>> period, d, reward = pricer.step("item-1", {**st, "price": d.price}, period, 75.0, ts=3 * 3600)
>>> reward, period.learned, period.last_window
(25.0, 1, (0.0, 10800.0))
>>> period, d, reward = pricer.step("item-1", {**st, "stock": 0}, period, 10.0, ts=4 * 3600)
>>> reward, d.guardrail, period.stockout  # learned the hour before the stock-out was seen, then holds
(10.0, 'out_of_stock', True)
>>> pricer.step("item-1", st, period, 0.0, ts=5 * 3600)[2] is None  # the out-of-stock hour: not learned
True
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from scorers.bandit import Decision, PricingBandit
from streamscore.settings import Settings

MODEL_VERSION = "pricing-bandit"


@dataclass
class Period:
    """One item's bandit and its current arm and window (event-time seconds)."""

    bandit: PricingBandit
    arm: float | None = None  # the multiplier being played (None: none chosen yet)
    chosen_at: float = 0.0
    last_eval: float | None = None  # start of the window being observed
    window_price: float | None = None  # the price set at last_eval, held over the window
    stockout: bool = False  # out of stock at last_eval: do not learn from this window
    learned: int = 0  # windows learned so far
    last_reward: float | None = None  # revenue per hour of the last learned window
    last_window: tuple[float, float] | None = None  # that window [from, to)

    _FLOATS = ("arm", "chosen_at", "last_eval", "window_price", "last_reward")

    def to_fields(self) -> dict[str, Any]:
        fields = {name: "" if getattr(self, name) is None else repr(getattr(self, name)) for name in self._FLOATS}
        return {**fields, "model": self.bandit.to_bytes(), "stockout": int(self.stockout), "learned": self.learned,
                "last_window": "" if self.last_window is None else f"{self.last_window[0]!r} {self.last_window[1]!r}"}

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> "Period":
        floats = {name: float(fields[name.encode()]) if fields.get(name.encode()) else None for name in cls._FLOATS}
        window = fields.get(b"last_window")
        return cls(bandit=PricingBandit.from_bytes(fields[b"model"]), **{**floats, "chosen_at": floats["chosen_at"] or 0.0},
                   stockout=fields.get(b"stockout", b"0") == b"1", learned=int(fields.get(b"learned", b"0")),
                   last_window=tuple(float(x) for x in window.split()) if window else None)


class BanditPricer:
    def __init__(self, settings: Settings):
        self.s = settings

    def new_period(self, item_id: str) -> Period:
        """A fresh bandit for ``item_id``, seeded from ``PRICE_BANDIT_SEED`` and the item id
        (deterministic: a replay makes the same choices)."""
        seed = (self.s.price_bandit_seed * 1_000_003 + zlib.crc32(item_id.encode())) % 2 ** 32
        return Period(PricingBandit(seed=seed, objective=self.s.price_bandit_objective))

    @staticmethod
    def needs_revenue(period: Period) -> float | None:
        """Start of the window whose sales value :meth:`step` needs (None: none to learn)."""
        if period.arm is None or period.stockout or period.last_eval is None:
            return None
        return period.last_eval

    def step(self, item_id: str, state: dict[str, float], period: Period | None, revenue: float | None,
             ts: float) -> tuple[Period, Decision, float | None]:
        """One evaluation of one item at event time ``ts``. ``revenue``: the item's sales value over
        ``[needs_revenue(period), ts)``. Returns the updated period, the guarded decision, and the
        reward learned now (revenue per hour; None when nothing was learned)."""
        ts = float(ts)
        if period is None:
            period = self.new_period(item_id)
        reward = None
        start = self.needs_revenue(period)
        if start is not None and revenue is not None and ts > start:
            hours = (ts - start) / 3600.0
            reward = revenue / hours
            period.bandit.learn(item_id, period.arm, reward, hours=hours, price=period.window_price, ts=start)
            period.learned += 1
            period.last_reward, period.last_window = reward, (start, ts)
        if state.get("stock", 1) <= 0:
            price = state["price"]
            decision = Decision(period.arm, price, price, price, "out_of_stock")
        elif period.arm is None or ts - period.chosen_at >= self.s.price_bandit_period_s:
            decision = period.bandit.propose(item_id, state, ts, self.s)
            if decision.multiplier is not None:
                period.arm, period.chosen_at = decision.multiplier, ts
        else:
            decision = period.bandit.price_for(state, period.arm, ts, self.s)
        period.last_eval, period.window_price = ts, decision.price
        period.stockout = state.get("stock", 1) <= 0
        return period, decision, reward

"""A pricing bandit: River Thompson sampling over price multipliers, sharing one demand model per key.

Each key (an item id, or a category shared by similar items) has its own
:class:`DemandThompson` policy, a ``river.bandit.ThompsonSampling`` whose arms are multipliers of
the key's **reference price** (``state["ref_price"]``: the first catalog price). The arms do not
learn one by one: they share a log-linear demand model,

    log E[units per hour at multiplier m] = a + b (m - 1) + c (m - 1)^2,

whose Gaussian posterior is a closed-form Bayesian linear regression (:class:`scorers.demand.GaussianLinear`)
(:class:`DemandPosterior`). To pull, the policy draws one (b, c) from that posterior and plays the
arm with the highest expected revenue ``m * exp(b (m - 1) + c (m - 1)^2)`` under the draw
(``a`` scales every arm alike). A sale at any price informs every arm, so there is no "every arm
once" first round, and the prior starts at the reference price: ``b ~ N(-1, slope_sd^2)`` is the
slope at which the reference price is revenue-optimal (a merchant's price is the best first
guess), ``c ~ N(0, curve_sd^2)`` lets the curve bend.

Poisson counts enter as a Poisson regression, one iteratively-reweighted step per observation
(working response ``eta + (units - mu) / mu``, weight ``mu``, with ``mu`` the current model's
expected units): no logarithm of a zero count, so items selling 2 units a day are not biased.
Observations in the same block of time (``block_s``, a day by default; the caller passes ``ts``)
share a random level shift ``N(0, tau^2)``, ``tau`` estimated from the data: prices compared
within a day cancel that day's demand shock. Callers that know only the reward (``learn(key, m,
reward)``) get a log-revenue regression with its noise estimated from the residuals.

Every price leaves through :func:`scorers.pricing.apply_guardrails` (floor at cost plus the
minimum margin, ceiling, at most one change of at most ``PRICE_MAX_CHANGE_PER_HOUR`` per hour,
no change out of stock), asked for one hour's step at a time (:func:`step_towards`); a
non-finite target keeps the price. The bandit pickles (:meth:`PricingBandit.to_bytes` /
:meth:`PricingBandit.from_bytes`) for checkpoints, and a restored one decides exactly as the
original would.

>>> from streamscore.settings import Settings
>>> s = Settings()
>>> b = PricingBandit(seed=1)
>>> st = {"price": 10.0, "cost": 6.0, "stock": 5, "ref_price": 10.0}
>>> d = b.propose("item-1", st, 0.0, s)
>>> b.arms["item-1"][:4], len(b.arms["item-1"])
((0.63, 0.67, 0.713, 0.759), 15)
>>> d.multiplier in b.arms["item-1"] and 9.0 <= d.price <= 11.0
True
>>> for day in range(60):  # demand 20 * exp(-(m - 1) / 1.2) an hour: revenue peaks at m = 1.2
...     m = b.choose("item-1", st, s)
...     units = round(24 * 20 * math.exp(-(m - 1) / 1.2))
...     b.learn("item-1", m, units * 10 * m / 24, hours=24, ts=day * 86400.0)
>>> b.best("item-1")  # the arm nearest 1.2 (arms ... 1.1, 1.171, 1.246 ...)
1.171
>>> PricingBandit.from_bytes(b.to_bytes()).choose("item-1", st, s) == b.choose("item-1", st, s)
True
"""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import dataclass

from river import bandit, proba

from scorers.compact_random import CompactRandom
from scorers.demand import DemandPosterior
from scorers.pricing import apply_guardrails
from streamscore.settings import Settings

# Without explicit multipliers each key gets LEVELS multipliers of its reference price spaced
# evenly on a log scale from the floor to the ceiling the guardrails allow for it, the one nearest
# 1.0 being 1.0 (keep the reference price). The arms share one demand model, so a fine grid costs
# no extra exploration.
LEVELS = 15
DAY = 86400.0

__all__ = ["CompactRandom", "Decision", "DemandPosterior", "DemandThompson", "MeanPosterior", "PricingBandit",
           "step_towards"]  # CompactRandom, DemandPosterior: re-exported (states pickled before the split name them here)


class MeanPosterior(proba.base.ContinuousDistribution):
    """Normal posterior of an arm's mean reward: prior N(``prior_mean``, ``prior_sd``^2), rewards
    with noise ``noise_sd`` around the mean. After n rewards with mean m the mean is normal with
    precision 1 / prior_sd^2 + n / noise_sd^2 and mean (prior_mean / prior_sd^2 + n m / noise_sd^2)
    / precision. :class:`DemandThompson` keeps one per arm as that arm's reward record (the
    decisions come from the shared demand model).

    >>> p = MeanPosterior(prior_mean=1.0, prior_sd=1.0, noise_sd=0.5)
    >>> for r in (2.0, 2.2, 1.8):
    ...     p.update(r)
    >>> round(p.mode, 3), p.n_samples, round(p.sd, 4), round(p.spread(), 4)
    (1.923, 3, 0.2774, 0.2)
    """

    def __init__(self, prior_mean: float = 1.0, prior_sd: float = 1.0, noise_sd: float = 0.5,
                 seed: int | None = None):
        super().__init__(seed)
        self.prior_mean = prior_mean
        self.prior_sd = prior_sd
        self.noise_sd = noise_sd
        self._n = 0
        self._mean = 0.0
        self._m2 = 0.0  # Welford: sum of squared deviations from the running mean

    @property
    def n_samples(self) -> int:
        return self._n

    def _precision(self) -> float:
        return 1.0 / self.prior_sd ** 2 + self._n / self.noise_sd ** 2

    @property
    def mode(self) -> float:
        return (self.prior_mean / self.prior_sd ** 2 + self._n * self._mean / self.noise_sd ** 2) / self._precision()

    @property
    def sd(self) -> float:
        """Standard deviation of the posterior of the mean."""
        return 1.0 / math.sqrt(self._precision())

    def spread(self) -> float:
        """The sample standard deviation of the rewards seen (0 before two)."""
        return math.sqrt(self._m2 / (self._n - 1)) if self._n > 1 else 0.0

    def update(self, x: float, w: float = 1.0) -> None:
        self._n += 1
        delta = x - self._mean
        self._mean += delta / self._n
        self._m2 += delta * (x - self._mean)

    def revert(self, x: float, w: float = 1.0) -> None:
        if self._n <= 1:
            self._n, self._mean, self._m2 = 0, 0.0, 0.0
            return
        mean = (self._n * self._mean - x) / (self._n - 1)
        self._m2 = max(0.0, self._m2 - (x - self._mean) * (x - mean))
        self._mean, self._n = mean, self._n - 1

    def sample(self) -> float:
        if self._rng is None:
            self._rng = random.Random(self.seed)
        return self._rng.gauss(self.mode, self.sd)

    def __call__(self, x: float) -> float:
        sd = self.sd
        return math.exp(-0.5 * ((x - self.mode) / sd) ** 2) / (sd * math.sqrt(math.tau))

    def cdf(self, x: float) -> float:
        return 0.5 * (1.0 + math.erf((x - self.mode) / (self.sd * math.sqrt(2.0))))

    def __repr__(self) -> str:
        return f"MeanPosterior(mean={self.mode:.3f}, sd={self.sd:.3f}, n={self._n})"

    # Pickled without its random generator (2.5 kB each, one per arm: the bulk of an item's state
    # in Redis): :class:`DemandThompson` pulls with the policy's generator, never with an arm's.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_rng"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._rng = None  # made on first use (sample)


class DemandThompson(bandit.ThompsonSampling):
    """``river.bandit.ThompsonSampling`` whose arms share a :class:`DemandPosterior`: a pull draws
    one demand curve and plays the arm that earns most under it (revenue, or margin over ``cost``).
    Each arm still keeps River's per-arm record (a :class:`MeanPosterior` of its rewards, and the
    pull counts)."""

    def __init__(self, demand: DemandPosterior, ref_price: float = 1.0, cost: float = 0.0,
                 objective: str = "revenue", seed: int | None = None):
        super().__init__(reward_obj=MeanPosterior(), seed=seed)
        self._rng = CompactRandom(seed)  # pulls draw from it; compact in every item's stored state
        self.demand = demand
        self.ref_price = ref_price
        self.cost = cost
        self.objective = objective

    def value(self, m: float, b: float, c: float) -> float:
        """Expected revenue (or margin) per hour at multiplier ``m`` under slope ``b``, curvature
        ``c``, relative to the demand at the reference price."""
        d = m - 1.0
        unit = m * self.ref_price - (self.cost if self.objective == "margin" else 0.0)
        return unit * math.exp(min(b * d + c * d * d, 50.0))

    def _pull(self, arm_ids):
        b, c = self.demand.sample(self._rng)
        cost = self.cost if self.objective == "margin" else 0.0
        best, top = arm_ids[0], -math.inf
        for m in arm_ids:
            d = m - 1.0
            v = (m * self.ref_price - cost) * math.exp(min(b * d + c * d * d, 50.0))
            if v > top:
                best, top = m, v
        return best

    def best(self, arm_ids) -> float:
        b, c = self.demand.slope_curve()
        return max(arm_ids, key=lambda m: self.value(m, b, c))


def step_towards(state: dict[str, float], target: float, settings: Settings) -> float:
    """One hour's move from ``state["price"]`` towards ``target``: at most
    ``PRICE_MAX_CHANGE_PER_HOUR``, in whole cents rounded towards the current price.

    (``apply_guardrails`` rounds a clamped step to the nearest cent and refuses it as
    ``infeasible`` when that rounding crosses the hourly limit, so a proposal that asks for more
    than one step would often leave a low price stuck.)

    >>> s = Settings()
    >>> [step_towards({"price": 2.06}, target, s) for target in (3.0, 1.0, 2.1)]
    [2.26, 1.86, 2.1]
    """
    price = state["price"]
    step = settings.price_max_change_per_hour
    hi = math.floor(price * (1 + step) * 100 + 1e-6) / 100
    lo = math.ceil(price * (1 - step) * 100 - 1e-6) / 100
    return min(max(target, lo), hi)


@dataclass(frozen=True)
class Decision:
    multiplier: float | None  # the arm pulled (None: no arm is open, the price is kept)
    target: float  # reference price x multiplier
    proposed: float  # this hour's step towards the target (what apply_guardrails is given)
    price: float  # what the guardrails let through
    guardrail: str | None  # the guardrail that bound it, if any


class PricingBandit:
    """Thompson sampling over multipliers of each key's reference price, with one shared demand
    model per key: ``multipliers`` for every key, or (None) a grid per key from its guardrails
    (:meth:`grid`), fixed when the key is first seen.

    ``prior_slope``, ``slope_sd``, ``curve_sd``: the demand prior (see :class:`DemandPosterior`);
    ``block_s``: the time block whose observations share a demand shock (a day);
    ``objective``: ``"revenue"`` or ``"margin"`` (price minus the state's cost)."""

    def __init__(self, multipliers: tuple[float, ...] | None = None, seed: int = 0,
                 levels: int = LEVELS, prior_slope: float = -1.0, slope_sd: float = 1.0,
                 curve_sd: float = 0.5, block_s: float = DAY, objective: str = "revenue"):
        if multipliers is not None and not multipliers:
            raise ValueError("at least one multiplier")
        if objective not in ("revenue", "margin"):
            raise ValueError(f"objective {objective!r}: 'revenue' or 'margin'")
        self.multipliers = None if multipliers is None else tuple(sorted(set(float(m) for m in multipliers)))
        self.levels = levels
        self.seed = seed
        self.prior_slope = prior_slope
        self.slope_sd = slope_sd
        self.curve_sd = curve_sd
        self.block_s = block_s
        self.objective = objective
        self._rng = CompactRandom(seed)
        self.arms: dict[str, tuple[float, ...]] = {}  # key -> its multipliers
        self.policies: dict[str, DemandThompson] = {}
        self._untimed: dict[str, int] = {}  # key -> observations learned without a timestamp

    # -- choosing -------------------------------------------------------------------------------
    @staticmethod
    def _bounds(state: dict[str, float], settings: Settings) -> tuple[float, float, float]:
        ref = state.get("ref_price", state["price"])
        floor = round(state.get("cost", 0.0) * (1 + settings.price_min_margin), 2)
        ceiling = round(ref * settings.price_max_multiplier, 2)
        return ref, floor, ceiling

    def grid(self, state: dict[str, float], settings: Settings) -> tuple[float, ...]:
        """``levels`` multipliers from the floor to the ceiling, evenly spaced on a log scale
        (rounded to 3 decimals), the one nearest 1.0 replaced by 1.0.

        >>> PricingBandit(levels=5).grid({"price": 10.0, "cost": 6.0, "ref_price": 10.0}, Settings())
        (0.63, 0.783, 1.0, 1.208, 1.5)
        """
        ref, floor, ceiling = self._bounds(state, settings)
        lo, hi = max(floor, 0.01) / ref, ceiling / ref
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo or self.levels < 2:
            return (1.0,)
        ms = [round(lo * (hi / lo) ** (i / (self.levels - 1)), 3) for i in range(self.levels)]
        if lo <= 1.0 <= hi:  # the level nearest the reference price becomes the reference price
            ms[min(range(len(ms)), key=lambda i: abs(math.log(ms[i])))] = 1.0
        return tuple(sorted(set(ms)))

    def open_arms(self, state: dict[str, float], settings: Settings, key: str | None = None) -> list[float]:
        """The key's multipliers whose price lies within the floor and the ceiling (the ones the
        guardrails can let the price settle at)."""
        ref, floor, ceiling = self._bounds(state, settings)
        arms = self.arms.get(key) or self.multipliers or self.grid(state, settings)
        return [m for m in arms if floor - 0.005 <= round(ref * m, 2) <= ceiling + 0.005]

    def _policy(self, key: str, state: dict[str, float] | None = None,
                settings: Settings | None = None) -> DemandThompson:
        if key not in self.policies:
            if self.multipliers is not None:
                self.arms[key] = self.multipliers
            elif state is not None:
                self.arms[key] = self.grid(state, settings or Settings())
            else:
                raise ValueError(f"no arms for {key!r} yet: choose before learning")
            demand = DemandPosterior(self.prior_slope, self.slope_sd, self.curve_sd)
            self.policies[key] = DemandThompson(demand, objective=self.objective, seed=self._rng.randrange(2 ** 32))
        policy = self.policies[key]
        if state is not None:
            ref = state.get("ref_price", state["price"])
            if isinstance(ref, (int, float)) and math.isfinite(ref) and ref > 0:
                policy.ref_price = float(ref)
            cost = state.get("cost", 0.0)
            if isinstance(cost, (int, float)) and math.isfinite(cost):
                policy.cost = float(cost)
        return policy

    def choose(self, key: str, state: dict[str, float], settings: Settings) -> float | None:
        """The arm to play next for ``key`` (None when no arm is open)."""
        policy = self._policy(key, state, settings)
        arms = self.open_arms(state, settings, key)
        if not arms:
            return None
        return policy.pull(arms)

    def price_for(self, state: dict[str, float], multiplier: float | None, ts: float,
                  settings: Settings) -> Decision:
        """The guarded price one hour's step from ``state`` towards reference price x ``multiplier``."""
        price = state["price"]
        if multiplier is None:
            return Decision(None, price, price, price, "no_open_arm")
        target = state.get("ref_price", price) * multiplier
        if not math.isfinite(target):
            return Decision(multiplier, target, price, price, "invalid_proposal")
        proposed = step_towards(state, target, settings)
        new, guard = apply_guardrails(state, proposed, ts, settings)
        return Decision(multiplier, target, proposed, new, guard)

    def propose(self, key: str, state: dict[str, float], ts: float, settings: Settings) -> Decision:
        """Choose an arm for ``key`` and return the price the guardrails allow towards it."""
        if state.get("stock", 1) <= 0:  # nothing to learn or change while out of stock
            return Decision(None, state["price"], state["price"], state["price"], "out_of_stock")
        return self.price_for(state, self.choose(key, state, settings), ts, settings)

    # -- learning -------------------------------------------------------------------------------
    def learn(self, key: str, multiplier: float, reward: float, *, hours: float | None = None,
              price: float | None = None, ts: float | None = None) -> None:
        """Reward of one decision: revenue per hour at the price ``multiplier`` settled at.

        Optional, and worth passing: ``hours`` the reward was earned over (the units sold,
        ``reward * hours / price``, then enter as a Poisson count), ``price`` actually charged
        (default reference price x ``multiplier``; it may be any price, e.g. one on the way to
        the arm), ``ts`` (event time: observations in the same ``block_s`` share a demand shock,
        so prices compared within a day cancel it). Out-of-stock time should not be reported."""
        policy = self._policy(key)
        if multiplier not in self.arms[key]:
            raise ValueError(f"{multiplier} is not an arm of {key!r} ({self.arms[key]})")
        if not (math.isfinite(reward) and reward >= 0):
            return
        price = policy.ref_price * multiplier if price is None else price
        if not (math.isfinite(price) and price > 0):
            return
        m = price / policy.ref_price
        if not (math.isfinite(m) and 0.0 < m < 10.0):
            return
        if ts is None or not math.isfinite(ts):
            block = ("untimed", self._untimed.get(key, 0))  # a block of its own
            self._untimed[key] = self._untimed.get(key, 0) + 1
        else:
            block = math.floor(ts / self.block_s)
        demand = policy.demand
        if hours is not None and math.isfinite(hours) and hours > 0:
            demand.add(block, m, reward * hours / price, float(hours))
        else:  # no exposure: log units per hour, floored at a tenth of the level seen so far
            rate = reward / price
            lowest = math.exp(demand.offset) / 10 if demand.offset is not None else 1e-6
            demand.add(block, m, None, None, math.log(max(rate, lowest, 1e-9)))
        if ts is None:
            demand.close()
        policy.update(multiplier, reward)

    def best(self, key: str) -> float | None:
        """The arm with the highest expected revenue (margin) under the posterior mean demand
        curve (None before any reward)."""
        policy = self.policies.get(key)
        if policy is None or not policy._counts:
            return None
        return policy.best(list(self.arms[key]))

    def pulls(self, key: str) -> dict[float, int]:
        """Rewards learned per arm."""
        policy = self.policies.get(key)
        return {} if policy is None else dict(policy._counts)

    # -- checkpoints ----------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_bytes(raw: bytes) -> "PricingBandit":
        model = pickle.loads(raw)
        if not isinstance(model, PricingBandit):
            raise TypeError(f"checkpoint holds {type(model).__name__}, not PricingBandit")
        return model

"""A pricing bandit: River Thompson sampling over a few price multipliers per item (or category).

Each key (an item id, or a category shared by similar items) has its own
``river.bandit.ThompsonSampling`` policy whose arms are multipliers of the key's **reference
price** (``state["ref_price"]``: the first catalog price), so an arm means the same price level
whenever it is pulled. Its reward model is :class:`MeanPosterior`: a normal posterior over each
arm's mean reward (River's ``proba.Gaussian`` samples the rewards themselves, which never stops
exploring; the posterior of the mean narrows as evidence comes in).

The caller reports a reward per decision with :meth:`PricingBandit.learn`: the revenue (or
margin) per hour of the orders that followed at the price the arm settled at. Rewards are divided
by the key's mean reward over its first round (every arm once, a seeded order), so one prior suits
items that sell 2 or 20,000 units a day.

Every price leaves through :func:`scorers.pricing.apply_guardrails` (floor at cost plus the
minimum margin, ceiling, at most one change of at most ``PRICE_MAX_CHANGE_PER_HOUR`` per hour,
no change out of stock), asked for one hour's step at a time (:func:`step_towards`); a
non-finite target keeps the price. The bandit pickles
(:meth:`to_bytes` / :meth:`from_bytes`) for checkpoints, and a restored one decides exactly as the
original would.

>>> from streamscore.settings import Settings
>>> s = Settings()
>>> b = PricingBandit(seed=1)
>>> st = {"price": 10.0, "cost": 6.0, "stock": 5, "ref_price": 10.0}
>>> d = b.propose("item-1", st, 0.0, s)
>>> b.arms["item-1"]
(0.63, 0.728, 0.841, 1.0, 1.123, 1.298, 1.5)
>>> d.multiplier in b.arms["item-1"] and 9.0 <= d.price <= 11.0
True
>>> for _ in range(200):  # the 1.123 arm earns most
...     m = b.choose("item-1", st, s)
...     b.learn("item-1", m, {1.123: 12.0}.get(m, 9.0))
>>> b.best("item-1")
1.123
>>> PricingBandit.from_bytes(b.to_bytes()).choose("item-1", st, s) == b.choose("item-1", st, s)
True
"""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import dataclass

from river import bandit, proba

from scorers.pricing import apply_guardrails
from streamscore.settings import Settings

# Without explicit multipliers each key gets LEVELS multipliers of its reference price spaced
# evenly on a log scale from the floor to the ceiling the guardrails allow for it, the one nearest
# 1.0 being 1.0 (keep the reference price).
LEVELS = 7


class MeanPosterior(proba.base.ContinuousDistribution):
    """Normal posterior of an arm's mean reward: prior N(``prior_mean``, ``prior_sd``^2), rewards
    with noise ``noise_sd`` around the mean. After n rewards with mean m the mean is normal with
    precision 1 / prior_sd^2 + n / noise_sd^2 and mean (prior_mean / prior_sd^2 + n m / noise_sd^2)
    / precision. :class:`PricingBandit` sets ``noise_sd`` to the pooled spread of all its arms'
    rewards, so one lucky or unlucky day does not decide an arm.

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
        return self._rng.gauss(self.mode, self.sd)

    def __call__(self, x: float) -> float:
        sd = self.sd
        return math.exp(-0.5 * ((x - self.mode) / sd) ** 2) / (sd * math.sqrt(math.tau))

    def cdf(self, x: float) -> float:
        return 0.5 * (1.0 + math.erf((x - self.mode) / (self.sd * math.sqrt(2.0))))

    def __repr__(self) -> str:
        return f"MeanPosterior(mean={self.mode:.3f}, sd={self.sd:.3f}, n={self._n})"


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
    """Thompson sampling over multipliers of each key's reference price: ``multipliers`` for every
    key, or (None) a grid per key from its guardrails (:meth:`grid`), fixed when the key is first seen."""

    def __init__(self, multipliers: tuple[float, ...] | None = None, seed: int = 0, prior_sd: float = 1.0,
                 noise_sd: float = 0.5, levels: int = LEVELS):
        if multipliers is not None and not multipliers:
            raise ValueError("at least one multiplier")
        self.multipliers = None if multipliers is None else tuple(sorted(set(float(m) for m in multipliers)))
        self.levels = levels
        self.seed = seed
        self.prior_sd = prior_sd
        self.noise_sd = noise_sd
        self._rng = random.Random(seed)
        self.arms: dict[str, tuple[float, ...]] = {}  # key -> its multipliers
        self.policies: dict[str, bandit.ThompsonSampling] = {}
        self.scale: dict[str, float] = {}  # key -> mean reward of its first round
        self.first_round: dict[str, list[tuple[float, float]]] = {}  # key -> (arm, raw reward) until scaled
        self.order: dict[str, list[float]] = {}  # key -> seeded order of its first round

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

    def _policy(self, key: str, state: dict[str, float] | None = None, settings: Settings | None = None):
        if key not in self.policies:
            if self.multipliers is not None:
                self.arms[key] = self.multipliers
            elif state is not None:
                self.arms[key] = self.grid(state, settings or Settings())
            else:
                raise ValueError(f"no arms for {key!r} yet: choose before learning")
            self.policies[key] = bandit.ThompsonSampling(
                reward_obj=MeanPosterior(prior_mean=1.0, prior_sd=self.prior_sd, noise_sd=self.noise_sd),
                seed=self._rng.randrange(2 ** 32))
            order = list(self.arms[key])
            self._rng.shuffle(order)
            self.order[key] = order
            self.first_round[key] = []
        return self.policies[key]

    def choose(self, key: str, state: dict[str, float], settings: Settings) -> float | None:
        """The arm to play next for ``key`` (None when no arm is open)."""
        policy = self._policy(key, state, settings)
        arms = self.open_arms(state, settings, key)
        if not arms:
            return None
        if key not in self.scale:  # first round: every open arm once, in a seeded order
            tried = {m for m, _ in self.first_round[key]}
            for m in self.order[key]:
                if m in arms and m not in tried:
                    return m
            self._close_first_round(key)
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
    def learn(self, key: str, multiplier: float, reward: float) -> None:
        """Reward of one decision: revenue (or margin) per hour at the price ``multiplier`` settled at."""
        policy = self._policy(key)
        if multiplier not in self.arms[key]:
            raise ValueError(f"{multiplier} is not an arm of {key!r} ({self.arms[key]})")
        if not math.isfinite(reward):
            return
        if key in self.scale:
            policy.update(multiplier, reward / self.scale[key])
            self._pool_noise(policy)
            return
        self.first_round[key].append((multiplier, float(reward)))
        if {m for m, _ in self.first_round[key]} >= set(self.arms[key]):
            self._close_first_round(key)

    def _close_first_round(self, key: str) -> None:
        raw = self.first_round.pop(key, [])
        mean = sum(r for _, r in raw) / len(raw) if raw else 0.0
        self.scale[key] = mean if mean > 0 else 1.0
        self.first_round[key] = []
        for m, r in raw:
            self.policies[key].update(m, r / self.scale[key])
        self._pool_noise(self.policies[key])

    def _pool_noise(self, policy: bandit.ThompsonSampling) -> None:
        """Set every arm's reward noise to the key's pooled within-arm spread (once there are 3
        degrees of freedom): a day's revenue is about as noisy at any price."""
        posts = [p for p in policy._rewards.values() if isinstance(p, MeanPosterior)]
        dof = sum(p.n_samples - 1 for p in posts if p.n_samples > 1)
        if dof >= 3:
            sd = math.sqrt(sum(p._m2 for p in posts) / dof)
            for p in posts:
                p.noise_sd = max(sd, 0.02)

    def best(self, key: str) -> float | None:
        """The arm with the highest posterior mean reward (None before any reward)."""
        policy = self.policies.get(key)
        if policy is None or not policy._rewards:
            return None
        return max(policy._rewards, key=lambda m: policy._rewards[m].mode)

    def pulls(self, key: str) -> dict[float, int]:
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

"""Pricing simulator: the River pricing bandit against the static price and the oracle price.

``python -m evaluation.pricing_sim`` builds demand curves, simulates ``--days`` (default 180)
days hour by hour for each, and compares three policies that all set prices through
:func:`scorers.pricing.apply_guardrails`:

* **static**: keep the reference price (multiplier 1.0);
* **oracle**: the fixed price that maximises expected revenue per hour on the known curve,
  anywhere between the floor and the ceiling;
* **bandit**: :class:`scorers.bandit.PricingBandit` (River Thompson sampling over its multipliers
  of the reference price, the arms sharing one Bayesian log-linear demand model), choosing an arm
  every :data:`DECISION_HOURS` hours; the price moves towards it at most 10% an hour; every
  in-stock hour is learned (its price, its units, its time). :data:`VARIANTS` also runs it with
  daily decisions, with one settled-revenue reward per day (how the first live loop reported),
  and with the first version's Poisson draws.

Curves. *Fitted on real data* (log-linear demand ``log E[units] = a + b * price / mean price``
plus seasonal terms, Poisson maximum likelihood): items of ``online-retail-uci`` (weekly, via
``models.pricing.item_weeks``), categories of ``retail-price`` (monthly, product fixed effects),
region/type series of ``avocado-prices`` (weekly, with a trend). Only downward-sloping fits are
kept (the others are listed as dropped). *Synthetic* (known, labelled ``synthetic``): constant
elasticity 0.5 and 2.5, a log-linear curve peaking at 1.2x, a competitor price at 1.1x (logistic),
and a slow seller.

Demand per hour is Poisson around the curve's rate at the current price, times a day-level
lognormal shock (sigma 0.1); 2% of days are out of stock (no sales, no price change). Demand
shocks, stock-outs and Poisson draws come from seeded generators shared by all policies; each
hour's count is the Poisson quantile of that hour's uniform draw (common random numbers). Costs
are not in the data: cost = 60% of the reference price (floor = cost x 1.05). Writes
``docs/img/pricing.png`` and the ``pricing`` section of ``docs/ONLINE.md``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import pdtr

from evaluation.common import IMG, write_section
from features.definitions import HOUR
from scorers.bandit import PricingBandit, step_towards
from scorers.pricing import apply_guardrails
from streamscore.settings import Settings

SEED = 20240611
DAYS = 180
BANDIT_SEEDS = 5
COST_SHARE = 0.6
SHOCK_SIGMA = 0.1
STOCKOUT_P = 0.02
TARGET_SHARE = 0.9  # acceptance: the bandit reaches >= 90% of the oracle's revenue
DECISION_HOURS = 1  # the bandit picks an arm every this many hours (the live worker's evaluation interval)
# (label, evaluate_curve keyword arguments): the same curves, other decision periods / feedback / draws
VARIANTS = (
    ("decisions every hour, hourly feedback, independent Poisson draws (the first version's coupling)",
     {"draws": "independent"}),
    ("decisions once a day, hourly feedback", {"period_h": 24}),
    ("decisions once a day, one reward per day (revenue per settled hour, no hours or time: how the first live "
     "loop reported)", {"period_h": 24, "feedback": "period"}),
)


@dataclass(frozen=True)
class Curve:
    """Expected units per hour at multiplier m of the reference price.

    kind ``loglinear``: rate * exp(b * (m - 1)); ``constant``: rate * m ** -e;
    ``logistic``: rate * s(k * (c - m)) / s(k * (c - 1)) with s the logistic function.
    """

    name: str
    source: str  # "online-retail-uci ...", "retail-price ...", "avocado-prices ...", "synthetic"
    kind: str
    params: dict
    ref_price: float
    rate: float  # units per hour at the reference price
    note: str = ""

    def units(self, m):
        m = np.asarray(m, dtype=np.float64)
        p = self.params
        if self.kind == "loglinear":
            return self.rate * np.exp(p["b"] * (m - 1.0))
        if self.kind == "constant":
            return self.rate * m ** (-p["e"])
        if self.kind == "logistic":
            s = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
            return self.rate * s(p["k"] * (p["c"] - m)) / s(p["k"] * (p["c"] - 1.0))
        raise ValueError(self.kind)

    @property
    def cost(self) -> float:
        return COST_SHARE * self.ref_price

    def bounds(self, settings: Settings) -> tuple[float, float]:
        """(lowest, highest) multiplier the guardrails allow."""
        floor = round(self.cost * (1 + settings.price_min_margin), 2)
        ceiling = round(self.ref_price * settings.price_max_multiplier, 2)
        return floor / self.ref_price, ceiling / self.ref_price

    def objective(self, m, what: str = "revenue"):
        """Expected revenue (or margin) per hour at multiplier m."""
        m = np.asarray(m, dtype=np.float64)
        unit = m * self.ref_price - (self.cost if what == "margin" else 0.0)
        return unit * self.units(m)

    def oracle(self, settings: Settings, what: str = "revenue") -> float:
        lo, hi = self.bounds(settings)
        grid = np.round(np.linspace(lo, hi, 2001) * self.ref_price, 2) / self.ref_price  # prices in cents
        grid = grid[(grid >= lo - 1e-12) & (grid <= hi + 1e-12)]
        return float(grid[int(np.argmax(self.objective(grid, what)))])


# -- fitting ----------------------------------------------------------------------------------------

def poisson_fit(X: np.ndarray, y: np.ndarray, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Poisson regression log E[y] = X @ beta by Newton's method -> (beta, standard errors)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    beta = np.zeros(X.shape[1])
    beta[0] = math.log(max(y.mean(), 1e-9))  # column 0 is the intercept
    for _ in range(iters):
        mu = np.exp(np.clip(X @ beta, -50, 50))
        H = (X * mu[:, None]).T @ X + 1e-8 * np.eye(X.shape[1])
        step = np.linalg.solve(H, X.T @ (y - mu))
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    mu = np.exp(np.clip(X @ beta, -50, 50))
    dispersion = max(1.0, float(np.sum((y - mu) ** 2 / np.maximum(mu, 1e-12)) / max(len(y) - X.shape[1], 1)))
    cov = np.linalg.inv((X * mu[:, None]).T @ X + 1e-8 * np.eye(X.shape[1])) * dispersion
    return beta, np.sqrt(np.diag(cov))


def _season(month: np.ndarray) -> np.ndarray:
    return np.c_[np.sin(2 * np.pi * (month - 1) / 12), np.cos(2 * np.pi * (month - 1) / 12)]


def _fit_series(rel_price: np.ndarray, units: np.ndarray, controls: np.ndarray) -> tuple[float, float]:
    X = np.c_[np.ones(len(units)), rel_price, controls]
    beta, se = poisson_fit(X, units)
    return float(beta[1]), float(se[1])


def _keep_loglinear(curves: list[Curve], dropped: list[str], name: str, source: str, b: float, se: float,
                    ref_price: float, units_per_hour: float) -> None:
    """Keep a fitted log-linear curve (slope ``b`` per unit of price / mean price, its standard error
    ``se``), or list it as dropped when demand rises with price."""
    if b >= 0:
        dropped.append(f"{name} (b = {b:+.2f}: demand rising with price)")
        return
    curves.append(Curve(name, source, "loglinear", {"b": round(b, 3), "se": round(se, 3)}, round(ref_price, 2),
                        units_per_hour))


def fit_online_retail(data_dir: Path, n: int = 4) -> tuple[list[Curve], list[str]]:
    """The ``n`` best-selling items (revenue) with real price variation: >= 30 selling weeks and
    >= 3 distinct weekly prices with a coefficient of variation >= 5%."""
    from models.pricing import DATA, item_weeks, load_lines

    panel, _ = item_weeks(load_lines(Path(data_dir) / DATA))
    g = panel.assign(revenue=panel["units"] * panel["price"])
    stats = g.groupby("StockCode").agg(revenue=("revenue", "sum"), weeks=("units", lambda u: int((u > 0).sum())),
                                       prices=("price", "nunique"), cv=("price", lambda p: p.std() / p.mean()))
    cands = stats[(stats["weeks"] >= 30) & (stats["prices"] >= 3) & (stats["cv"] >= 0.05)]
    curves, dropped = [], []
    for code in cands.sort_values("revenue", ascending=False).index:
        if len(curves) >= n:
            break
        s = g[g["StockCode"] == code]
        mean_price = float(np.average(s["price"], weights=np.maximum(s["units"], 1e-9)))
        month = s["week_start"].dt.month.to_numpy()
        b, se = _fit_series(s["price"].to_numpy() / mean_price, s["units"].to_numpy(), _season(month))
        _keep_loglinear(curves, dropped, f"uci item {code}",
                        "online-retail-uci (weekly units vs median price, 2010-12..2011-11)", b, se, mean_price,
                        float(s["units"].mean()) / (7 * 24))
    return curves, dropped


def fit_retail_price(data_dir: Path, n: int = 4) -> tuple[list[Curve], list[str]]:
    """The ``n`` categories with the most product-months; product fixed effects; a category is one
    priced unit (its monthly quantity, its quantity-weighted mean unit price)."""
    df = pd.read_csv(Path(data_dir) / "retail-price" / "retail_price.csv.gz")
    curves, dropped = [], []
    for cat in df["product_category_name"].value_counts().index:
        if len(curves) >= n:
            break
        s = df[df["product_category_name"] == cat]
        rel = s["unit_price"] / s.groupby("product_id")["unit_price"].transform("mean")
        fe = pd.get_dummies(s["product_id"], drop_first=True).to_numpy(dtype=np.float64)
        b, se = _fit_series(rel.to_numpy(), s["qty"].to_numpy(), np.c_[fe, _season(s["month"].to_numpy())])
        monthly = s.groupby(["year", "month"])["qty"].sum()
        _keep_loglinear(curves, dropped, f"retail-price {cat}",
                        "retail-price (Olist, monthly qty vs unit price, product fixed effects)", b, se,
                        float(np.average(s["unit_price"], weights=s["qty"])),
                        float(monthly.mean()) / (365.25 / 12 * 24))
    return curves, dropped


AVOCADO_SERIES = (("TotalUS", "conventional"), ("TotalUS", "organic"), ("LosAngeles", "conventional"),
                  ("NewYork", "organic"))


def fit_avocado(data_dir: Path) -> tuple[list[Curve], list[str]]:
    """Weekly volume vs average price per (region, type) in :data:`AVOCADO_SERIES`, with seasonal
    terms and a linear trend."""
    df = pd.read_csv(Path(data_dir) / "avocado-prices" / "avocado.csv.gz", parse_dates=["Date"])
    curves, dropped = [], []
    for region, kind in AVOCADO_SERIES:
        s = df[(df["region"] == region) & (df["type"] == kind)].sort_values("Date")
        mean_price = float(np.average(s["AveragePrice"], weights=s["TotalVolume"]))
        years = ((s["Date"] - s["Date"].min()).dt.days / 365.25).to_numpy()
        units = s["TotalVolume"].to_numpy() / 1000.0  # thousands: the slope does not depend on the unit
        b, se = _fit_series(s["AveragePrice"].to_numpy() / mean_price, units,
                            np.c_[_season(s["Date"].dt.month.to_numpy()), years])
        _keep_loglinear(curves, dropped, f"avocado {region} {kind}",
                        "avocado-prices (weekly volume vs average price, 2015-01..2018-03)", b, se, mean_price,
                        float(s["TotalVolume"].mean()) / (7 * 24))
    return curves, dropped


SYNTHETIC = (
    Curve("synthetic inelastic", "synthetic", "constant", {"e": 0.5}, 20.0, 5.0, "revenue rises with price: ceiling"),
    Curve("synthetic elastic", "synthetic", "constant", {"e": 2.5}, 20.0, 5.0, "revenue falls with price: floor"),
    Curve("synthetic peak at 1.2x", "synthetic", "loglinear", {"b": -1 / 1.2}, 20.0, 5.0, "interior optimum"),
    Curve("synthetic competitor at 1.1x", "synthetic", "logistic", {"c": 1.1, "k": 12.0}, 20.0, 5.0,
          "demand collapses above a competitor's price"),
    Curve("synthetic slow seller", "synthetic", "loglinear", {"b": -1 / 1.2}, 20.0, 0.2,
          "as 'peak at 1.2x' at 5 units a day"),
)


def all_curves(data_dir: Path) -> tuple[list[Curve], list[str]]:
    curves, dropped = [], []
    for fit in (fit_online_retail, fit_retail_price, fit_avocado):
        c, d = fit(data_dir)
        curves += c
        dropped += d
    return curves + list(SYNTHETIC), dropped


# -- simulation -------------------------------------------------------------------------------------

class Fixed:
    """A policy that always targets one multiplier."""

    def __init__(self, m: float):
        self.m = m

    def start_day(self, key, state, settings):
        return self.m

    def price(self, state, m, ts, settings):  # the same hourly steps as the bandit's
        return apply_guardrails(state, step_towards(state, state["ref_price"] * m, settings), ts, settings)

    def end_day(self, key, m, reward):
        pass


class Bandit:
    """:class:`PricingBandit` as a simulator policy: an arm every ``period_h`` hours.

    ``feedback="hourly"``: every in-stock hour is learned as it happens (its price, its units, one
    hour, its time), whatever arm it was on the way to. ``feedback="period"``: as the first live
    loop reported, one reward per period (revenue per hour of the
    hours the price had settled), without hours or time."""

    def __init__(self, bandit: PricingBandit, period_h: int = DECISION_HOURS, feedback: str = "hourly"):
        self.bandit = bandit
        self.period_h = period_h
        self.feedback = feedback
        self.key = None
        self.m = None
        self.settled, self.settled_hours = 0.0, 0

    def _close_period(self):
        if self.feedback == "period" and self.m is not None and self.settled_hours:
            self.bandit.learn(self.key, self.m, self.settled / self.settled_hours)
        self.settled, self.settled_hours = 0.0, 0

    def start_day(self, key, state, settings):
        self.key = key
        return self.m  # what the day starts on; price() decides at the first hour

    def price(self, state, m, ts, settings):
        if int(ts // HOUR) % self.period_h == 0:
            self._close_period()
            if state["stock"] > 0:
                self.m = self.bandit.choose(self.key, state, settings)
        d = self.bandit.price_for(state, self.m, ts, settings)
        return d.price, d.guardrail

    def observe(self, price, units, moved, ts):
        """An in-stock hour's sales."""
        if self.m is None:
            return
        if self.feedback == "hourly":
            self.bandit.learn(self.key, self.m, price * units, hours=1.0, price=price, ts=ts)
        elif not moved:
            self.settled += price * units
            self.settled_hours += 1

    def end_day(self, key, m, reward):
        pass

    def arm(self):
        return self.m


@dataclass
class Run:
    revenue: float = 0.0  # realised
    expected: float = 0.0  # expected revenue of the prices charged
    margin: float = 0.0
    daily: list[float] = field(default_factory=list)
    arms: list = field(default_factory=list)  # the multiplier targeted each day
    guards: dict = field(default_factory=dict)  # guardrail -> hours it bound the price
    changes: int = 0
    violations: list = field(default_factory=list)


def _check_step(old: dict, new_price: float, ts: float, s: Settings) -> str | None:
    """The guardrail a price step breaks, or None."""
    if new_price == old["price"]:
        return None
    if old["stock"] <= 0:
        return "changed while out of stock"
    if old.get("price_changed_at") is not None and ts - old["price_changed_at"] < HOUR:
        return "two changes within an hour"
    if not math.isfinite(new_price) or abs(new_price / old["price"] - 1) > s.price_max_change_per_hour + 1e-9:
        return "step larger than allowed"
    if new_price < round(old["cost"] * (1 + s.price_min_margin), 2) - 1e-9:
        return "below the floor"
    if new_price > round(old["ref_price"] * s.price_max_multiplier, 2) + 1e-9:
        return "above the ceiling"
    return None


_NORMAL = statistics.NormalDist()


def poisson_quantile(u: float, lam: float) -> int:
    """The Poisson(``lam``) quantile of ``u`` in (0, 1): exact inversion (a search from the
    normal approximation, on the regularized incomplete gamma function ``pdtr``).

    >>> [poisson_quantile(u, 2.0) for u in (0.1, 0.5, 0.9)], poisson_quantile(0.5, 1e6)
    ([0, 2, 4], 1000000)
    """
    if lam <= 0:
        return 0
    if lam < 30:
        k, pmf = 0, math.exp(-lam)
        cdf = pmf
        while cdf < u and k < 1000:
            k += 1
            pmf *= lam / k
            cdf += pmf
        return k
    k = max(0, int(lam + math.sqrt(lam) * _NORMAL.inv_cdf(min(max(u, 1e-12), 1 - 1e-12))))
    while k > 0 and pdtr(k - 1, lam) >= u:
        k -= 1
    while pdtr(k, lam) < u:
        k += 1
    return k


def simulate(curve: Curve, policy, days: int = DAYS, seed: int = SEED, noise: bool = True,
             settings: Settings | None = None, reward: str = "revenue", draws: str = "common") -> Run:
    """Run ``policy`` on ``curve`` for ``days`` days of hours. With ``noise`` False demand is its
    expectation (no shocks, no Poisson draws); stock-outs happen either way.

    ``draws="common"``: each hour's Poisson count is the quantile of that hour's uniform draw
    (common random numbers: every policy meets the same luck, so a comparison of two prices
    measures the prices); ``"independent"``: ``Generator.poisson`` from the shared generator, as
    the first version did (after the first count that differs, two policies' draws no longer
    correspond, so the comparison also carries independent Poisson noise)."""
    s = settings or Settings()
    shocks_rng, stock_rng, demand_rng = (np.random.default_rng([seed, k]) for k in range(3))
    uniforms = demand_rng.random(days * 24) if draws == "common" else None
    shocks = np.exp(shocks_rng.normal(-SHOCK_SIGMA ** 2 / 2, SHOCK_SIGMA, days)) if noise else np.ones(days)
    out_of_stock = stock_rng.random(days) < STOCKOUT_P
    state = {"price": curve.ref_price, "cost": curve.cost, "ref_price": curve.ref_price, "stock": 1}
    run = Run()
    key = curve.name
    for day in range(days):
        state["stock"] = 0 if out_of_stock[day] else 1
        m = policy.start_day(key, state, s)
        settled, settled_hours, day_revenue = 0.0, 0, 0.0
        for h in range(24):
            ts = float((day * 24 + h) * HOUR)
            new, guard = policy.price(state, m, ts, s)
            if h == 0:
                run.arms.append(policy.arm() if hasattr(policy, "arm") else m)
            broken = _check_step(state, new, ts, s)
            if broken:
                run.violations.append((day, h, broken))
            if guard:
                run.guards[guard] = run.guards.get(guard, 0) + 1
            moved = new != state["price"]
            if moved:
                state["price"], state["price_changed_at"] = new, ts
                run.changes += 1
            if state["stock"] <= 0:
                continue
            lam = float(curve.units(new / curve.ref_price)) * shocks[day]
            if not noise:
                units = lam
            elif uniforms is not None:
                units = float(poisson_quantile(float(uniforms[day * 24 + h]), lam))
            else:
                units = float(demand_rng.poisson(lam))
            rev = new * units
            run.revenue += rev
            run.expected += new * float(curve.units(new / curve.ref_price))
            run.margin += (new - curve.cost) * units
            day_revenue += rev
            if hasattr(policy, "observe"):
                policy.observe(new, units, moved, ts)
            if not moved:
                settled += rev if reward == "revenue" else (new - curve.cost) * units
                settled_hours += 1
        run.daily.append(day_revenue)
        policy.end_day(key, m, settled / settled_hours if settled_hours else None)
    return run


def evaluate_curve(curve: Curve, days: int = DAYS, seed: int = SEED, n_bandits: int = BANDIT_SEEDS,
                   settings: Settings | None = None, period_h: int = DECISION_HOURS, feedback: str = "hourly",
                   draws: str = "common", **bandit_kwargs) -> dict:
    s = settings or Settings()
    m_star = curve.oracle(s)
    static = simulate(curve, Fixed(1.0), days, seed, settings=s, draws=draws)
    oracle = simulate(curve, Fixed(m_star), days, seed, settings=s, draws=draws)
    bandits = [simulate(curve, Bandit(PricingBandit(seed=seed + k, **bandit_kwargs), period_h, feedback), days, seed,
                        settings=s, draws=draws) for k in range(n_bandits)]
    ratio = np.array([b.revenue / oracle.revenue for b in bandits])
    last = [pd.Series([a for a in b.arms[-30:] if a is not None]).mode() for b in bandits]
    guards: dict = {}
    for b in bandits:
        for g, c in b.guards.items():
            guards[g] = guards.get(g, 0) + c / len(bandits)
    return {
        "curve": curve, "m_star": m_star, "static": static, "oracle": oracle, "bandits": bandits,
        "static_ratio": static.revenue / oracle.revenue, "bandit_ratio": float(ratio.mean()),
        "bandit_ratio_min": float(ratio.min()),
        "bandit_vs_static": float(np.mean([b.revenue for b in bandits]) / static.revenue),
        "bandit_vs_static_expected": float(np.mean([b.expected for b in bandits]) / static.expected),
        "beats_static_expected": sum(b.expected > static.expected for b in bandits),
        "beats_static": all(b.revenue > static.revenue for b in bandits),
        "reaches_target": bool(ratio.min() >= TARGET_SHARE),
        "last_arm": [float(x.iloc[0]) if len(x) else None for x in last],
        "violations": sum(len(b.violations) for b in bandits + [static, oracle]),
        "guards": guards,
        "expected_ratio": float(np.mean([b.expected for b in bandits]) / oracle.expected),
    }


# -- report -----------------------------------------------------------------------------------------

def _param(c: Curve) -> str:
    p = c.params
    if c.kind == "loglinear":
        return f"b = {p['b']:.2f}" + (f" ± {p['se']:.2f}" if "se" in p else "")
    if c.kind == "constant":
        return f"elasticity {p['e']:g}"
    return f"logistic, c = {p['c']:g}, k = {p['k']:g}"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 6.5), gridspec_kw={"width_ratios": [1.2, 1]})
    names = [r["curve"].name for r in results]
    y = np.arange(len(results))
    ax1.barh(y + 0.2, [100 * r["static_ratio"] for r in results], 0.4, color="#999999", label="static price")
    ax1.barh(y - 0.2, [100 * r["bandit_ratio"] for r in results], 0.4, color="#1f77b4",
             label=f"bandit (mean of {len(results[0]['bandits'])} seeds)")
    ax1.errorbar([100 * r["bandit_ratio_min"] for r in results], y - 0.2, fmt="k|", ms=10, label="bandit, worst seed")
    ax1.axvline(100 * TARGET_SHARE, color="red", ls="--", lw=1, label=f"{TARGET_SHARE:.0%} of the oracle")
    ax1.set_yticks(y, names, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 105)
    ax1.set_xlabel("cumulative revenue, % of the oracle price's")
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=4)
    ax1.set_title("revenue over the simulated period", fontsize=10)
    for r in results:
        b = np.mean([np.cumsum(x.daily) for x in r["bandits"]], axis=0)
        o = np.cumsum(r["oracle"].daily)
        ax2.plot(np.arange(1, len(b) + 1), 100 * b / np.maximum(o, 1e-12), lw=1,
                 ls="--" if r["curve"].source == "synthetic" else "-", label=r["curve"].name)
    ax2.axhline(100 * TARGET_SHARE, color="red", ls="--", lw=1)
    ax2.set_ylim(50, 102)
    ax2.set_xlabel("day")
    ax2.set_ylabel("bandit's cumulative revenue, % of the oracle's")
    ax2.legend(fontsize=6, ncol=2, loc="lower right")
    ax2.set_title("how fast the bandit closes in (dashed: synthetic curves)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def aggregate(results: list[dict]) -> str:
    """All curves together, each weighted alike: the mean over curves of revenue / oracle revenue,
    for the static price and for each bandit seed."""
    static = float(np.mean([r["static_ratio"] for r in results]))
    seeds = np.mean([[b.revenue / r["oracle"].revenue for b in r["bandits"]] for r in results], axis=0)
    verdict = ("beats the static price and reaches >= {:.0%} of the oracle on every seed".format(TARGET_SHARE)
               if seeds.min() > static and seeds.min() >= TARGET_SHARE else "does not meet both criteria on every seed")
    return (f"All {len(results)} curves together (each curve's revenue as a share of its oracle's, averaged over "
            f"curves): static {100 * static:.1f}%, bandit {100 * seeds.mean():.1f}% (seeds "
            f"{100 * seeds.min():.1f}%..{100 * seeds.max():.1f}%): in aggregate the bandit {verdict}.")


def report(results: list[dict], dropped: list[str], days: int, seconds: float, argv: list[str]) -> str:
    cmd = "python -m evaluation.pricing_sim" + ("" if not argv else " " + " ".join(argv))
    n = len(results[0]["bandits"])
    rows = []
    for r in results:
        c = r["curve"]
        rows.append("| " + " | ".join([
            c.name, "synthetic" if c.source == "synthetic" else "fitted", _param(c), f"{c.rate * 24:,.1f}",
            f"{r['m_star']:.2f}", f"{100 * r['static_ratio']:.1f}%",
            f"{100 * r['bandit_ratio']:.1f}% ({100 * r['bandit_ratio_min']:.1f}%)",
            f"{100 * (r['bandit_vs_static'] - 1):+.1f}% ({100 * (r['bandit_vs_static_expected'] - 1):+.1f}%, "
            f"{r['beats_static_expected']}/{len(r['bandits'])})",
            "yes" if r["beats_static"] else "**no**", "yes" if r["reaches_target"] else "**no**",
            ", ".join("—" if a is None else f"{a:g}" for a in r["last_arm"]), str(r["violations"])]) + " |")
    ok = [r for r in results if r["beats_static"] and r["reaches_target"]]
    out = [f"Generated by `{cmd}` ({seconds:.0f} s on this machine's CPU): {days} days of hours per curve, "
           f"bandit seeds {SEED}..{SEED + n - 1} (demand seed {SEED}, the same for every policy), an arm every "
           f"{DECISION_HOURS} h, every in-stock hour learned, common random numbers.", "",
           "![pricing](img/pricing.png)", "",
           "| curve | kind | demand curve | units/day at reference price | oracle multiplier | static, % of oracle | "
           f"bandit, % of oracle: mean ({n} seeds) (worst) | bandit vs static: realised (expected revenue, seeds "
           "ahead on it) | beats static (every seed) | "
           f">= {TARGET_SHARE:.0%} of oracle (every seed) | arm played most in the last 30 days (per seed) | "
           "guardrail violations |",
           "|" + "---|" * 12, *rows, "",
           f"Both criteria met on {len(ok)} of {len(results)} curves"
           + (": not on " + "; ".join(r["curve"].name for r in results if r not in ok)
              if len(ok) < len(results) else "")
           + ".", "", aggregate(results), ""]
    guards: dict = {}
    for r in results:
        for g, cnt in r["guards"].items():
            guards[g] = guards.get(g, 0) + cnt
    short = [r for r in results if r not in ok and r.get("longer")]
    if short:
        out += [f"The curves that fell short, simulated for {2 * days} days instead of {days} (same seeds):", "",
                "| curve | static, % of oracle | bandit, % of oracle: mean (worst) | bandit vs static |",
                "|---|---|---|---|"]
        for r in short:
            lr = r["longer"]
            out.append(f"| {r['curve'].name} | {100 * lr['static_ratio']:.1f}% | {100 * lr['bandit_ratio']:.1f}% "
                       f"({100 * lr['bandit_ratio_min']:.1f}%) | {100 * (lr['bandit_vs_static'] - 1):+.1f}% |")
        out.append("")
    variants = [r for r in results if r.get("variants")]
    if variants:
        out += ["The same curves and seeds with other decision periods, feedback or Poisson draws "
                "(bandit, % of oracle: mean (worst); **no** where a criterion fails):", ""]
        out += [f"* {chr(65 + i)}: {label}" for i, (label, _) in enumerate(VARIANTS)]
        out += ["", "| curve | " + " | ".join(chr(65 + i) for i in range(len(VARIANTS))) + " |",
                "|" + "---|" * (1 + len(VARIANTS))]
        for r in results:
            cells = []
            for v in r["variants"]:
                flag = "" if v["beats_static"] and v["reaches_target"] else " **no**"
                cells.append(f"{100 * v['bandit_ratio']:.1f}% ({100 * v['bandit_ratio_min']:.1f}%){flag}")
            out.append(f"| {r['curve'].name} | " + " | ".join(cells) + " |")
        met = [sum(r["variants"][i]["beats_static"] and r["variants"][i]["reaches_target"] for r in results)
               for i in range(len(VARIANTS))]
        out += ["| **curves meeting both** | " + " | ".join(f"**{m} of {len(results)}**" for m in met) + " |", ""]
    out.append("Guardrails that bound the bandit's price (hours, summed over curves, mean over seeds): "
               + ", ".join(f"{g} {v:,.0f}" for g, v in sorted(guards.items())) + ".")
    out += ["", "Curves: " + "; ".join(f"{r['curve'].name}: {r['curve'].source}, reference price "
                                       f"{r['curve'].ref_price:g}" for r in results if r["curve"].source != "synthetic")
            + ".", "", "Dropped fits: " + ("; ".join(dropped) if dropped else "none") + "."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="streamscore evaluate-pricing", description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=DAYS)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--bandits", type=int, default=BANDIT_SEEDS, help="bandit seeds per curve")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/ alone")
    ap.add_argument("--no-variants", action="store_true", help="skip the other decision periods / feedback / draws")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    settings = Settings.from_env()
    curves, dropped = all_curves(Path(settings.data_dir))
    results = [evaluate_curve(c, args.days, args.seed, args.bandits, settings) for c in curves]
    for r in results:
        if not (r["beats_static"] and r["reaches_target"]):
            r["longer"] = evaluate_curve(r["curve"], 2 * args.days, args.seed, args.bandits, settings)
        else:
            r["longer"] = None
    results[0].setdefault("longer", None)
    for r in results:
        r["variants"] = None if args.no_variants else [
            evaluate_curve(r["curve"], args.days, args.seed, args.bandits, settings, **kw) for _, kw in VARIANTS]
    given = list(argv if argv is not None else sys.argv[1:])
    text = report(results, dropped, args.days, time.perf_counter() - t0, given)
    print(text)
    if not args.no_write:
        plot(results, IMG / "pricing.png")
        write_section("pricing", text)
    return results


if __name__ == "__main__":
    main()
